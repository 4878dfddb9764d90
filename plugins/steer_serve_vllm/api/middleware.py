"""ASGI middleware that passes every POST body through the steering gateway.

Pure ASGI (no BaseHTTPMiddleware) so streaming responses and client disconnects reach vLLM's
handlers untouched: we only replace the body message and add headers to the response start.
Completion responses are also watched on their way out (`ResponseObserver`: time to first
token, tokens, finish reason), and recorded once they end (metrics; exposures for experiments).
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

from steer_serve.experiments.response_observer import ResponseObserver
from steer_serve import metrics
from steer_serve.request import observe_wire
from steer_serve_vllm.api.gateway import STEERABLE_PATHS, Forward, Rejection
from steer_serve_vllm.api.observe_fetch import fetcher_of
from steer_serve_vllm.api.observe_relay import ObservationRelay

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyTooLarge(Exception):
    pass


class SteeringMiddleware:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = getattr(scope.get("app", None), "state", None)
        service = getattr(service, "steer_serve", None)
        if scope["type"] != "http" or scope["method"] != "POST" or service is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            body = await _read_body(receive, service.settings.max_body_bytes)
        except BodyTooLarge:
            limit = service.settings.max_body_bytes
            await _send_error(send, Rejection(f"request body exceeds {limit} bytes", None, 413))
            return
        decision = service.gateway.prepare(scope["path"], body, _header_map(scope["headers"]))
        if isinstance(decision, Rejection):
            service.count_rejection(decision)
            await _send_error(send, decision)
            return
        if scope["path"] not in STEERABLE_PATHS:
            await self._forward(scope, receive, send, body, decision, None)
            return
        observer = ResponseObserver(started)
        relay = _relay(scope, send, decision)
        try:
            await self._forward(scope, receive, send if relay is None else relay.send, body, decision, observer)
        finally:
            if relay is not None:
                relay.finish()
            service.recorder.record(decision.assignment, decision.fingerprint, observer.finish(time.perf_counter()))

    async def _forward(self, scope: Scope, receive: Receive, send: Send, body: bytes, decision: Forward,
                       observer: ResponseObserver | None) -> None:
        if decision.body is not None:
            body = decision.body
            scope = dict(scope, headers=_with_content_length(scope["headers"], len(body)))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls: disconnect detection for streaming

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                if decision.headers:
                    extra = [(k.encode(), v.encode()) for k, v in decision.headers.items()]
                    message = dict(message, headers=list(message.get("headers", [])) + extra)
                if observer is not None:
                    observer.on_start(message["status"], message.get("headers", []))
            elif message["type"] == "http.response.body" and observer is not None:
                observer.on_body(message.get("body", b""), time.perf_counter())
            await send(message)

        await self.app(scope, replay, send_with_headers)


def _relay(scope: Scope, send: Send, decision: Forward) -> ObservationRelay | None:
    """The relay that brings the observation into the response (None when nothing is observed)."""
    if decision.observation is None:
        return None
    fetcher = fetcher_of(scope["app"].state, scope["app"].state.engine_client)
    assignment = decision.assignment
    experiment = assignment.experiment.config.key if assignment and assignment.experiment else metrics.NONE
    arm = assignment.arm.name if assignment and assignment.arm else metrics.NONE

    def record(result: dict[str, Any]) -> None:
        for probe, mean in observe_wire.probe_means(result).items():
            metrics.PROBE_MEAN_PROJECTION.labels(probe, experiment, arm).observe(mean)

    return ObservationRelay(send, decision.observation, fetcher.fetch, record)


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _header_map(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Request headers by lower-case name, the first of repeated ones as Starlette (and so vLLM's
    --api-key check) reads them: the policy must see the key vLLM authenticated."""
    mapped: dict[str, str] = {}
    for key, value in headers:
        mapped.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
    return mapped


def _with_content_length(headers: list[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    return kept + [(b"content-length", str(length).encode())]


async def _send_error(send: Send, rejection: Rejection) -> None:
    body = rejection.body()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": rejection.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


