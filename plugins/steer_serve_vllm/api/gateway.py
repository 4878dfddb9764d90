"""The API-side gate every completion request passes before vLLM sees it.

It owns the `steering` field: validates it, resolves it against the model and the vector
library, and rewrites the body so vLLM carries the resolved payload to the workers
(`vllm_xargs`) with a prefix-cache salt derived from the fingerprint. vLLM itself silently
drops unknown body fields, so anything that looks like steering but is not understood is
refused here: a misspelt field must never run unsteered.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from steer_serve.request import wire_format
from steer_serve.request.resolved_steering import ResolvedSteering
from steer_serve.request.errors import FIELD, SteeringError, parse_steering
from steer_serve.request.steering_resolver import SteeringResolver
from steer_serve.request.steering_spec import SteeringSpec
from steer_serve_vllm.api.errors import error_body
from steer_serve_vllm.api.observe_gateway import ObserveGate, Observation

if TYPE_CHECKING:
    from steer_serve.experiments.arm_selector import ArmSelector, Assignment
    from steer_serve.policy.gate import PolicyGate

# Each of these request models carries `vllm_xargs` and `cache_salt` into SamplingParams.
STEERABLE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})
OBSERVABLE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})  # the middleware injects results there
FINGERPRINT_HEADER = "x-steer-serve-fingerprint"


@dataclass(frozen=True)
class Rejection:
    """Answer the client with this error instead of forwarding the request."""

    message: str
    param: str | None = None
    status: int = 400
    rule: str | None = None  # the policy rule that refused (403)

    def body(self) -> bytes:
        kind = "PermissionDeniedError" if self.status == 403 else "BadRequestError"
        body = error_body(self.status, self.message, kind, self.param)
        if self.rule is not None:
            body["error"]["rule"] = self.rule
        return json.dumps(body).encode()


@dataclass(frozen=True)
class Forward:
    """Forward the request, with `body` replaced when not None, and add `headers` to the answer."""

    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    fingerprint: str | None = None
    assignment: "Assignment | None" = None  # set when an experiment arm (control included) is served
    observation: Observation | None = None  # set when the workers observe this request (observe, --probes)


class RequestGateway:
    def __init__(self, resolver: SteeringResolver, arms: "ArmSelector | None" = None,
                 policy: "PolicyGate | None" = None, observe: ObserveGate | None = None) -> None:
        self.resolver = resolver
        self.arms = arms
        self.policy = policy
        self.observe = observe

    def prepare(self, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> Rejection | Forward:
        """Validate and apply the request's own steering or, when it carries none, its experiment arm."""
        try:
            request = _load_json(body, "request body")
        except UnparsableJSON as exc:
            return Rejection(str(exc))
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            return Forward()  # not JSON: vLLM answers with its own 400
        if not isinstance(request, dict):
            return Forward()
        try:
            raw_observe = ObserveGate.pop(request)
            raw = _extract_raw_spec(request, path)
            spec = None if raw is None else parse_steering(raw)
            as_written = request if raw_observe is None else dict(request, observe=raw_observe)  # for the policy
            steering = self._admit(as_written, path, headers or {}, spec)
            if isinstance(steering, Rejection):
                return steering
            if raw_observe is not None and self.observe is None:
                raise SteeringError("this server does not observe requests", "observe")
            observation = self.observe.resolve(raw_observe, request, path in OBSERVABLE_PATHS) if self.observe else None
        except SteeringError as exc:
            return Rejection(str(exc), exc.param)
        assignment = self._assign(request, path, headers or {}, forced=steering is not None)
        if assignment is not None and steering is None:
            steering = assignment.arm.steering  # None for control: the body goes on untouched
        extra = assignment.headers if assignment is not None else {}
        if steering is None and observation is None:
            return Forward(headers=extra, assignment=assignment)
        if _reads_whole_prompt(steering) and (refusal := _one_sequence_only(request)) is not None:
            return refusal
        fingerprint, headers_out = None, dict(extra)
        if steering is not None:
            fingerprint = steering.fingerprint
            own_salt = _cache_salt(steering, request)
            xargs = dict(request.get("vllm_xargs") or {})
            xargs[wire_format.EXTRA_ARGS_KEY] = wire_format.encode(steering)
            request["vllm_xargs"] = xargs
            salt = request.get("cache_salt")
            request["cache_salt"] = f"{salt}|{own_salt}" if salt else own_salt
            headers_out = {FINGERPRINT_HEADER: fingerprint, **extra}
        observed = None if observation is None else ObserveGate.attach(request, observation)
        return Forward(json.dumps(request).encode(), headers_out, fingerprint, assignment, observed)

    def _admit(self, request: dict[str, Any], path: str, headers: Mapping[str, str],
               spec: SteeringSpec | None) -> "ResolvedSteering | Rejection | None":
        """The request's own steering, resolved, unless the caller's policy refuses it (403)."""
        caller = None if self.policy is None or path not in STEERABLE_PATHS else self.policy.caller(headers)
        refusal = caller and caller.before(request, spec, lambda: self._covered(request, path, headers))
        steering = None if refusal or spec is None else self.resolver.resolve(spec)
        if caller is not None and steering is not None:
            steering = caller.after(steering)
            refusal = None if isinstance(steering, ResolvedSteering) else steering
        if refusal:
            return Rejection(f"refused by policy rule {refusal.rule}: {refusal.message}", refusal.param, 403,
                             refusal.rule)
        return steering

    def _covered(self, request: dict[str, Any], path: str, headers: Mapping[str, str]) -> bool:
        return self.arms is not None and path in STEERABLE_PATHS and self.arms.covers(request, headers)

    def _assign(self, request: dict[str, Any], path: str, headers: Mapping[str, str], forced: bool) -> "Assignment | None":
        """The experiment arm served to this request, if any (forced requests are only counted)."""
        if self.arms is None or path not in STEERABLE_PATHS:
            return None
        assignment = self.arms.choose(request, headers, forced)
        return assignment if assignment.arm is not None else None


