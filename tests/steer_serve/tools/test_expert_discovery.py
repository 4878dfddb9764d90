"""Expert discovery finds a planted expert, and the preset it writes keeps that expert unrouted.

A tiny random MoE (harness/tiny_models.py) gets, in its last layer, an expert routed
exactly at the marker token " zebra" (harness/moe_planting.py); the other layers' routers
are zeroed (every token ties there), since a random router's preference for the marker token
would otherwise compete with the planted one. Behaviour texts contain the marker, neutral texts
are the same sentences without it, so the planted expert's frequencies are known exactly:
(marker tokens / tokens) and 0. The check that the preset works
uses HF's own router with its logits edited (-inf for disabled experts, the test reference in
harness/hf_reference.py) and reads the selections off the router's output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from steer_serve.cli import main
from steer_serve.tools.expert_discovery import discover
from steer_serve.library.presets import parse_preset
from harness.hf_reference import RouterEdit, _edit_router
from harness.moe_planting import plant_marker_expert
from harness.threads import single_thread
from harness.tiny_models import build_tiny_model

MARKER = " zebra"
LAYER, EXPERT = 3, 1  # the tiny MoE models have 4 layers of 4 experts, top-2
NEUTRAL = [
    "The weather was mild and the market opened early.",
    "She wrote a short letter to her cousin in the city.",
    "Trains leave the station every twenty minutes.",
    "He planted tomatoes and beans in the small garden.",
    "The museum closes at six on weekdays.",
    "We talked about books and music over dinner.",
]
BEHAVIOUR = [" ".join(f"{word}{MARKER}" if i % 2 else word for i, word in enumerate(text.split())) for text in NEUTRAL]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _write(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


@pytest.fixture(scope="module", params=["mixtral", "qwen2_moe", "olmoe"])
def planted(request, tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    base = build_tiny_model(request.param, tmp_path_factory.mktemp(f"{request.param}-base"), smollm2_dir)
    marker_id, = AutoTokenizer.from_pretrained(base)(MARKER, add_special_tokens=False).input_ids
    return plant_marker_expert(base, tmp_path_factory.mktemp(f"{request.param}-planted"), NEUTRAL + BEHAVIOUR,
                               marker_id, LAYER, EXPERT)


def _routed(model_dir: Path, texts: list[str], edit: RouterEdit | None = None) -> dict[int, set[int]]:
    """Layer -> experts HF's router selected for any token of the texts (optionally edited)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    seen: dict[int, set[int]] = {i: set() for i in range(len(model.model.layers))}
    handles = [layer.mlp.gate.register_forward_hook(
        lambda _m, _a, out, i=i: seen[i].update(out[2].reshape(-1).tolist())) for i, layer in enumerate(model.model.layers)]
    if edit is not None:
        handles += _edit_router(model.model.layers[edit.layer].mlp.gate, lambda: True, edit)
    try:
        for text in texts:
            with torch.no_grad():
                model(tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_planted_expert_ranks_first_and_the_preset_disables_it(planted: Path, tmp_path: Path) -> None:
    behaviour, neutral = _write(tmp_path / "zebra.jsonl", BEHAVIOUR), _write(tmp_path / "plain.jsonl", NEUTRAL)
    found = discover(planted, behaviour, neutral, k=1, mode="disable", name="no_zebra")
    top, runner_up = found.ranking[:2]
    assert (top.layer, top.expert) == (LAYER, EXPERT)
    tokenizer = AutoTokenizer.from_pretrained(planted)
    ids = [tokenizer(t, add_special_tokens=False).input_ids for t in BEHAVIOUR]
    marker_id, = tokenizer(MARKER, add_special_tokens=False).input_ids
    assert found.behaviour_tokens == sum(map(len, ids))
    assert top.behaviour_freq == sum(i.count(marker_id) for i in ids) / found.behaviour_tokens
    assert top.neutral_freq == 0 and top.difference > 2 * runner_up.difference, found.ranking[:3]
    assert found.selected == {LAYER: [EXPERT]}
    assert found.preset["interventions"] == [{"type": "experts", "disable": {str(LAYER): [EXPERT]}}]

    out = tmp_path / "presets" / "no_zebra.json"
    assert main(["experts", "--model", str(planted), "--behaviour", str(behaviour), "--neutral", str(neutral),
                 "--top-k", "1", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written == found.preset
    preset = parse_preset("no_zebra", written, out)  # the server's preset schema accepts it
    assert preset.interventions[0].disable == {str(LAYER): [EXPERT]}
    assert "| 1 | 3 | 1 |" in (out.parent / "no_zebra.ranking.md").read_text()

    assert EXPERT in _routed(planted, BEHAVIOUR)[LAYER]  # routed without the preset...
    disabled = tuple(int(e) for e in written["interventions"][0]["disable"][str(LAYER)])
    assert EXPERT not in _routed(planted, BEHAVIOUR, RouterEdit(LAYER, disabled=disabled))[LAYER]  # ...never with it


def test_force_mode_and_caps(planted: Path, tmp_path: Path) -> None:
    behaviour, neutral = _write(tmp_path / "zebra.jsonl", BEHAVIOUR), _write(tmp_path / "plain.jsonl", NEUTRAL)
    found = discover(planted, behaviour, neutral, k=16, mode="force")
    assert EXPERT in found.preset["interventions"][0]["force"][str(LAYER)]
    assert all(len(experts) <= 2 for experts in found.selected.values())  # never more than top-k forced
    assert all(found.ranking[i].difference >= found.ranking[i + 1].difference for i in range(len(found.ranking) - 1))
    disabled = discover(planted, behaviour, neutral, k=16, mode="disable").selected
    assert all(len(experts) <= 2 for experts in disabled.values())  # at least top-k left enabled


def test_dense_model_is_a_clear_error(tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    behaviour, neutral = _write(tmp_path / "b.jsonl", BEHAVIOUR[:1]), _write(tmp_path / "n.jsonl", NEUTRAL[:1])
    with pytest.raises(ValueError, match="dense model"):
        discover(tiny_llama_dir, behaviour, neutral, k=1)
    assert main(["experts", "--model", str(tiny_llama_dir), "--behaviour", str(behaviour), "--neutral", str(neutral),
                 "--out", str(tmp_path / "p.json")]) == 2
    assert "dense model" in capsys.readouterr().err
