"""Experiment definitions: one YAML file per experiment, validated strictly at load time.

Strict (`extra="forbid"`) so that a misspelt key is an error at start or reload rather than an
experiment that silently runs with a default. Arm interventions are kept as raw dicts here and
validated by the same path as a request's `steering` (see `arm_selector.resolve_experiment`), so the
two can never disagree about what an intervention is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from steer_serve.request.errors import describe_validation_error

KEY_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
YAML_SUFFIXES = (".yaml", ".yml")


class ExperimentConfigError(ValueError):
    """An experiment file that cannot be used; the message names the file and the field."""


class HeaderUnit(BaseModel):
    """Take the unit from a request header (e.g. a session id set by a gateway)."""

    model_config = ConfigDict(extra="forbid")

    header: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9-]+$")


class Arm(BaseModel):
    """One arm: `control: true` (no steering), or steering given as a `preset`, `interventions`,
    or both (the preset's interventions first, as in a request's `steering`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=KEY_PATTERN)
    weight: float = Field(ge=0, allow_inf_nan=False)
    control: bool = False
    preset: str | None = None
    interventions: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _control_xor_steering(self) -> "Arm":
        if self.control == (self.steering is not None):
            raise ValueError(f"arm {self.name!r} needs exactly one of `control: true` or steering "
                             "(`preset` and/or `interventions`)")
        return self

    @property
    def steering(self) -> dict[str, Any] | None:
        """The arm's steering object, as a request would send it; None for control."""
        spec = {key: value for key, value in (("preset", self.preset), ("interventions", self.interventions))
                if value is not None}
        return spec or None


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=KEY_PATTERN)
    salt: str = Field(min_length=1, max_length=256)
    status: Literal["running", "stopped"]
    version: int = Field(1, ge=1)
    description: str = ""
    coverage: float = Field(1.0, ge=0, le=1, allow_inf_nan=False)
    unit: Literal["user"] | HeaderUnit = "user"
    arms: list[Arm] = Field(min_length=2, max_length=16)

    @model_validator(mode="after")
    def _arms_are_comparable(self) -> "ExperimentConfig":
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        if sum(arm.control for arm in self.arms) != 1:
            raise ValueError("exactly one arm must be `control: true` (results compare every arm with it)")
        if sum(arm.weight for arm in self.arms) <= 0:
            raise ValueError("at least one arm needs a positive weight")
        return self

    @property
    def control_arm(self) -> Arm:
        return next(arm for arm in self.arms if arm.control)

    def public(self) -> dict[str, Any]:
        """What the listing endpoint shows: everything but the salt (it would let clients pick arms)."""
        return self.model_dump(exclude={"salt"}, mode="json")


def load_experiment(path: Path) -> ExperimentConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ExperimentConfigError(f"{path}: cannot read YAML: {exc}") from None
    try:
        config = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ExperimentConfigError(f"{path}: {describe_validation_error(exc, whole='(top level)')}") from None
    if config.key != path.stem:
        raise ExperimentConfigError(f"{path}: key {config.key!r} must equal the file name {path.stem!r}")
    return config


def load_experiments(directory: Path) -> list[ExperimentConfig]:
    """All experiments in `directory`, sorted by key (the order in which they claim units)."""
    if not directory.is_dir():
        raise ExperimentConfigError(f"experiments directory {directory} does not exist")
    files = sorted(p for p in directory.iterdir() if p.suffix in YAML_SUFFIXES and p.is_file())
    return sorted((load_experiment(path) for path in files), key=lambda config: config.key)
