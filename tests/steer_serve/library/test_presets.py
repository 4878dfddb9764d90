"""Presets: files and runtime registration, validated by the request path, expanded before inline
interventions, persisted atomically, unknown names named in the error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from steer_serve.library.named_store import NameTaken
from steer_serve.library.presets import PresetError, PresetLibrary
from steer_serve_vllm.api.gateway import Rejection, RequestGateway
from steer_serve.request.errors import SteeringError, parse_steering
from steer_serve.settings import Settings
from steer_serve.request.steering_resolver import SteeringResolver
from harness.libraries import SHAPE, library, vector

LIGHT = [{"type": "add", "vector": "v", "scale": 0.5}]


def _setup(tmp_path, poll_s: float = 1.0, **files: str):
    presets_dir = tmp_path / "presets"
    presets_dir.mkdir()
    for file_name, text in files.items():
        (presets_dir / file_name.replace("__", ".")).write_text(text)
    lib = library(tmp_path, v=vector(layers=(1, 2)))
    plain = SteeringResolver(SHAPE, lib, Settings(vector_dir=tmp_path))
    presets = PresetLibrary(presets_dir, plain.resolve, poll_s=poll_s)
    return plain.with_presets(presets), presets


def test_yaml_and_json_files_load_and_expand_preset_first(tmp_path) -> None:
    resolver, presets = _setup(
        tmp_path,
        light__yaml="description: light\ninterventions:\n  - {type: add, vector: v, scale: 0.5}\n",
        heads__json=json.dumps({"interventions": [{"type": "ablate", "vector": "v", "layers": [1]}]}),
    )
    assert sorted(p["name"] for p in presets.describe()) == ["heads", "light"]
    via_preset = resolver.resolve(parse_steering({"preset": "light"}))
    inline = resolver.resolve(parse_steering({"interventions": LIGHT}))
    assert via_preset.fingerprint == inline.fingerprint
    extra = [{"type": "add", "vector": "v", "layers": [2], "scale": 1.0}]
    combined = resolver.resolve(parse_steering({"preset": "light", "interventions": extra}))
    assert combined.fingerprint == resolver.resolve(parse_steering({"interventions": LIGHT + extra})).fingerprint


def test_unknown_preset_is_named_and_bad_inline_keeps_its_own_index(tmp_path) -> None:
    resolver, _ = _setup(tmp_path, light__yaml="interventions: [{type: add, vector: v, scale: 0.5}]\n")
    with pytest.raises(SteeringError, match="unknown preset 'nope'") as info:
        resolver.resolve(parse_steering({"preset": "nope"}))
    assert info.value.param == "steering.preset"
    with pytest.raises(SteeringError) as info:
        resolver.resolve(parse_steering({"preset": "light", "interventions": [{"type": "add", "vector": "x"}]}))
    assert info.value.param == "steering.interventions[0].vector"


def test_spec_needs_preset_or_interventions() -> None:
    with pytest.raises(SteeringError, match="give `interventions`, a `preset`, or both"):
        parse_steering({})
    with pytest.raises(SteeringError):
        parse_steering({"preset": ""})
    with pytest.raises(SteeringError):
        parse_steering({"preset": 3})


def test_gateway_answers_400_naming_the_unknown_preset(tmp_path) -> None:
    resolver, _ = _setup(tmp_path)
    body = json.dumps({"model": "m", "prompt": "hi", "steering": {"preset": "ghost"}}).encode()
    decision = RequestGateway(resolver).prepare("/v1/completions", body)
    assert isinstance(decision, Rejection) and decision.status == 400
    assert "unknown preset 'ghost'" in decision.message and decision.param == "steering.preset"


def test_bad_files_are_kept_out_with_reasons_and_listed(tmp_path) -> None:
    _, presets = _setup(
        tmp_path,
        typo__yaml="interventions: [{type: add, vectr: v}]\n",
        empty__yaml="description: nothing\n",
        wrongname__json=json.dumps({"name": "other", "interventions": LIGHT}),
        broken__yaml="interventions: [\n",
        twin__yaml="interventions: [{type: add, vector: v}]\n",
        twin__json=json.dumps({"interventions": LIGHT}),
    )
    assert len(presets) == 0
    reasons = presets.rejected
    assert "vectr" in reasons["typo"] and "interventions" in reasons["empty"]
    assert "must equal the file name" in reasons["wrongname"] and "broken.yaml" in reasons["broken"]
    assert "same name" in reasons["twin"]
    with pytest.raises(KeyError, match="preset 'typo' is unusable"):
        presets.get("typo")


def test_a_preset_that_stops_resolving_is_listed_with_its_error(tmp_path) -> None:
    resolver, presets = _setup(tmp_path, light__yaml="interventions: [{type: add, vector: v, scale: 0.5}]\n")
    resolver.library.delete("v")
    (listed,) = presets.describe()
    assert listed["usable"] is False and "unknown vector 'v'" in listed["error"]
    with pytest.raises(SteeringError, match="unknown vector 'v'") as info:
        resolver.resolve(parse_steering({"preset": "light"}))
    assert info.value.param == "steering.preset[light].interventions[0].vector"


def test_register_validates_against_the_model_and_persists(tmp_path) -> None:
    resolver, presets = _setup(tmp_path)
    preset = presets.register({"name": "mix", "description": "d", "interventions": LIGHT + [
        {"type": "ablate", "vector": "v", "layers": [1]}, {"type": "clamp", "vector": "v", "layers": [2], "value": 1.0}]})
    assert preset.path.name == "mix.json" and len(preset.interventions) == 3
    stored = json.loads((tmp_path / "presets" / "mix.json").read_text())
    assert stored["description"] == "d" and stored["interventions"][0] == LIGHT[0]
    again = PresetLibrary(tmp_path / "presets")
    assert again.get("mix").raw == preset.raw
    for body, why in (
        ({"name": "deep", "interventions": [{"type": "add", "vector": "v", "layers": [40]}]}, "layer 40 is out of range"),
        ({"name": "ghost", "interventions": [{"type": "add", "vector": "ghost"}]}, "unknown vector 'ghost'"),
        ({"name": "moe", "interventions": [{"type": "experts", "disable": {"1": [0]}}]}, "Mixture-of-Experts"),
        ({"name": "typo", "interventions": [{"type": "add", "vectr": "v"}]}, "vectr"),
        ({"name": "../up", "interventions": LIGHT}, "not allowed"),
        ({"interventions": LIGHT}, "give the preset's `name`"),
        ({"name": "x", "interventions": []}, "interventions"),
        ({"name": "x", "interventions": LIGHT, "extra": 1}, "extra"),
    ):
        with pytest.raises(PresetError, match=why):
            presets.register(body)
    assert sorted(p.name for p in (tmp_path / "presets").iterdir()) == ["mix.json"]


def test_register_conflict_replace_and_delete(tmp_path) -> None:
    _, presets = _setup(tmp_path, light__yaml="interventions: [{type: add, vector: v, scale: 0.5}]\n")
    with pytest.raises(NameTaken):
        presets.register({"name": "light", "interventions": LIGHT})
    replaced = presets.register({"name": "light", "interventions": [{"type": "add", "vector": "v", "scale": 2.0}]},
                                replace=True)
    assert replaced.path.name == "light.json" and not (tmp_path / "presets" / "light.yaml").exists()
    assert presets.delete("light") == ["light.json"]
    with pytest.raises(KeyError, match="unknown preset 'light'"):
        presets.get("light")
    with pytest.raises(KeyError):
        presets.delete("light")


def test_other_process_changes_are_picked_up(tmp_path) -> None:
    resolver, reader = _setup(tmp_path, poll_s=0.0)
    writer = PresetLibrary(tmp_path / "presets", resolver.resolve, poll_s=3600)
    writer.register({"name": "shared", "interventions": LIGHT})
    assert reader.get("shared").name == "shared"
    writer.delete("shared")
    with pytest.raises(KeyError):
        reader.get("shared")


def test_shipped_presets_are_valid_for_the_default_model_shape(tmp_path) -> None:
    from pathlib import Path

    from steer_serve.model_shape import ModelShape
    from steer_serve.library.vector_library import VectorLibrary

    configs = Path(__file__).resolve().parents[3] / "configs"
    shape = ModelShape(model_id="SmolLM2-135M-Instruct", hidden_size=576, num_layers=30, num_heads=9)
    plain = SteeringResolver(shape, VectorLibrary(configs / "vectors", shape), Settings())
    presets = PresetLibrary(configs / "presets", plain.resolve)
    resolver = plain.with_presets(presets)
    listed = presets.describe()
    assert len(listed) >= 2 and all(p["usable"] for p in listed), listed
    for preset in listed:
        assert resolver.resolve(parse_steering({"preset": preset["name"]})).fingerprint
    assert np.isfinite(len(listed))
