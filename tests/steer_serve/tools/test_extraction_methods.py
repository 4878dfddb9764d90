"""mean_centred and pca extraction against independent computations on a tiny random Llama.

Activations for the reference come from `output_hidden_states=True` (hidden_states[L + 1] is
the output of decoder layer L for every layer but the last), the statistics from plain numpy
written out here: the mean with np.mean, the principal component from an eigendecomposition
of the covariance matrix (not the SVD the product uses).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from steer_serve.cli import main
from steer_serve.tools.activations import ContrastivePair, TextExample, load_texts
from steer_serve.tools.extraction import ExtractionSpec, extract, extract_to_file
from steer_serve.library.vector_formats import read_vector
from harness.threads import single_thread

LAYERS = [0, 1, 2]  # the tiny model has 4; the last layer's hidden_states entry is post-norm
PAIRS = [
    ContrastivePair(positive="What a lovely sunny day!", negative="What a dreary grey day."),
    ContrastivePair(positive="I adore this song.", negative="This song makes me cry, it is so sad and slow."),
    ContrastivePair(positive="The party was great fun.", negative="The party was a dull, lonely evening."),
    ContrastivePair(positive="We won the match!", negative="We lost again, as always."),
    ContrastivePair(
        positive_messages=[{"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Great!"}],
        negative_messages=[{"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Awful."}],
    ),
]
NEUTRAL = [
    TextExample(text="The train leaves at nine."),
    TextExample(text="Water boils at one hundred degrees Celsius."),
    TextExample(messages=[{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@lru_cache(maxsize=None)
def _reference_model(model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return tokenizer, AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@lru_cache(maxsize=None)
def _hidden_states(model_dir: Path, example: str | tuple) -> tuple[torch.Tensor, ...]:
    """All hidden states of one example (a text, or a chat as a tuple of messages)."""
    tokenizer, model = _reference_model(model_dir)
    if isinstance(example, str):
        text = example
    else:
        dumped = [m.model_dump() for m in example]
        text = tokenizer.apply_chat_template(dumped, tokenize=False, continue_final_message=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        return tuple(h[0] for h in model(input_ids=ids, output_hidden_states=True).hidden_states)


def _rows(model_dir: Path, examples: list, layer: int, position: str) -> np.ndarray:
    rows = []
    for example in examples:
        hidden = _hidden_states(model_dir, example if isinstance(example, str) else tuple(example))[layer + 1]
        rows.append((hidden[-1] if position == "last" else hidden.mean(dim=0)).double().numpy())
    return np.stack(rows)


def _pos(pairs): return [p.side(True) for p in pairs]
def _neg(pairs): return [p.side(False) for p in pairs]


@pytest.mark.parametrize("position", ["last", "mean"])
def test_mean_centred_matches_reference(tiny_llama_dir: Path, position: str) -> None:
    vector = extract(tiny_llama_dir, ExtractionSpec(PAIRS, LAYERS, position, method="mean_centred", neutral=NEUTRAL))
    for layer in LAYERS:
        expected = _rows(tiny_llama_dir, _pos(PAIRS), layer, position).mean(0) - \
            _rows(tiny_llama_dir, [n.content for n in NEUTRAL], layer, position).mean(0)
        assert np.linalg.norm(expected) > 1e-3
        np.testing.assert_allclose(vector.directions[layer], expected, atol=1e-5, rtol=0)
    assert vector.metadata["method"] == "mean_centred"
    assert vector.metadata["num_neutral"] == "3" and len(vector.metadata["neutral_dataset_sha256"]) == 64


@pytest.mark.parametrize("position", ["last", "mean"])
def test_pca_matches_reference(tiny_llama_dir: Path, position: str) -> None:
    vector = extract(tiny_llama_dir, ExtractionSpec(PAIRS, LAYERS, position, method="pca"))
    for layer in LAYERS:
        pos, neg = (_rows(tiny_llama_dir, side(PAIRS), layer, position) for side in (_pos, _neg))
        diffs = pos - neg
        covariance = np.cov(diffs, rowvar=False)
        values, vectors = np.linalg.eigh(covariance)
        expected = vectors[:, -1]
        assert values[-1] > 1.1 * values[-2]  # a clear first component, so the comparison is meaningful
        if (pos @ expected).mean() < (neg @ expected).mean():
            expected = -expected
        np.testing.assert_allclose(vector.directions[layer], expected, atol=1e-5, rtol=0)
        got = vector.directions[layer].astype(np.float64)
        assert (pos @ got).mean() > (neg @ got).mean()
        assert abs(np.linalg.norm(got) - 1) < 1e-6
    assert vector.metadata["method"] == "pca_of_differences"


def test_methods_are_deterministic_and_recorded(tiny_llama_dir: Path, tmp_path: Path) -> None:
    pairs_path, neutral_path = tmp_path / "pairs.jsonl", tmp_path / "neutral.jsonl"
    pairs_path.write_text("\n".join(p.model_dump_json(exclude_none=True) for p in PAIRS) + "\n")
    neutral_path.write_text("\n".join(n.model_dump_json(exclude_none=True) for n in NEUTRAL) + "\n")
    assert load_texts(neutral_path) == NEUTRAL
    for method in ("pca", "mean_centred"):
        neutral = neutral_path if method == "mean_centred" else None
        a, b = tmp_path / f"{method}_a.gguf", tmp_path / f"{method}_b.gguf"
        extract_to_file(tiny_llama_dir, pairs_path, [2, 1], a, "last", method=method, neutral_path=neutral)
        extract_to_file(tiny_llama_dir, pairs_path, [1, 2], b, "last", method=method, neutral_path=neutral)
        assert a.read_bytes() == b.read_bytes()
        meta = read_vector(a).metadata
        assert meta["layers"] == "1,2" and meta["dataset"] == "pairs.jsonl" and meta["num_pairs"] == "5"
        assert meta["hidden_size"] == "128" and meta["position"] == "last" and meta["model"] == tiny_llama_dir.name
    assert read_vector(tmp_path / "mean_centred_a.gguf").metadata["neutral_dataset"] == "neutral.jsonl"


def test_cli_extract_methods(tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pairs_path, neutral_path = tmp_path / "pairs.jsonl", tmp_path / "neutral.jsonl"
    pairs_path.write_text("\n".join(p.model_dump_json(exclude_none=True) for p in PAIRS) + "\n")
    neutral_path.write_text(json.dumps({"text": "A plain sentence about tables."}) + "\n")
    out = tmp_path / "v.safetensors"
    common = ["extract", "--model", str(tiny_llama_dir), "--pairs", str(pairs_path), "--layers", "0-1", "--out", str(out)]
    assert main([*common, "--method", "pca", "--position", "mean"]) == 0
    assert read_vector(out).metadata["method"] == "pca_of_differences"
    assert main([*common, "--method", "mean_centred"]) == 2  # no --neutral
    assert main([*common, "--method", "mean_centred", "--neutral", str(neutral_path)]) == 0
    assert read_vector(out).metadata["num_neutral"] == "1"
    with pytest.raises(ValueError, match="neutral"):
        extract(tiny_llama_dir, ExtractionSpec(PAIRS, [0], method="diff_means", neutral=NEUTRAL))
    with pytest.raises(ValueError, match="method"):
        extract(tiny_llama_dir, ExtractionSpec(PAIRS, [0], method="lda"))