def _cache_salt(steering: ResolvedSteering, request: dict[str, Any]) -> str:
    """The prefix-cache salt of a steered request (call before the body is rewritten).

    The fingerprint keeps steered and unsteered KV apart. It is not enough when an edit depends
    on the phase (`positions` prompt/generated): a block cached from request A's *generated*
    tokens can be reused by request B whose prompt continues A's output (a chat's next turn),
    and in B those tokens are prompt tokens that should have been edited differently. Then the
    salt also pins the request body (steering removed), so KV is shared only between requests
    with the same prompt, hence the same prompt/generated boundary. Known gap: the prompts of
    one request with a list of prompts share a salt.
    """
    if _reads_whole_prompt(steering):  # CAST reads every prompt token: never reuse cached KV
        return f"steer:{steering.fingerprint}:once:{uuid.uuid4().hex}"
    if not steering.phase_dependent:
        return f"steer:{steering.fingerprint}"
    body = hashlib.sha256(json.dumps(request, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    return f"steer:{steering.fingerprint}:body:{body}"


def _reads_whole_prompt(steering: ResolvedSteering | None) -> bool:
    """A condition decided on the prompt (compare mean/last) must see every prompt token computed;
    a per-token gate (compare token) depends on each token alone, so cached KV stays valid."""
    return steering is not None and steering.condition is not None and steering.condition.compare != "token"


def _one_sequence_only(request: dict[str, Any]) -> Rejection | None:
    """A conditional request reads every prompt token at its condition layer; several sequences of one
    request (n > 1, a list of prompts) share its prefix-cache salt and would skip each other's cached
    prompt tokens."""
    if request.get("n", 1) != 1 or request.get("best_of") not in (None, 1):
        return Rejection("conditional steering (`when`) takes one sequence per request (n = 1)", "n")
    prompt = request.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)) and len(prompt) > 1:
        return Rejection("conditional steering (`when`) takes one prompt per request", "prompt")
    return None


def _extract_raw_spec(request: dict[str, Any], path: str) -> Any:
    """Pop the steering object from the body (top level or vllm_xargs); None if unsteered."""
    _refuse_lookalikes(request, "")
    top = request.pop(FIELD, None)
    xargs = request.get("vllm_xargs")
    from_xargs = None
    if isinstance(xargs, dict):
        _refuse_lookalikes(xargs, "vllm_xargs.")
        if wire_format.EXTRA_ARGS_KEY in xargs:
            raise SteeringError(f"vllm_xargs.{wire_format.EXTRA_ARGS_KEY} is reserved for the server", "vllm_xargs")
        from_xargs = _parse_xargs_spec(xargs.pop(FIELD, None))
    if top is not None and from_xargs is not None:
        raise SteeringError("give `steering` either at the top level or in vllm_xargs, not both", FIELD)
    raw = top if top is not None else from_xargs
    if raw is not None and path not in STEERABLE_PATHS:
        raise SteeringError(f"steering is not supported on {path}; use {', '.join(sorted(STEERABLE_PATHS))}", FIELD)
    return raw


def _parse_xargs_spec(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        raise SteeringError("vllm_xargs.steering must be a JSON string", "vllm_xargs.steering")
    try:
        return _load_json(value, "vllm_xargs.steering")
    except UnparsableJSON as exc:
        raise SteeringError(str(exc), "vllm_xargs.steering") from None
    except ValueError as exc:
        raise SteeringError(f"vllm_xargs.steering is not valid JSON: {exc}", "vllm_xargs.steering") from None


class UnparsableJSON(ValueError):
    """Well-formed JSON that Python's parser still refuses (too deep, too many digits)."""


def _load_json(data: bytes | str, what: str) -> Any:
    """json.loads, with the two failures of *valid* JSON turned into a clear 400 (UnparsableJSON).

    Python's parser recurses per nesting level (RecursionError, ~1000 levels) and refuses integer
    literals over 4300 digits (a plain ValueError). Neither may become a 500, and a body vLLM
    could parse differently must not be forwarded with its `steering` unread. Syntax errors stay
    ValueError (JSONDecodeError): the caller decides.
    """
    try:
        return json.loads(data)
    except RecursionError:
        raise UnparsableJSON(f"{what} is nested too deeply (JSON nesting is limited to about 1000 levels)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise
    except ValueError as exc:  # int_max_str_digits: the only other ValueError json.loads raises
        raise UnparsableJSON(f"{what} has a number with too many digits ({str(exc).split(':')[0]})") from None


def _refuse_lookalikes(mapping: dict[str, Any], prefix: str) -> None:
    """Refuse keys that look like a misspelt `steering` (vLLM would drop them silently)."""
    for key in mapping:
        if key == FIELD or not isinstance(key, str):
            continue
        if "steer" in key.lower() or difflib.get_close_matches(key.lower(), [FIELD], n=1, cutoff=0.75):
            if prefix and key == wire_format.EXTRA_ARGS_KEY:
                continue  # reported separately as reserved
            raise SteeringError(f"unknown field '{prefix}{key}'; did you mean '{prefix}{FIELD}'?", prefix + key)
