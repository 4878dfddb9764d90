"""Experiment files are validated strictly at load, arms through the request's own steering path."""

from __future__ import annotations

from pathlib import Path

import pytest

from steer_serve.experiments.arm_selector import resolve_experiment
from steer_serve.experiments.config import ExperimentConfigError, load_experiment, load_experiments
from steer_serve.model_shape import ModelShape
from steer_serve.settings import REPO_CONFIGS, Settings
from steer_serve.request.steering_resolver import SteeringResolver
from steer_serve.library.vector_library import VectorLibrary
from harness.experiments import experiment, two_arms, write_experiments
from harness.libraries import resolver, vector

ADD = [{"type": "add", "vector": "v", "layers": [1], "scale": 2.0}]


def _load_error(tmp_path: Path, config: dict) -> str:
    write_experiments(tmp_path, config)
    with pytest.raises(ExperimentConfigError) as info:
        load_experiments(tmp_path)
    return str(info.value)


def test_valid_file_loads_sorted_by_key(tmp_path) -> None:
    write_experiments(tmp_path, experiment("b", two_arms(ADD)), experiment("a", two_arms(ADD), unit={"header": "x-s"}))
    configs = load_experiments(tmp_path)
    assert [c.key for c in configs] == ["a", "b"]
    assert configs[0].unit.header == "x-s" and configs[1].control_arm.name == "control"
    assert "salt" not in configs[0].public()


@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, "colour: Extra inputs are not permitted"),
    ({"status": "paused"}, "status: Input should be 'running' or 'stopped'"),
    ({"coverage": 1.5}, "coverage: Input should be less than or equal to 1"),
    ({"arms": [{"name": "c", "weight": 1, "control": True}, {"name": "t", "weight": 1, "control": True}]},
     "exactly one arm must be `control: true`"),
    ({"arms": [{"name": "c", "weight": 1, "control": True}, {"name": "t", "weight": 1}]},
     "arm 't' needs exactly one of `control: true` or steering"),
    ({"arms": [{"name": "c", "weight": 1, "control": True}, {"name": "c", "weight": 1, "interventions": ADD}]},
     "arm names must be unique"),
    ({"arms": [{"name": "c", "weight": 0, "control": True}, {"name": "t", "weight": 0, "interventions": ADD}]},
     "at least one arm needs a positive weight"),
    ({"arms": [{"name": "c", "weight": -1, "control": True}, {"name": "t", "weight": 1, "interventions": ADD}]},
     "arms[0].weight: Input should be greater than or equal to 0"),
    ({"unit": {"header": "x-s", "extra": 1}}, "unit.HeaderUnit.extra: Extra inputs are not permitted"),
])
def test_bad_files_name_the_file_and_field(tmp_path, change, message) -> None:
    error = _load_error(tmp_path, experiment("e", two_arms(ADD)) | change)
    assert str(tmp_path / "e.yaml") in error and message in error, error


def test_key_must_match_file_name_and_yaml_must_parse(tmp_path) -> None:
    write_experiments(tmp_path, experiment("e", two_arms(ADD)))
    (tmp_path / "e.yaml").rename(tmp_path / "other.yaml")
    with pytest.raises(ExperimentConfigError, match="must equal the file name 'other'"):
        load_experiment(tmp_path / "other.yaml")
    (tmp_path / "bad.yaml").write_text("key: [unclosed")
    with pytest.raises(ExperimentConfigError, match="cannot read YAML"):
        load_experiment(tmp_path / "bad.yaml")


@pytest.mark.parametrize("interventions, message", [
    ([{"type": "add", "vector": "nope", "scale": 1.0}], "nope"),
    ([{"type": "add", "vector": "v", "layers": [9], "scale": 1.0}], "layer 9 is out of range"),
    ([{"type": "add", "vector": "v", "layers": [1], "scale": 1.0, "colour": 1}], "Extra inputs are not permitted"),
    ([{"type": "add", "vector": "v", "scale": {8: 1.0}}], "steering.interventions[0].scale"),
])
def test_arm_interventions_fail_through_the_request_path(tmp_path, interventions, message) -> None:
    write_experiments(tmp_path / "exp", experiment("e", two_arms(interventions)))
    (config,) = load_experiments(tmp_path / "exp")
    with pytest.raises(ExperimentConfigError) as info:
        resolve_experiment(config, resolver(tmp_path, v=vector()))
    assert "experiment 'e', arm 'treatment'" in str(info.value) and message in str(info.value), str(info.value)


def test_shipped_examples_resolve_against_the_default_model() -> None:
    shape = ModelShape(model_id="SmolLM2-135M-Instruct", hidden_size=576, num_layers=30, num_heads=9)
    settings = Settings()
    library = VectorLibrary.load_dir(REPO_CONFIGS / "vectors", shape)
    configs = load_experiments(REPO_CONFIGS / "experiments")
    assert {c.key for c in configs} >= {"gloomy_tone"}
    for config in configs:
        live = resolve_experiment(config, SteeringResolver(shape, library, settings))
        assert [arm.steering is None for arm in live.arms].count(True) == 1
