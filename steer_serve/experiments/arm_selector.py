"""Which arm (if any) a request gets: the experiments the server runs, resolved once.

Arms' interventions are validated and resolved at load time through exactly the request path
(`parse_steering` + `SteeringResolver.resolve`), so a bad experiment file fails at start or
reload with the offending field named, and a request never pays for resolution.

Running experiments are offered each request in key order; the first that has the request's
unit and covers it claims it (independent salts keep the later experiments' populations random).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from steer_serve import metrics
from steer_serve.experiments.assignment import arm_index, hash_unit, is_covered
from steer_serve.experiments.config import ExperimentConfig, ExperimentConfigError, HeaderUnit, load_experiments
from steer_serve.experiments.control_state import ControlFile
from steer_serve.request.resolved_steering import ResolvedSteering
from steer_serve.request.errors import SteeringError, parse_steering
from steer_serve.request.steering_resolver import SteeringResolver

logger = logging.getLogger(__name__)
EXPERIMENT_HEADER = "x-steer-serve-experiment"
ARM_HEADER = "x-steer-serve-arm"


@dataclass(frozen=True)
class LiveArm:
    name: str
    weight: float
    steering: ResolvedSteering | None  # None for the control arm


@dataclass(frozen=True)
class LiveExperiment:
    config: ExperimentConfig
    arms: tuple[LiveArm, ...]

    def unit_of(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> str | None:
        if isinstance(self.config.unit, HeaderUnit):
            value = headers.get(self.config.unit.header.lower())
        else:
            value = body.get("user")
        return value if isinstance(value, str) and value else None

    def arm_for(self, unit: str) -> LiveArm:
        return self.arms[arm_index(self.config.salt, unit, [arm.weight for arm in self.arms])]

    @property
    def control(self) -> LiveArm:
        return next(arm for arm in self.arms if arm.steering is None)


@dataclass(frozen=True)
class Assignment:
    """The decision for one request; `arm` is what is served (None: the request is not in it)."""

    experiment: LiveExperiment | None
    outcome: str
    arm: LiveArm | None = None
    assigned_arm: LiveArm | None = None
    unit_hash: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        if self.experiment is None or self.arm is None:
            return {}
        return {EXPERIMENT_HEADER: self.experiment.config.key, ARM_HEADER: self.arm.name}


def resolve_experiment(config: ExperimentConfig, resolver: SteeringResolver) -> LiveExperiment:
    arms = []
    for arm in config.arms:
        steering = None
        if arm.steering is not None:  # a preset is expanded now: the arm stays fixed until a reload
            try:
                steering = resolver.resolve(parse_steering(arm.steering))
            except SteeringError as exc:
                raise ExperimentConfigError(f"experiment {config.key!r}, arm {arm.name!r}: {exc} ({exc.param})") from None
        arms.append(LiveArm(arm.name, arm.weight, steering))
    return LiveExperiment(config, tuple(arms))


class ArmSelector:
    def __init__(self, directory: Path, resolver: SteeringResolver, control: ControlFile,
                 vet: Callable[[LiveExperiment], LiveExperiment] | None = None) -> None:
        """`vet` checks (ValueError) and may adjust each loaded experiment: the steering policy's arms rule."""
        self.directory = directory
        self.resolver = resolver
        self.control = control
        self.vet = vet
        self.experiments = self._load()
        self._generation = control.current().generation

    def reload(self) -> list[LiveExperiment]:
        """Load the directory again (raising on any error, keeping the old set), then tell the other processes."""
        self.experiments = self._load()
        state = self.control.update(lambda s: s.model_copy(update={"generation": s.generation + 1}))
        self._generation = state.generation
        return self.experiments

    def covers(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> bool:
        """Whether a running experiment would assign this request an arm (nothing is counted)."""
        for experiment in self.experiments:
            unit = experiment.unit_of(body, headers) if experiment.config.status == "running" else None
            if unit is not None and is_covered(experiment.config.salt, unit, experiment.config.coverage):
                return True
        return False

    def choose(self, body: Mapping[str, Any], headers: Mapping[str, str], forced: bool) -> Assignment:
        self._follow_other_processes()
        state = self.control.current()
        missing_unit: LiveExperiment | None = None
        for experiment in self.experiments:
            if experiment.config.status != "running":
                continue
            unit = experiment.unit_of(body, headers)
            if unit is None:
                missing_unit = missing_unit or experiment
                continue
            if not is_covered(experiment.config.salt, unit, experiment.config.coverage):
                continue
            assigned = experiment.arm_for(unit)
            unit_hash = hash_unit(experiment.config.salt, unit)
            if forced:
                return _counted(Assignment(experiment, "forced", None, assigned, unit_hash))
            if state.is_killed(experiment.config.key):
                return _counted(Assignment(experiment, "killed", experiment.control, assigned, unit_hash))
            return _counted(Assignment(experiment, "assigned", assigned, assigned, unit_hash))
        if forced and any(e.config.status == "running" for e in self.experiments):
            return _counted(Assignment(None, "forced"))
        if missing_unit is not None:
            return _counted(Assignment(missing_unit, "no_unit"))
        if any(e.config.status == "running" for e in self.experiments):
            return _counted(Assignment(None, "not_covered"))
        return Assignment(None, "no_experiment")

    def _load(self) -> list[LiveExperiment]:
        experiments = [resolve_experiment(config, self.resolver) for config in load_experiments(self.directory)]
        try:
            return [self.vet(e) for e in experiments] if self.vet is not None else experiments
        except ValueError as exc:
            raise ExperimentConfigError(str(exc)) from None

    def _follow_other_processes(self) -> None:
        generation = self.control.current().generation
        if generation == self._generation:
            return
        self._generation = generation
        try:
            self.experiments = self._load()
        except ExperimentConfigError as exc:
            logger.error("experiments changed by another process but cannot be loaded here; keeping the old set: %s", exc)


def _counted(assignment: Assignment) -> Assignment:
    experiment = assignment.experiment.config.key if assignment.experiment else metrics.NONE
    counted_arm = assignment.arm or assignment.assigned_arm  # forced: the arm the unit would have had
    arm = counted_arm.name if counted_arm else metrics.NONE
    metrics.ASSIGNMENTS.labels(experiment, arm, assignment.outcome).inc()
    return assignment
