"""What an experiment needs from a response, read off the bytes the client receives.

The middleware feeds every ASGI response message here. Streaming (SSE): the first `data:` event
gives the time to first token and the response id; the events whose `finish_reason` is set (and
the usage chunk, if the client asked for one) give the finish reason and token count. Token
chunks in between are only counted, not parsed: vLLM writes them compactly with
`"finish_reason":null`, and anything that does not match that cheap test is parsed, so a format
change costs speed, never correctness. Non-streaming: the JSON body is parsed once at the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

_UNFINISHED = b'"finish_reason":null'
_MAX_BUFFERED_BODY = 8 * 1024 * 1024


@dataclass(frozen=True)
class Observation:
    request_id: str | None
    status: int
    error: bool
    stream: bool
    ttft_s: float | None
    latency_s: float
    tokens: int | None
    tokens_source: str | None
    finish_reason: str | None


class ResponseObserver:
    def __init__(self, started: float) -> None:
        self.started = started
        self.status = 0
        self.stream = False
        self.first_chunk_at: float | None = None
        self.request_id: str | None = None
        self.finish_reason: str | None = None
        self.usage_tokens: int | None = None
        self.chunk_tokens = 0
        self.error = False
        self._pending = b""
        self._body: list[bytes] = []
        self._body_size = 0

    def on_start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
        self.stream = content_type.startswith(b"text/event-stream")

    def on_body(self, chunk: bytes, now: float) -> None:
        if not self.stream:
            self._body_size += len(chunk)
            if self._body_size <= _MAX_BUFFERED_BODY:
                self._body.append(chunk)
            return
        events = (self._pending + chunk).split(b"\n\n")
        self._pending = events.pop()
        for event in events:
            if event.startswith(b"data: ") and event != b"data: [DONE]":
                self._on_event(event[6:], now)

    def finish(self, now: float) -> Observation:
        if not self.stream:
            self._read_json_body()
        tokens, source = (self.usage_tokens, "usage") if self.usage_tokens is not None else (None, None)
        if tokens is None and self.stream:
            tokens, source = self.chunk_tokens, "chunks"
        ttft = None if self.first_chunk_at is None else self.first_chunk_at - self.started
        return Observation(self.request_id, self.status, self.error or self.status >= 400, self.stream, ttft,
                           now - self.started, tokens, source, self.finish_reason)

    def _on_event(self, data: bytes, now: float) -> None:
        first = self.first_chunk_at is None
        if first:
            self.first_chunk_at = now
        if not first and _UNFINISHED in data:
            self.chunk_tokens += 1
            return
        try:
            payload = json.loads(data)
        except ValueError:
            return
        if isinstance(payload, dict):
            self._read_payload(payload, streamed=True)

    def _read_json_body(self) -> None:
        if not self._body or self._body_size > _MAX_BUFFERED_BODY:
            return
        try:
            payload = json.loads(b"".join(self._body))
        except ValueError:
            return
        if isinstance(payload, dict):
            self._read_payload(payload, streamed=False)

    def _read_payload(self, payload: dict[str, Any], streamed: bool) -> None:
        if "error" in payload:
            self.error = True
        if isinstance(payload.get("id"), str) and self.request_id is None:
            self.request_id = payload["id"]
        usage = payload.get("usage")
        if isinstance(usage, dict):
            for key in ("completion_tokens", "output_tokens"):  # chat/completions, responses
                if isinstance(usage.get(key), int):
                    self.usage_tokens = usage[key]
        for choice in payload.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason") is not None:
                self.finish_reason = str(choice["finish_reason"])
            if streamed and _has_text(choice):
                self.chunk_tokens += 1


def _has_text(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    return isinstance(text, str) and text != ""
