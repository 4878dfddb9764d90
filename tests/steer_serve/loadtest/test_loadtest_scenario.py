"""Scenario files: good ones parse, bad ones fail with the offending field named."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from steer_serve.loadtest.scenario import ScenarioError, load_scenario, parse_scenario

REPO = Path(__file__).resolve().parents[3]
BASE = {"model": "m", "prompts": {"input_tokens": 16, "output_tokens": 8},
        "traffic": [{"name": "plain", "weight": 1}], "arrival": {"concurrency": 2}, "requests": 10}


def with_(**changes):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        node = raw
        *path, last = dotted.split("__")
        for part in path:
            node = node[int(part)] if part.isdigit() else node[part]
        node[last] = value
    return raw


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "loadtests").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_scenarios_parse(path: Path) -> None:
    assert load_scenario(path).traffic


@pytest.mark.parametrize("changes, field", [
    ({"colour": "red"}, "colour"),
    ({"arrival": {"rate": -1.0}}, "arrival.rate"),
    ({"arrival": {"rate": 0}}, "arrival.rate"),
    ({"traffic__0__wieght": 1}, "traffic.0.wieght"),
    ({"traffic__0__weight": -2}, "traffic.0.weight"),
    ({"traffic__0__steering": {"interventions": [{"type": "add", "vector": "v", "scael": 1}]}}, "traffic.0.steering"),
    ({"prompts": {"output_tokens": 8}}, "prompts"),
    ({"prompts": {"input_tokens": {"dist": "uniform", "min": 9, "max": 3}, "output_tokens": 8}}, "prompts.input_tokens"),
    ({"requests": "ten"}, "requests"),
    ({"duration_s": 5.0}, "exactly one of `requests` or `duration_s`"),
    ({"arrival": {"sweep": [4.0, 1.0]}}, "arrival"),
    ({"slo": {"ttft": {"max_ms": 100, "percentile": 120}}}, "slo.ttft.percentile"),
    ({"traffic": [{"name": "a", "weight": 1}, {"name": "a", "weight": 1}]}, "traffic"),
])
def test_bad_scenario_names_the_field(changes, field) -> None:
    raw = with_(**changes)
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(raw, "bad.yaml")
    assert field in str(exc.value) and str(exc.value).startswith("bad.yaml: ")


def test_duration_needs_open_loop() -> None:
    raw = with_(requests=None)
    raw.pop("requests")
    raw["duration_s"] = 5.0
    with pytest.raises(ScenarioError, match="needs an open-loop"):
        parse_scenario(raw)
    raw["arrival"] = {"rate": 3.0}
    assert parse_scenario(raw).requests_at(3.0) == 15


def test_arrival_shapes() -> None:
    assert parse_scenario(BASE).arrival.rates == [math.inf]
    assert parse_scenario(with_(arrival={"sweep": [1, 2.5]})).arrival.rates == [1.0, 2.5]
    assert parse_scenario(with_(arrival={"rate": 2, "concurrency": 3})).arrival.rates == [2.0]


def test_missing_prompt_file_is_named(tmp_path: Path) -> None:
    raw = with_(prompts={"file": "nope.jsonl", "output_tokens": 8})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ScenarioError, match="prompts.file: no such file"):
        load_scenario(path)
