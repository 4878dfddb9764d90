"""The request path's one error type, and the one way pydantic errors become a message.

Requests, presets and experiment arms all validate a `steering` object through `parse_steering`
and report problems as `SteeringError(message, param)`; the API answers it as a 400 naming
`param`. `describe_validation_error` words every pydantic error the product reports (requests,
presets, experiment files, admin bodies, datasets).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from steer_serve.request.steering_spec import INTERVENTION_TYPES, SteeringSpec

FIELD = "steering"
MAX_ERRORS_SHOWN = 5
# pydantic names union members in error locations ("int", "list[...]", "constrained-str", ...)
_UNION_BRANCH = re.compile(r"^(int|float|str|bool|constrained-str|function-\w+\[.*|\w+\[.*\])$")


class SteeringError(ValueError):
    """A steering request that cannot be served; `param` locates the offending field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def parse_steering(raw: Any) -> SteeringSpec:
    """The one validation path for a `steering` object (requests and experiment arms)."""
    try:
        return SteeringSpec.model_validate(raw)
    except ValidationError as exc:
        raise SteeringError("invalid steering: " + describe_validation_error(exc, FIELD), FIELD) from None


def describe_validation_error(exc: ValidationError, root: str = "", whole: str = "body") -> str:
    """One entry per offending field, e.g. `steering.interventions[0].scale: Input should be ...`.

    `root` prefixes every path; an error about the whole object is reported under `root`, or
    under `whole` without one. At most MAX_ERRORS_SHOWN fields are listed."""
    messages: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False):
        messages.setdefault(field_path(error["loc"], root) or whole, []).append(error["msg"])
    parts = [f"{path}: {' / '.join(dict.fromkeys(msgs))}" for path, msgs in messages.items()]
    more = f" (and {len(parts) - MAX_ERRORS_SHOWN} more)" if len(parts) > MAX_ERRORS_SHOWN else ""
    return "; ".join(parts[:MAX_ERRORS_SHOWN]) + more


def field_path(loc: tuple[Any, ...], root: str = "") -> str:
    """Render a pydantic location, leaving out union-branch and discriminator-tag entries."""
    path = root
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _UNION_BRANCH.match(str(part)) and part not in INTERVENTION_TYPES:
            path += f".{part}" if path else str(part)
    return path
