"""Helpers for experiment tests: write experiment YAML files and build selectors/gateways."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from steer_serve.experiments.arm_selector import ArmSelector
from steer_serve.experiments.control_state import ControlFile
from steer_serve_vllm.api.gateway import RequestGateway
from steer_serve.request.steering_resolver import SteeringResolver


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


def selector(directory: Path, resolver: SteeringResolver, control_path: Path | None = None) -> ArmSelector:
    control = ControlFile(control_path or directory / "experiments-control.json", poll_s=0.0)
    return ArmSelector(directory, resolver, control)


def experiment_gateway(directory: Path, resolver: SteeringResolver) -> RequestGateway:
    return RequestGateway(resolver, selector(directory, resolver))
