"""The API side of `observe`: take the field out of the body, check it, and hand it to the workers.

Like `steering`, the field may come at the top level or as a JSON string in `vllm_xargs.observe`.
The resolved observation (the request's probes plus the server's `--probes`) travels in
`vllm_xargs[observe_wire.EXTRA_ARGS_KEY]` under a fresh observation id, which the middleware uses to
fetch the result from the workers when the response ends. A request that observes gets its own
prefix-cache salt, so every one of its prompt tokens goes through a forward pass (cached tokens
would have no values).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from steer_serve.request import observe_wire
from steer_serve.request.errors import SteeringError
from steer_serve.request.observe_spec import (MAX_PROBES, OBSERVE_FIELD, ObserveResolver, Probe, ResolvedObservation,
                                              parse_observe)


@dataclass(frozen=True)
class Observation:
    """What the middleware needs: the id to fetch by, and whether the client gets the result."""

    observation_id: str
    reported: bool


class ObserveGate:
    def __init__(self, resolver: ObserveResolver, server_probes: tuple[Probe, ...] = ()) -> None:
        self.resolver = resolver
        self.server_probes = server_probes

    @staticmethod
    def pop(request: dict[str, Any]) -> Any:
        """Take the raw `observe` object out of the body (top level or vllm_xargs); None if absent."""
        return _pop_raw(request)

    def resolve(self, raw: Any, request: dict[str, Any], observable: bool) -> ResolvedObservation | None:
        """Check and resolve a popped `observe` (SteeringError naming the field when wrong), with the
        server's probes; None when nothing is observed."""
        if raw is None:
            return ResolvedObservation(self.server_probes) if self.server_probes and observable else None
        if not observable:
            raise SteeringError("observe is supported on /v1/chat/completions and /v1/completions", OBSERVE_FIELD)
        _refuse_several_sequences(request)
        spec = parse_observe(raw)
        if len(spec.probes) + len(self.server_probes) > MAX_PROBES:
            raise SteeringError(f"at most {MAX_PROBES - len(self.server_probes)} probes per request on this server "
                                f"({len(self.server_probes)} of {MAX_PROBES} are the server's)", f"{OBSERVE_FIELD}.probes")
        max_tokens = request.get("max_tokens", request.get("max_completion_tokens"))
        observation = self.resolver.resolve(spec, max_tokens if isinstance(max_tokens, int) else None)
        return observation.with_server_probes(self.server_probes)

    @staticmethod
    def attach(request: dict[str, Any], observation: ResolvedObservation) -> Observation:
        """Write the payload into the body (and a per-request salt when the client observes)."""
        observation_id = uuid.uuid4().hex
        xargs = dict(request.get("vllm_xargs") or {})
        xargs[observe_wire.EXTRA_ARGS_KEY] = observe_wire.encode(observation_id, observation)
        request["vllm_xargs"] = xargs
        reported = any(p.report for p in observation.probes) or observation.capture is not None
        if reported:
            salt = request.get("cache_salt")
            request["cache_salt"] = f"{salt}|observe:{observation_id}" if salt else f"observe:{observation_id}"
        return Observation(observation_id, reported)


def _pop_raw(request: dict[str, Any]) -> Any:
    top = request.pop(OBSERVE_FIELD, None)
    xargs = request.get("vllm_xargs")
    from_xargs = None
    if isinstance(xargs, dict):
        if observe_wire.EXTRA_ARGS_KEY in xargs:
            raise SteeringError(f"vllm_xargs.{observe_wire.EXTRA_ARGS_KEY} is reserved for the server", "vllm_xargs")
        text = xargs.pop(OBSERVE_FIELD, None)
        if text is not None:
            if not isinstance(text, str):
                raise SteeringError("vllm_xargs.observe must be a JSON string", "vllm_xargs.observe")
            try:
                from_xargs = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise SteeringError(f"vllm_xargs.observe is not valid JSON: {exc}", "vllm_xargs.observe") from None
    if top is not None and from_xargs is not None:
        raise SteeringError("give `observe` either at the top level or in vllm_xargs, not both", OBSERVE_FIELD)
    return top if top is not None else from_xargs


def _refuse_several_sequences(request: dict[str, Any]) -> None:
    """One observation per request: several choices or prompts would share one observation id."""
    if request.get("n", 1) != 1:
        raise SteeringError("observe needs n = 1 (one observation per request)", "n")
    prompt = request.get("prompt")
    if isinstance(prompt, list) and prompt and not all(isinstance(t, int) for t in prompt) and len(prompt) > 1:
        raise SteeringError("observe needs a single prompt (one observation per request)", "prompt")
