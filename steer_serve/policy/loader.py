"""Read a policy file and check it against what the server serves; errors name the file and field.

Two stages: `read_policy` (YAML + schema, needs nothing else: `steer-serve serve` runs it before
vLLM spends a minute starting) and `check_against_library` (exact vector and preset names must
exist, layers must exist in the model). The gate (gate.py) adds the checks of presets and arms.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from steer_serve.policy.matching import is_glob, is_hash
from steer_serve.policy.model import NameRule, Policy, Rule


class PolicyError(ValueError):
    """A policy file that cannot be used; the message starts with the file and the field."""


def read_policy(path: Path) -> Policy:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy file: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise PolicyError(f"{path}: the policy must be a mapping with at least `default:`")
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        raise PolicyError(f"{path}: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    """`field.path: message` per error, e.g. `callers.research.vectors.allow: Value error, bad glob '[x'`."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))
        parts.append(f"{where or 'policy'}: {error['msg']}")
    return "; ".join(dict.fromkeys(parts))


def rule_path(name: str) -> str:
    """Where a rule sits in the file: `default`, `arms` or `callers.NAME`."""
    return name if name in ("default", "arms") else f"callers.{name}"


def check_against_library(policy: Policy, path: Path, vectors: Mapping[str, Any], presets: Mapping[str, Any],
                          num_layers: int) -> None:
    """Exact names must name library entries (a typo must not silently allow or deny nothing)."""
    rules: list[tuple[str, Rule]] = policy.named_rules() + ([("arms", policy.arms)] if policy.arms else [])
    for name, rule in rules:
        _check_names(path, f"{rule_path(name)}.vectors", rule.vectors, vectors, "vector")
        _check_names(path, f"{rule_path(name)}.presets", rule.presets, presets, "preset")
        allowed = rule.allowed_layers() or frozenset()
        if allowed and max(allowed) >= num_layers:
            raise PolicyError(f"{path}: {rule_path(name)}.layers: layer {max(allowed)} does not exist "
                              f"(the model has layers 0..{num_layers - 1})")


def _check_names(path: Path, where: str, rule: NameRule, known: Mapping[str, Any], kind: str) -> None:
    for field, patterns in (("allow", rule.allow), ("deny", rule.deny)):
        for index, pattern in enumerate(patterns):
            if not is_glob(pattern) and not is_hash(pattern) and pattern not in known:
                available = ", ".join(sorted(known)) or "none"
                raise PolicyError(f"{path}: {where}.{field}[{index}]: unknown {kind} {pattern!r} (available: {available})")
