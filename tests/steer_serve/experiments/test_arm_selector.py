"""The gateway serves experiment arms: headers, sticky arms, control, kill switches, counted skips."""

from __future__ import annotations

import json

import pytest

from steer_serve import metrics
from steer_serve.request import wire_format
from steer_serve.experiments.arm_selector import ARM_HEADER, EXPERIMENT_HEADER
from steer_serve.experiments.config import ExperimentConfigError
from steer_serve.request.errors import parse_steering
from steer_serve_vllm.api.gateway import FINGERPRINT_HEADER, Forward, RequestGateway
from harness.experiments import experiment, selector, switch, two_arms, write_experiments
from harness.libraries import resolver, vector

ADD = [{"type": "add", "vector": "v", "layers": [1], "scale": 2.0}]
OWN = {"interventions": [{"type": "add", "vector": "v", "layers": [2], "scale": 1.0}]}


@pytest.fixture
def setup(tmp_path):
    """A gateway with experiment `e` (50/50) and the resolver it uses."""
    resolve = resolver(tmp_path, v=vector())
    directory = write_experiments(tmp_path / "exp", experiment("e", two_arms(ADD)))
    arms = selector(directory, resolve)
    return RequestGateway(resolve, arms), arms, resolve


def _prepare(gateway: RequestGateway, body: dict, headers: dict | None = None, path: str = "/v1/chat/completions"):
    decision = gateway.prepare(path, json.dumps(body).encode(), headers or {})
    assert isinstance(decision, Forward)
    return decision


def _count(experiment: str, arm: str, outcome: str) -> float:
    return metrics.ASSIGNMENTS.labels(experiment, arm, outcome)._value.get()


def _user_in(gateway: RequestGateway, arm: str) -> str:
    return next(u for u in (f"u{i}" for i in range(100)) if _prepare(gateway, {"user": u}).headers[ARM_HEADER] == arm)


def test_treatment_arm_becomes_the_requests_steering(setup) -> None:
    gateway, arms, resolve = setup
    user = _user_in(gateway, "treatment")
    decision = _prepare(gateway, {"model": "m", "messages": [], "user": user})
    expected = resolve.resolve(parse_steering({"interventions": ADD}))
    fingerprint, steering = wire_format.decode(json.loads(decision.body)["vllm_xargs"][wire_format.EXTRA_ARGS_KEY])
    assert fingerprint == expected.fingerprint == decision.fingerprint
    assert decision.headers == {FINGERPRINT_HEADER: fingerprint, EXPERIMENT_HEADER: "e", ARM_HEADER: "treatment"}
    assert decision.assignment.unit_hash and user not in decision.assignment.unit_hash


def test_control_arm_leaves_the_body_alone_but_is_labelled(setup) -> None:
    gateway, _, _ = setup
    decision = _prepare(gateway, {"user": _user_in(gateway, "control")})
    assert decision.body is None and decision.fingerprint is None
    assert decision.headers == {EXPERIMENT_HEADER: "e", ARM_HEADER: "control"}
    assert decision.assignment.outcome == "assigned"


def test_arms_are_sticky_and_both_used(setup) -> None:
    gateway, _, _ = setup
    first = {u: _prepare(gateway, {"user": u}).headers[ARM_HEADER] for u in (f"u{i}" for i in range(200))}
    again = {u: _prepare(gateway, {"user": u}).headers[ARM_HEADER] for u in first}
    assert first == again and 60 < list(first.values()).count("control") < 140


def test_unit_less_and_forced_requests_are_counted_not_assigned(setup) -> None:
    gateway, _, _ = setup
    no_unit, forced = _count("e", "none", "no_unit"), _count("e", "treatment", "forced")
    assert _prepare(gateway, {"messages": []}) == Forward()
    user = _user_in(gateway, "treatment")
    decision = _prepare(gateway, {"user": user, "steering": OWN})
    assert decision.assignment is None and EXPERIMENT_HEADER not in decision.headers
    _, own = wire_format.decode(json.loads(decision.body)["vllm_xargs"][wire_format.EXTRA_ARGS_KEY])
    assert [a.layer for a in own.additions] == [2]  # the request's own steering, not the arm's
    assert _count("e", "none", "no_unit") == no_unit + 1
    assert _count("e", "treatment", "forced") == forced + 1


def test_other_endpoints_are_never_assigned(setup) -> None:
    gateway, _, _ = setup
    assert _prepare(gateway, {"user": "u1"}, path="/v1/embeddings") == Forward()


