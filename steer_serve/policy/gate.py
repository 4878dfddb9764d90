"""The policy in force, applied where steering enters: requests, presets, experiment arms.

- A request: the caller is found by the sha256 of the key it authenticated with (vLLM's
  `--api-key`, sent as `Authorization: Bearer KEY`); its rule is checked before resolution
  (names, kinds, scales, count, observe, overriding an arm) and after (layers); the rule's
  `max_dose` then travels with the resolved steering to the engine.
- Presets: at load every rule that names a preset must also allow what it contains (one that
  matches it by a glob only: logged), and a preset registered at runtime is refused if a rule
  names it but not its contents. Per request a preset's contents are checked like the caller's own.
- Experiment arms: checked against the `arms` rule (default: `default`) when experiments or the
  policy load; the rule's `max_dose` is applied to them. A caller's own rule never refuses the
  arm it is served: the operator chose it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from steer_serve.policy.check import Refusal, VectorHash, check_interventions, check_layers, check_observe, name_allowed
from steer_serve.policy.loader import PolicyError, check_against_library, read_policy, rule_path
from steer_serve.policy.model import Policy, Rule
from steer_serve.request.errors import parse_steering
from steer_serve.request.resolved_steering import ResolvedSteering
from steer_serve.request.steering_spec import SteeringSpec

if TYPE_CHECKING:
    from steer_serve.experiments.arm_selector import LiveExperiment
    from steer_serve.library.presets import Preset, PresetLibrary
    from steer_serve.request.steering_resolver import SteeringResolver
    from steer_serve.library.vector_library import VectorLibrary

logger = logging.getLogger(__name__)


def key_hash(key: str) -> str:
    """What a policy file lists for a key: `printf %s KEY | sha256sum`."""
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_key(headers: Mapping[str, str]) -> str | None:
    """The key exactly as vLLM's --api-key check reads it (first Authorization header, no stripping)."""
    scheme, _, key = headers.get("authorization", "").partition(" ")
    return key or None if scheme.lower() == "bearer" else None


@dataclass(frozen=True)
class Caller:
    """One request's rule: `name` is `default` or the caller's name in the file."""

    name: str
    rule: Rule
    vector_hash: VectorHash
    presets: "PresetLibrary"

    def before(self, request: dict[str, Any], spec: SteeringSpec | None, covered: Callable[[], bool]) -> Refusal | None:
        """Checks on the request as written (nothing resolved yet, nothing reaches the engine)."""
        refusal = check_observe(self.name, self.rule, request)
        if refusal is not None or spec is None:
            return refusal
        refusal = spec_refusal(self.name, self.rule, spec, self.presets, self.vector_hash)
        if refusal is None and not self.rule.override_experiments and covered():
            return Refusal(f"{self.name}.override_experiments", "this caller may not replace the experiment arm it "
                           "is assigned with its own steering; send the request without `steering`", "steering")
        return refusal

    def after(self, steering: ResolvedSteering) -> Refusal | ResolvedSteering:
        """The layer check on the resolved edits, then the rule's dose limit attached for the engine."""
        return check_layers(self.name, self.rule, steering) or with_dose(steering, self.rule.max_dose)


def spec_refusal(name: str, rule: Rule, spec: SteeringSpec, presets: "PresetLibrary",
                 vector_hash: VectorHash) -> Refusal | None:
    """Check a spec with its preset's interventions first, as the resolver expands them."""
    expanded: list[tuple[Any, str]] = []
    if spec.preset is not None and name_allowed(rule.presets, spec.preset):
        try:
            preset = presets.get(spec.preset)
        except KeyError:
            preset = None  # the resolver answers 400 with why
        if preset is not None:
            expanded += [(item, f"steering.preset[{spec.preset}].interventions[{index}]")
                         for index, item in enumerate(preset.interventions)]
    expanded += [(item, f"steering.interventions[{index}]") for index, item in enumerate(spec.interventions or [])]
    return check_interventions(name, rule, spec.preset, expanded, vector_hash)


def with_dose(steering: ResolvedSteering, max_dose: float | None) -> ResolvedSteering:
    """The steering with the engine-side dose limit of the rule (only meaningful with additions)."""
    return dataclasses.replace(steering, max_dose=float(max_dose) if max_dose is not None else None)


