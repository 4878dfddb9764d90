"""The policy file's schema: strict (no coercion, no unknown field), checked before the model loads.

    default:                      # every caller without a rule of its own (required)
      inline_vectors: false
      vectors: {allow: ["gloomy*"], deny: ["sha256:<hex>"]}
    callers:
      research:                   # the rule's name: it appears in 403s and in /metrics
        keys_sha256: ["<sha256 hex of the --api-key value>"]
        max_abs_scale: 20
    arms: {...}                   # what experiment arms may do (default: the `default` rule)

A field left out of a rule does not restrict (the server-wide limits still hold): a production
rule spells out every field (configs/policies/production.yaml).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator, model_validator

from steer_serve.policy.matching import check_pattern

OBSERVE_FIELDS: frozenset[str] = frozenset({"probes", "capture"})  # request `observe` fields (observe_spec.py)
RULE_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
RESERVED_NAMES = frozenset({"default", "arms"})
_KEY_HASH = re.compile(r"[0-9a-f]{64}")
_LAYER_RANGE = re.compile(r"([0-9]{1,5})-([0-9]{1,5})")

Kind = Literal["add", "ablate", "clamp", "experts", "heads"]
Number = Union[StrictInt, StrictFloat]
Pattern = Annotated[StrictStr, Field(min_length=1, max_length=200)]


def _positive_finite(value: float | None, what: str) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a finite number > 0")
    return value


class NameRule(BaseModel):
    """Entries a rule allows: those matching some `allow` pattern and no `deny` pattern."""

    model_config = ConfigDict(extra="forbid")

    allow: list[Pattern] = Field(default_factory=lambda: ["*"])
    deny: list[Pattern] = Field(default_factory=list)

    @field_validator("allow", "deny")
    @classmethod
    def _patterns(cls, patterns: list[str]) -> list[str]:
        for index, pattern in enumerate(patterns):
            try:
                check_pattern(pattern)
            except ValueError as exc:
                raise ValueError(f"[{index}] {exc}") from None
        return patterns


class Rule(BaseModel):
    """What one caller (or every caller, or the experiment arms) may steer."""

    model_config = ConfigDict(extra="forbid")

    inline_vectors: StrictBool = True
    kinds: list[Kind] | None = Field(None, description="intervention types allowed; None: all")
    vectors: NameRule = Field(default_factory=NameRule)
    presets: NameRule = Field(default_factory=NameRule)
    layers: list[StrictInt | StrictStr] | None = Field(None, description='layers that may be edited: 3, "6-14"; None: all')
    max_abs_scale: Number | None = None
    max_dose: Number | None = Field(None, description="|added vector| <= max_dose * |layer output| per token, in the engine")
    max_interventions: StrictInt | None = Field(None, ge=1)
    observe: list[StrictStr] = Field(default_factory=list, description="request `observe` fields allowed")
    override_experiments: StrictBool = True

    @field_validator("max_abs_scale", "max_dose")
    @classmethod
    def _limits(cls, value: float | None, info) -> float | None:
        return _positive_finite(value, info.field_name)

    @field_validator("layers")
    @classmethod
    def _layer_syntax(cls, layers: list[int | str] | None) -> list[int | str] | None:
        for entry in layers or []:
            parse_layers(entry)
        return layers

    @field_validator("observe")
    @classmethod
    def _known_observe(cls, fields: list[str]) -> list[str]:
        unknown = [f for f in fields if f not in OBSERVE_FIELDS]
        if unknown:
            known = ", ".join(sorted(OBSERVE_FIELDS)) or "none yet"
            raise ValueError(f"unknown observe field {unknown[0]!r} (this server knows: {known})")
        return fields

    def allowed_layers(self) -> frozenset[int] | None:
        if self.layers is None:
            return None
        return frozenset(layer for entry in self.layers for layer in parse_layers(entry))


class CallerRule(Rule):
    """A rule for the callers that authenticate with one of these `--api-key` values (by sha256)."""

    keys_sha256: Annotated[list[StrictStr], Field(min_length=1)]

    @field_validator("keys_sha256")
    @classmethod
    def _hashes(cls, hashes: list[str]) -> list[str]:
        for index, value in enumerate(hashes):
            if _KEY_HASH.fullmatch(value) is None:
                raise ValueError(f"[{index}] is not a sha256 hex digest (64 lower-case hex digits); "
                                 "write the hash of the key, never the key itself")
        return hashes


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: Rule
    callers: dict[StrictStr, CallerRule] = Field(default_factory=dict)
    arms: Rule | None = Field(None, description="what experiment arms may do; None: the default rule")

    @field_validator("callers")
    @classmethod
    def _names(cls, callers: dict[str, CallerRule]) -> dict[str, CallerRule]:
        for name in callers:
            if RULE_NAME.fullmatch(name) is None or name in RESERVED_NAMES:
                raise ValueError(f"caller name {name!r}: 1-40 of a-z, 0-9, '_' starting with a letter, "
                                 f"not {' or '.join(sorted(RESERVED_NAMES))}")
        return callers

    @model_validator(mode="after")
    def _keys_once(self) -> "Policy":
        owner: dict[str, str] = {}
        for name, rule in self.callers.items():
            for digest in rule.keys_sha256:
                if digest in owner:
                    raise ValueError(f"callers.{name}.keys_sha256: key hash also listed under callers.{owner[digest]}")
                owner[digest] = name
        return self

    def rule_for(self, key_sha256: str | None) -> tuple[str, Rule]:
        """(rule name, rule) for a caller identified by the hash of its key (None: no key)."""
        for name, rule in self.callers.items():
            if key_sha256 is not None and key_sha256 in rule.keys_sha256:
                return name, rule
        return "default", self.default

    def named_rules(self) -> list[tuple[str, Rule]]:
        return [("default", self.default), *self.callers.items()]

    def arms_rule(self) -> tuple[str, Rule]:
        return ("arms", self.arms) if self.arms is not None else ("default", self.default)


def parse_layers(entry: int | str) -> range:
    """A layer number or an inclusive range "6-14"; ValueError otherwise."""
    if isinstance(entry, int):
        if entry < 0:
            raise ValueError(f"layer {entry} is negative")
        return range(entry, entry + 1)
    match = _LAYER_RANGE.fullmatch(entry)
    if match is None or int(match[1]) > int(match[2]):
        raise ValueError(f"{entry!r} is not a layer range like \"6-14\"")
    return range(int(match[1]), int(match[2]) + 1)

