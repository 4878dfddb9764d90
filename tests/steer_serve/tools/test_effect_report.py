"""The effect report against a direct computation on a tiny random Llama.

The reference is written out here without the product's helpers: its own hooks, full-sequence
log-softmax for the continuation, and HF's built-in causal-LM loss (`labels=`) for perplexity.
The vector pushes the last layer's output towards the target continuation's unembedding rows
and away from the opposite's, so the effect must grow with the scale.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from steer_serve.cli import main
from steer_serve.tools.effect_report import evaluate, find_vector
from steer_serve.library.steering_vector import SteeringVector
from steer_serve.library.vector_formats import write_vector
from harness.threads import single_thread

LAYER = 3  # the tiny Llama's last decoder layer
TRIPLES = [
    {"prompt": "How is the weather?", "target": "Grey and cold.", "opposite": "Sunny and warm!"},
    {"prompt": "How was your day?", "target": "Dreadful, as always.", "opposite": "Lovely, thanks!"},
    {"prompt": "Any news?", "target": "Nothing good.", "opposite": "Great news today!"},
]
NEUTRAL = [{"text": "The train leaves at nine."},
           {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]}]
SCALES = [0.0, 0.5, 1.0, 2.0]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path):
    directory = tmp_path_factory.mktemp("effect")
    triples, neutral = directory / "triples.jsonl", directory / "neutral.jsonl"
    triples.write_text("".join(json.dumps(t) + "\n" for t in TRIPLES))
    neutral.write_text("".join(json.dumps(n) + "\n" for n in NEUTRAL))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    unembed = model.lm_head.weight.detach().double().numpy()
    ids = lambda key: [i for t in TRIPLES for i in tokenizer(t[key], add_special_tokens=False).input_ids]  # noqa: E731
    direction = unembed[ids("target")].mean(0) - unembed[ids("opposite")].mean(0)
    direction *= 2.0 / np.linalg.norm(direction)
    vector = SteeringVector({LAYER: direction.astype(np.float32), 1: np.ones(128, np.float32)}, {"model": "tiny"})
    write_vector(vector, directory / "towards.safetensors")
    return directory, triples, neutral, vector, tokenizer, model


def _reference(model, tokenizer, vector: SteeringVector, layers: list[int], scale: float) -> tuple[float, float]:
    """(mean per-token logp(target) - logp(opposite), perplexity) with hand-written hooks."""
    def add(_m, _a, out, d):
        return (out[0] + d, *out[1:]) if isinstance(out, tuple) else out + d

    handles = [model.model.layers[L].register_forward_hook(
        lambda m, a, o, d=torch.from_numpy(vector.directions[L]) * scale: add(m, a, o, d)) for L in layers]
    try:
        gaps = []
        for t in TRIPLES:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": t["prompt"]}], tokenize=False,
                                                   add_generation_prompt=True)
            p = tokenizer(prompt, add_special_tokens=False).input_ids
            score = []
            for key in ("target", "opposite"):
                c = tokenizer(t[key], add_special_tokens=False).input_ids
                with torch.no_grad():
                    logp = torch.log_softmax(model(torch.tensor([p + c])).logits[0].double(), -1)
                score.append(np.mean([float(logp[len(p) + i - 1, tok]) for i, tok in enumerate(c)]))
            gaps.append(score[0] - score[1])
        texts = [NEUTRAL[0]["text"], tokenizer.apply_chat_template(NEUTRAL[1]["messages"], tokenize=False,
                                                                      continue_final_message=True)]
        nll, count = 0.0, 0
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
            with torch.no_grad():
                loss = model(ids, labels=ids).loss  # HF's own shifted mean NLL
            nll += float(loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
        return float(np.mean(gaps)), math.exp(nll / count)
    finally:
        for h in handles:
            h.remove()


def test_matches_direct_computation_and_grows_with_scale(setup, tiny_llama_dir: Path) -> None:
    directory, triples, neutral, vector, tokenizer, model = setup
    report = evaluate(tiny_llama_dir, "towards", vector, SCALES, [LAYER], triples, neutral)
    assert report.layers == [LAYER] and [p.scale for p in report.points] == SCALES
    unsteered = _reference(model, tokenizer, vector, [], 0.0)  # no hooks at all
    assert report.points[0].effect == pytest.approx(unsteered[0], abs=1e-5)
    assert report.points[0].perplexity == pytest.approx(unsteered[1], rel=1e-5)
    for point in (report.points[1], report.points[3]):
        effect, ppl = _reference(model, tokenizer, vector, [LAYER], point.scale)
        assert point.effect == pytest.approx(effect, abs=1e-5)
        assert point.perplexity == pytest.approx(ppl, rel=1e-5)
    effects = [p.effect for p in report.points]
    assert all(a < b for a, b in zip(effects, effects[1:])), effects
    assert report.points[3].perplexity != report.points[0].perplexity


def test_cli_writes_markdown_json_and_png(setup, tiny_llama_dir: Path, tmp_path: Path) -> None:
    directory, triples, neutral, vector, *_ = setup
    out = tmp_path / "report"
    assert main(["evaluate", "--vector", "towards", "--vector-dir", str(directory), "--model", str(tiny_llama_dir),
                 "--scales", "0,1", "--layers", str(LAYER), "--triples", str(triples), "--neutral", str(neutral),
                 "--out", str(out)]) == 0
    data = json.loads((out / "towards.json").read_text())
    assert [p["scale"] for p in data["points"]] == [0.0, 1.0] and data["layers"] == [LAYER]
    assert "| 1 |" in (out / "towards.md").read_text()
    assert (out / "towards.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["evaluate", "--vector", "towards", "--vector-dir", str(directory), "--model", str(tiny_llama_dir),
                 "--layers", "2", "--out", str(out)]) == 2  # the vector has no layer 2
    with pytest.raises(ValueError, match="no vector file"):
        find_vector("missing", directory)