class PolicyGate:
    def __init__(self, path: Path, library: "VectorLibrary", presets: "PresetLibrary",
                 resolver: "SteeringResolver") -> None:
        self.path = Path(path)
        self.library = library
        self.presets = presets
        self.resolver = resolver
        self.policy = self.vetted(read_policy(self.path))

    # ---- requests ----------------------------------------------------------------------
    def caller(self, headers: Mapping[str, str]) -> Caller:
        key = bearer_key(headers)
        name, rule = self.policy.rule_for(None if key is None else key_hash(key))
        return Caller(name, rule, self.vector_hash, self.presets)

    def vector_hash(self, name: str) -> str | None:
        try:
            return self.library.get(name).record.get("content_sha256")
        except KeyError:
            return None

    # ---- loading -----------------------------------------------------------------------
    def vetted(self, policy: Policy) -> Policy:
        """`policy` if it fits the library, model and presets; PolicyError naming file and field otherwise."""
        presets = self.presets.items()
        check_against_library(policy, self.path, self.library.items(), presets, self.resolver.shape.num_layers)
        for name, rule in policy.named_rules():
            for preset in presets.values():
                if not name_allowed(rule.presets, preset.name):
                    continue
                refusal = self.preset_refusal(name, rule, preset)
                if refusal is not None and preset.name in rule.presets.allow:
                    raise PolicyError(f"{self.path}: {rule_path(name)}.presets names preset {preset.name!r}, "
                                      f"which breaks rule {refusal.rule}: {refusal.message} ({refusal.param}); "
                                      "remove it or change the preset")
                if refusal is not None:
                    logger.warning("policy %s: preset %s matches %s.presets but breaks rule %s; those callers get "
                                   "403 for it", self.path, preset.name, rule_path(name), refusal.rule)
        return policy

    def preset_refusal(self, name: str, rule: Rule, preset: "Preset") -> Refusal | None:
        try:
            steering = self.resolver.resolve(preset.spec)
        except ValueError:
            return None  # a preset that does not resolve is unusable anyway (listed with its error)
        spec = SteeringSpec(interventions=preset.interventions)
        return spec_refusal(name, rule, spec, self.presets, self.vector_hash) or check_layers(name, rule, steering)

    def check_preset(self, preset: "Preset") -> None:
        """For runtime registration: ValueError when a rule names the preset but does not allow its contents
        (a rule that allows it by a glob only refuses its callers the preset, per request)."""
        for name, rule in self.policy.named_rules():
            if preset.name in rule.presets.allow and name_allowed(rule.presets, preset.name):
                refusal = self.preset_refusal(name, rule, preset)
                if refusal is not None:
                    raise ValueError(f"policy rule {refusal.rule} (which allows this preset's name): {refusal.message} "
                                     f"({refusal.param.removeprefix('steering.')})")

    def vet_experiment(self, experiment: "LiveExperiment", policy: Policy | None = None) -> "LiveExperiment":
        """The experiment with its arms checked against the arms rule and dosed; ValueError names the arm."""
        name, rule = (policy or self.policy).arms_rule()
        arms = []
        for config, arm in zip(experiment.config.arms, experiment.arms):
            if arm.steering is not None:
                refusal = self._arm_refusal(name, rule, config.steering, arm.steering)
                if refusal is not None:
                    raise ValueError(f"experiment {experiment.config.key!r}, arm {arm.name!r} breaks policy rule "
                                     f"{refusal.rule}: {refusal.message} ({refusal.param})")
                arm = dataclasses.replace(arm, steering=with_dose(arm.steering, rule.max_dose))
            arms.append(arm)
        return dataclasses.replace(experiment, arms=tuple(arms))

    def _arm_refusal(self, name: str, rule: Rule, raw: Any, steering: ResolvedSteering) -> Refusal | None:
        spec = parse_steering(raw)
        return spec_refusal(name, rule, spec, self.presets, self.vector_hash) or check_layers(name, rule, steering)

    def reload(self, experiments: list["LiveExperiment"]) -> list["LiveExperiment"]:
        """Read the file again; on any error raise PolicyError and keep the policy in force.

        Returns the running experiments re-checked and re-dosed under the new policy."""
        policy = self.vetted(read_policy(self.path))
        try:
            vetted = [self.vet_experiment(experiment, policy) for experiment in experiments]
        except ValueError as exc:
            raise PolicyError(f"{self.path}: {rule_path(policy.arms_rule()[0])}: {exc}") from None
        self.policy = policy
        logger.info("policy %s reloaded: rules %s", self.path, ", ".join(n for n, _ in policy.named_rules()))
        return vetted
