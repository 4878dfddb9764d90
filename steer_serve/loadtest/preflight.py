"""Checks against the server before any traffic: reachable, the key accepted, the model served,
every named vector and preset present (and usable), the hidden size known for inline vectors.
A failed check raises `PreflightError` and the load test sends nothing."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from steer_serve.loadtest.scenario import Scenario, TrafficClass


class PreflightError(RuntimeError):
    """The server cannot take this scenario; the message says why."""


@dataclass(frozen=True)
class ServerFacts:
    served_models: list[str]
    vectors: dict[str, int]  # library name -> dim (empty on plain vLLM)
    presets: dict[str, str | None]  # preset name -> problem (None = usable)
    has_metrics: bool


def _get(client: httpx.Client, path: str) -> httpx.Response:
    try:
        response = client.get(path)
    except httpx.HTTPError as exc:
        raise PreflightError(f"cannot reach {client.base_url}{path}: {exc}") from None
    if response.status_code in (401, 403):
        raise PreflightError(f"{client.base_url}{path} answered {response.status_code} {response.reason_phrase}: "
                             "the server wants an API key (--api-key) or refused the one given")
    return response


def _served_models(client: httpx.Client, scenario: Scenario) -> list[str]:
    response = _get(client, "/v1/models")
    if response.status_code != 200:
        raise PreflightError(f"GET /v1/models answered {response.status_code}: is this an OpenAI-compatible server?")
    served = [m["id"] for m in response.json().get("data", [])]
    if scenario.model not in served:
        raise PreflightError(f"model: the server does not serve {scenario.model!r}; it serves {served}")
    return served


def _library(client: httpx.Client, scenario: Scenario) -> tuple[dict[str, int], dict[str, str | None]]:
    if not any(c.steered for c in scenario.traffic):
        return {}, {}
    vectors = _get(client, "/v1/steering/vectors")
    presets = _get(client, "/v1/steering/presets")
    if vectors.status_code == 404 or presets.status_code == 404:
        steered = [c.name for c in scenario.traffic if c.steered]
        raise PreflightError(f"traffic {steered} is steered but {client.base_url} has no steering routes "
                             "(/v1/steering/vectors: 404): plain vLLM? Steered traffic needs steer-serve")
    for response in (vectors, presets):
        response.raise_for_status()
    return ({v["name"]: v["dim"] for v in vectors.json()["data"]},
            {p["name"]: p.get("error") if not p.get("usable", True) else None for p in presets.json()["data"]})


def _check_class(index: int, traffic: TrafficClass, facts: ServerFacts) -> None:
    where = f"traffic.{index} ({traffic.name})"
    steering = traffic.steering or {}
    preset = steering.get("preset")
    if preset is not None:
        if preset not in facts.presets:
            raise PreflightError(f"{where}: steering.preset: no preset {preset!r} on the server "
                                 f"(it has {sorted(facts.presets)})")
        if facts.presets[preset] is not None:
            raise PreflightError(f"{where}: steering.preset: {preset!r} is not usable: {facts.presets[preset]}")
    for j, intervention in enumerate(steering.get("interventions") or []):
        name = intervention.get("vector")
        if isinstance(name, str) and name not in facts.vectors:
            raise PreflightError(f"{where}: steering.interventions.{j}.vector: no vector {name!r} on the server "
                                 f"(it has {sorted(facts.vectors)})")
    if traffic.random_vectors is not None and traffic.random_vectors.dim is None and not facts.vectors:
        raise PreflightError(f"{where}: random_vectors.dim: not given, and the server's library has no vector "
                             "to take the hidden size from")


def check_server(client: httpx.Client, scenario: Scenario) -> ServerFacts:
    served = _served_models(client, scenario)
    vectors, presets = _library(client, scenario)
    facts = ServerFacts(served, vectors, presets, _get(client, "/metrics").status_code == 200)
    for index, traffic in enumerate(scenario.traffic):
        _check_class(index, traffic, facts)
    return facts


def hidden_size(traffic: TrafficClass, facts: ServerFacts) -> int | None:
    if traffic.random_vectors is None:
        return None
    return traffic.random_vectors.dim or next(iter(facts.vectors.values()))