def test_kill_switch_per_experiment_and_global_sends_everyone_to_control(setup) -> None:
    gateway, arms, _ = setup
    user = _user_in(gateway, "treatment")
    switch(arms, "e", True)
    killed = _prepare(gateway, {"user": user})
    assert killed.body is None and killed.headers[ARM_HEADER] == "control"
    assert killed.assignment.outcome == "killed" and killed.assignment.assigned_arm.name == "treatment"
    switch(arms, "e", False)
    assert _prepare(gateway, {"user": user}).headers[ARM_HEADER] == "treatment"
    switch(arms, None, True)
    assert _prepare(gateway, {"user": user}).assignment.outcome == "killed"


def test_kill_switch_reaches_another_process(setup, tmp_path) -> None:
    gateway, arms, resolve = setup
    other = selector(tmp_path / "exp", resolve)  # same files, as a second API-server process would have
    user = _user_in(gateway, "treatment")
    switch(arms, None, True)
    other.control.refresh()  # what its follower thread does every 0.25 s
    assert RequestGateway(resolve, other).prepare("/v1/completions", json.dumps({"user": user}).encode()).assignment.outcome == "killed"


def test_header_unit_stopped_experiments_and_coverage(tmp_path) -> None:
    resolve = resolver(tmp_path, v=vector())
    directory = write_experiments(
        tmp_path / "exp", experiment("a_off", two_arms(ADD), status="stopped"),
        experiment("b_header", two_arms(ADD), unit={"header": "X-Session"}, coverage=0.5))
    gateway = RequestGateway(resolve, selector(directory, resolve))
    decisions = [_prepare(gateway, {"user": "ignored"}, {"x-session": f"s{i}"}) for i in range(400)]
    enrolled = [d for d in decisions if d.assignment is not None]
    assert {d.headers[EXPERIMENT_HEADER] for d in enrolled} == {"b_header"}
    assert 150 < len(enrolled) < 250
    assert _prepare(gateway, {"user": "u"}) == Forward()  # no header: not enrolled


def test_reload_applies_everywhere_and_a_bad_file_keeps_the_old_set(setup, tmp_path) -> None:
    gateway, arms, resolve = setup
    other = selector(tmp_path / "exp", resolve)
    write_experiments(tmp_path / "exp", experiment("e", two_arms(ADD, control_weight=1, treatment_weight=0), version=2))
    arms.reload()
    other.control.refresh()
    assert other.choose({"user": "u1"}, {}, forced=False).arm.name == "control"  # followed the generation
    write_experiments(tmp_path / "exp", experiment("e", two_arms([{"type": "add", "vector": "gone", "scale": 1.0}])))
    with pytest.raises(ExperimentConfigError, match="gone"):
        arms.reload()
    assert arms.experiments[0].config.version == 2


def _preset_resolver(tmp_path):
    from steer_serve.library.presets import PresetLibrary

    resolve = resolver(tmp_path, v=vector())
    presets_dir = tmp_path / "presets"
    presets_dir.mkdir()
    (presets_dir / "light.json").write_text(json.dumps({"interventions": ADD}))
    return resolve.with_presets(PresetLibrary(presets_dir, resolve.resolve, poll_s=0.0))


def test_an_arm_can_name_a_preset_alone_or_with_interventions(tmp_path) -> None:
    resolve = _preset_resolver(tmp_path)
    extra = [{"type": "add", "vector": "v", "layers": [2], "scale": -1.0}]
    arms_config = [{"name": "control", "weight": 1, "control": True},
                   {"name": "preset", "weight": 1, "preset": "light"},
                   {"name": "preset_plus", "weight": 1, "preset": "light", "interventions": extra}]
    arms = selector(write_experiments(tmp_path / "exp", experiment("p", arms_config)), resolve)
    live = {arm.name: arm.steering for arm in arms.experiments[0].arms}
    assert live["control"] is None
    assert live["preset"].fingerprint == resolve.resolve(parse_steering({"interventions": ADD})).fingerprint
    assert live["preset_plus"].fingerprint == resolve.resolve(parse_steering({"interventions": ADD + extra})).fingerprint


def test_an_arm_naming_an_unknown_preset_fails_at_load(tmp_path) -> None:
    resolve = _preset_resolver(tmp_path)
    arms_config = two_arms([])[:1] + [{"name": "typo", "weight": 1, "preset": "ligth"}]
    with pytest.raises(ExperimentConfigError, match="arm 'typo'.*unknown preset 'ligth'"):
        selector(write_experiments(tmp_path / "exp", experiment("p", arms_config)), resolve)
