"""Helpers for experiment tests: write experiment YAML files and build selectors/gateways."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from steer_serve.experiments.arm_selector import ArmSelector
from steer_serve.experiments.control_state import ControlFollower
from steer_serve.experiments.records import Exposure, Feedback
from steer_serve.experiments.store import ExperimentStore
from steer_serve_vllm.api.gateway import RequestGateway
from steer_serve.request.steering_resolver import SteeringResolver


def copy_definitions(source: Path, target: Path) -> Path:
    """The experiment definitions in `source`, copied to `target` without the store or outbox that
    another server using `source` writes there (each server must count only its own traffic)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.jsonl", "*.json", "*.db*", "outbox"))
    return target


def experiment(key: str, arms: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"key": key, "salt": f"salt-{key}", "status": "running", "version": 1, "coverage": 1.0, "unit": "user",
            "arms": arms, **fields}


def two_arms(treatment: list[dict[str, Any]], control_weight: float = 1, treatment_weight: float = 1) -> list[dict]:
    return [{"name": "control", "weight": control_weight, "control": True},
            {"name": "treatment", "weight": treatment_weight, "interventions": treatment}]


def write_experiments(directory: Path, *experiments: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for config in experiments:
        (directory / f"{config['key']}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return directory


def control_follower(directory: Path) -> ControlFollower:
    """Kill switches and reloads read from the SQLite store in `directory`, refreshed by the tests."""
    directory.mkdir(parents=True, exist_ok=True)
    store = ExperimentStore(f"sqlite:///{directory / 'experiments.db'}")
    store.migrate()
    control = ControlFollower(store)
    control.refresh()
    return control


def selector(directory: Path, resolver: SteeringResolver) -> ArmSelector:
    """A selector on the SQLite store in `directory` (shared by every selector made for it, as by
    the processes of one server). Its control copy is refreshed by the tests (`switch`), not a thread."""
    return ArmSelector(directory, resolver, control_follower(directory))


def switch(arms: ArmSelector, key: str | None, engaged: bool) -> None:
    """Engage/release a kill switch in the store and let this selector see it."""
    arms.control.store.set_kill_switch(key, engaged)
    arms.control.refresh()


def experiment_gateway(directory: Path, resolver: SteeringResolver) -> RequestGateway:
    return RequestGateway(resolver, selector(directory, resolver))


def exposure_row(i: int, arm: str, *, key: str = "e", version: int = 1, ts: float | None = None,
                 **changes: Any) -> dict[str, Any]:
    """One stored exposure (request id `chatcmpl-<i>`, unit `u<i % 150>-<arm>`), with any field changed."""
    record = Exposure(request_id=f"chatcmpl-{i}", experiment=key, version=version, arm=arm, assigned_arm=arm,
                      outcome="assigned", unit=f"u{i % 150}-{arm}", fingerprint=None, model="m", stream=True,
                      status=200, error=False, ttft_s=0.01 * (i % 10), latency_s=0.1 * (i % 10) + 0.05,
                      tokens=8, tokens_source="chunks", finish_reason="length", ts=1_700_000_000.0 + i if ts is None else ts)
    return record.model_copy(update=changes).model_dump(mode="json")


def feedback_row(request_id: str, metric: str, value: bool | float, ts: float | None = None) -> dict[str, Any]:
    item = Feedback(request_id=request_id, metric=metric, value=value)
    return item.model_copy(update={"ts": ts}).row() if ts is not None else item.row()
