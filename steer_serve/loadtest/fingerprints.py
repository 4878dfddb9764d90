"""Was every answer steered as it was asked? steer-serve names the edits it applied to a request in
the `x-steer-serve-fingerprint` header (a content hash of the resolved edits, see
`steer_serve.request.resolved_steering`). Named vectors and presets resolve on the server, so the
fingerprint a spec must get is the one the server reports for it alone: before each measured run,
one 1-token probe per distinct steering spec of that run, and the experiment arms' fingerprints from
GET /v1/steering/experiments. Under load, an answer whose header differs from its spec's (or that
has one when it was sent unsteered to a control arm) was mixed up with another request.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from steer_serve.loadtest.engine import RequestRecord
from steer_serve.loadtest.preflight import PreflightError
from steer_serve.loadtest.traffic import PlannedRequest

FINGERPRINT = "x-steer-serve-fingerprint"
EXPERIMENT = "x-steer-serve-experiment"
ARM = "x-steer-serve-arm"


class ProbeError(PreflightError):
    """The server refused a class's steering when asked alone (the message names the class)."""


def spec_key(steering: dict[str, Any]) -> str:
    """One key per steering spec, however its fields were ordered."""
    return json.dumps(steering, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Expected:
    by_spec: dict[str, str] = field(default_factory=dict)  # spec_key -> the server's fingerprint for it
    by_arm: dict[tuple[str, str], str | None] = field(default_factory=dict)  # (experiment, arm) -> fingerprint

    def of(self, planned: PlannedRequest, headers: dict[str, str]) -> str | None:
        """The fingerprint this answer must carry (None: no header, the request ran unsteered).
        Own steering wins over an experiment arm, as in the server's gateway."""
        steering = (planned.overrides or {}).get("steering")
        if steering is not None:
            return self.by_spec[spec_key(steering)]
        if ARM in headers:
            return self.by_arm.get((headers.get(EXPERIMENT, ""), headers[ARM]), "(arm not listed by the server)")
        return None


def probe(client: httpx.Client, model: str, steering: dict[str, Any], traffic_class: str) -> str:
    """The fingerprint the server gives `steering` on a request of its own (one generated token)."""
    body = {"model": model, "prompt": "fingerprint probe", "max_tokens": 1, "steering": steering}
    try:
        response = client.post("/v1/completions", json=body)
    except httpx.HTTPError as exc:
        raise ProbeError(f"traffic {traffic_class!r}: probing its steering failed: {exc}") from None
    if response.status_code != 200:
        raise ProbeError(f"traffic {traffic_class!r}: the server refused its steering ({response.status_code}): "
                         f"{response.text[:300]}")
    if FINGERPRINT not in response.headers:
        raise ProbeError(f"traffic {traffic_class!r}: a steered answer came without {FINGERPRINT}: not steer-serve?")
    return response.headers[FINGERPRINT]


def arm_fingerprints(client: httpx.Client) -> dict[tuple[str, str], str | None]:
    response = client.get("/v1/steering/experiments")
    if response.status_code != 200:
        return {}
    return {(experiment["key"], arm["name"]): arm.get("fingerprint")
            for experiment in response.json()["data"] for arm in experiment["arms"]}


def expected_fingerprints(client: httpx.Client, model: str, requests: list[PlannedRequest]) -> Expected:
    """Probe each distinct spec of this run once; the arms only when some request carries a user."""
    specs: dict[str, tuple[dict[str, Any], str]] = {}
    for planned in requests:
        steering = (planned.overrides or {}).get("steering")
        if steering is not None:
            specs.setdefault(spec_key(steering), (steering, planned.traffic_class))
    by_spec = {key: probe(client, model, steering, name) for key, (steering, name) in specs.items()}
    has_users = any("user" in (p.overrides or {}) for p in requests)
    return Expected(by_spec, arm_fingerprints(client) if has_users else {})


def check(requests: list[PlannedRequest], records: list[RequestRecord], expected: Expected) -> dict[str, Any]:
    """Per class: answers with the expected fingerprint, the mismatches (with one example), and the
    distinct fingerprints that were due."""
    planned = {p.request_id: p for p in requests}
    out: dict[str, Any] = {}
    for record in records:
        if record.status != 200:
            continue
        row = out.setdefault(record.traffic_class, {"matched": 0, "mismatched": 0, "example": "", "expected": []})
        want = expected.of(planned[record.request_id], record.headers)
        got = record.headers.get(FINGERPRINT)
        if want is not None and want not in row["expected"]:
            row["expected"] = sorted([*row["expected"], want])
        if want is not None and got == want:
            row["matched"] += 1
        elif got != want:
            row["mismatched"] += 1
            row["example"] = row["example"] or f"request {record.request_id}: fingerprint {got} where {want} was due"
    return out


def mismatch_errors(checked: dict[str, Any]) -> dict[str, Any]:
    """The mismatches as an entry of the report's errors (status "fingerprint mismatch")."""
    classes = Counter({name: row["mismatched"] for name, row in checked.items() if row["mismatched"]})
    if not classes:
        return {}
    example = next(row["example"] for row in checked.values() if row["mismatched"])
    return {"fingerprint mismatch": {"count": sum(classes.values()), "classes": dict(classes), "example": example}}
