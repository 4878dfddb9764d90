"""Difference-of-means extraction checked against an independent computation.

A tiny random Llama (real SmolLM2 tokenizer and chat template) keeps this to seconds; the
reference statistic comes from `output_hidden_states=True`, not from our hooks, where
hidden_states[L + 1] is the output of decoder layer L for every layer but the last.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from steer_serve.default_model import default_model_dir
from steer_serve.tools.activations import ChatMessage, ContrastivePair, load_pairs, render
from steer_serve.tools.extraction import ExtractionSpec, extract, extract_to_file
from steer_serve.library.vector_formats import read_vector
from harness.threads import single_thread

NUM_LAYERS = 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 3-layer Llama saved with the SmolLM2 tokenizer (so chat templates work)."""
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    target = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target


def _chat(user: str, assistant: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=user), ChatMessage(role="assistant", content=assistant)]


PAIRS = [
    ContrastivePair(positive="What a lovely sunny day!", negative="What a dreary grey day."),
    ContrastivePair(
        positive_messages=_chat("How are you?", "Wonderful, thank you!"),
        negative_messages=_chat("How are you?", "Awful, as usual."),
    ),
    ContrastivePair(positive="I adore this song.", negative="This song makes me cry, it is so sad and slow."),
]


def _reference(model_dir: Path, pairs: list[ContrastivePair], layer: int, position: str) -> np.ndarray:
    """Same statistic from output_hidden_states, with the chat rendering spelled out."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def text_of(pair: ContrastivePair, positive: bool) -> str:
        if not pair.is_chat:
            return pair.positive if positive else pair.negative  # type: ignore[return-value]
        messages = pair.positive_messages if positive else pair.negative_messages
        dumped = [m.model_dump() for m in messages]  # type: ignore[union-attr]
        return tokenizer.apply_chat_template(dumped, tokenize=False, continue_final_message=True)

    def side_mean(positive: bool) -> np.ndarray:
        rows = []
        for pair in pairs:
            ids = tokenizer(text_of(pair, positive), return_tensors="pt", add_special_tokens=False).input_ids
            with torch.no_grad():
                hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1][0]
            rows.append((hidden[-1] if position == "last" else hidden.mean(dim=0)).double().numpy())
        return np.mean(rows, axis=0)

    return side_mean(True) - side_mean(False)


@pytest.mark.parametrize("position", ["last", "mean"])
def test_matches_hidden_states_reference(tiny_model_dir: Path, position: str) -> None:
    layers = list(range(NUM_LAYERS - 1))  # the last layer's hidden_states entry is post-norm
    vector = extract(tiny_model_dir, ExtractionSpec(PAIRS, layers, position))
    assert vector.layers == layers
    for layer in layers:
        expected = _reference(tiny_model_dir, PAIRS, layer, position)
        np.testing.assert_allclose(vector.directions[layer], expected, atol=1e-5, rtol=0)
        assert np.linalg.norm(expected) > 1e-3  # a trivially zero statistic would prove nothing
    assert vector.metadata["position"] == position
    assert vector.metadata["method"] == "difference_of_means"
    assert vector.metadata["num_pairs"] == "3"
    assert vector.metadata["hidden_size"] == "64"


def test_render_leaves_final_assistant_turn_open(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rendered = render(_chat("Hi", "Hello there"), tokenizer)
    assert rendered.endswith("<|im_start|>assistant\nHello there")
    prompt = render([ChatMessage(role="user", content="Hi")], tokenizer)
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_extract_to_file_is_reproducible(tiny_model_dir: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "pairs.jsonl"
    dataset.write_text("\n".join(p.model_dump_json(exclude_none=True) for p in PAIRS) + "\n")
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    vector = extract_to_file(tiny_model_dir, dataset, [1, 0], first)
    again = extract_to_file(tiny_model_dir, dataset, [0, 1], second)
    loaded, reloaded = read_vector(first), read_vector(second)
    # Same numbers and metadata; the safetensors library itself orders header metadata
    # keys arbitrarily, so the bytes are compared for GGUF below.
    assert loaded.content_sha256() == reloaded.content_sha256() == vector.content_sha256()
    assert loaded.metadata == reloaded.metadata == vector.metadata == again.metadata
    assert loaded.layers == [0, 1]
    assert loaded.metadata["dataset"] == "pairs.jsonl"
    assert loaded.metadata["layers"] == "0,1"
    assert len(loaded.metadata["dataset_sha256"]) == 64
    gguf_a, gguf_b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    extract_to_file(tiny_model_dir, dataset, [0, 1], gguf_a)
    extract_to_file(tiny_model_dir, dataset, [0, 1], gguf_b)
    assert gguf_a.read_bytes() == gguf_b.read_bytes()
    assert read_vector(gguf_a).content_sha256() == vector.content_sha256()


def test_rejects_bad_layers_and_position(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="out of range"):
        extract(tiny_model_dir, ExtractionSpec(PAIRS, [NUM_LAYERS], "last"))
    with pytest.raises(ValueError, match="position"):
        extract(tiny_model_dir, ExtractionSpec(PAIRS, [0], "first"))


def test_load_pairs_names_the_malformed_line(tmp_path: Path) -> None:
    good = json.dumps({"positive": "yes", "negative": "no"})
    path = tmp_path / "pairs.jsonl"
    path.write_text(f"{good}\n\n{good}\n{{not json\n")
    with pytest.raises(ValueError, match=r"pairs\.jsonl line 4: invalid JSON"):
        load_pairs(path)
    path.write_text(f"{good}\n" + json.dumps({"positive": "yes"}) + "\n")
    with pytest.raises(ValueError, match=r"pairs\.jsonl line 2: invalid pair"):
        load_pairs(path)
    path.write_text(json.dumps({"positive": "a", "negative": "b", "extra": 1}) + "\n")
    with pytest.raises(ValueError, match="line 1: invalid pair.*extra"):
        load_pairs(path)


def test_load_pairs_reads_both_forms(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(p.model_dump_json(exclude_none=True) for p in PAIRS) + "\n")
    assert load_pairs(path) == PAIRS


def test_pair_must_use_one_form() -> None:
    with pytest.raises(ValueError, match="not a mix"):
        ContrastivePair(positive="a", negative_messages=_chat("q", "b"))
    with pytest.raises(ValueError, match="must not be empty"):
        ContrastivePair(positive="", negative="b")
    with pytest.raises(ValueError):
        ChatMessage(role="narrator", content="x")
