"""TTFT, tokens, finish reason and id are read off the response bytes, streamed or not."""

from __future__ import annotations

import json

from steer_serve.experiments.response_observer import ResponseObserver

SSE = [(b"content-type", b"text/event-stream; charset=utf-8")]
JSON = [(b"content-type", b"application/json")]


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _chunk(content: str | None, finish: str | None = None, role: bool = False) -> dict:
    delta = {"role": "assistant", "content": ""} if role else {"content": content}
    return {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_streamed_chat_split_at_odd_places() -> None:
    first = _event(_chunk(None, role=True))
    stream = b"".join([first, _event(_chunk("a")), _event(_chunk("b")), _event(_chunk("c", "length")), b"data: [DONE]\n\n"])
    observer = ResponseObserver(started=10.0)
    observer.on_start(200, SSE)
    end = len(first)
    pieces = [stream[:7], stream[7:end + 3], stream[end + 3:end + 4], stream[end + 4:]]
    for at, piece in zip((10.5, 11.0, 11.5, 12.0), pieces):
        observer.on_body(piece, at)
    seen = observer.finish(13.0)
    assert (seen.request_id, seen.stream, seen.status, seen.error) == ("chatcmpl-1", True, 200, False)
    assert seen.ttft_s == 1.0  # the first complete event arrived with the second piece
    assert (seen.tokens, seen.tokens_source, seen.finish_reason, seen.latency_s) == (3, "chunks", "length", 3.0)


def test_usage_chunk_wins_over_chunk_count_and_errors_are_seen() -> None:
    observer = ResponseObserver(started=0.0)
    observer.on_start(200, SSE)
    observer.on_body(_event({"id": "cmpl-9", "choices": [{"text": "x", "finish_reason": None}]}), 0.1)
    observer.on_body(_event({"id": "cmpl-9", "choices": [{"text": "", "finish_reason": "stop"}]}), 0.2)
    observer.on_body(_event({"id": "cmpl-9", "choices": [], "usage": {"completion_tokens": 7}}), 0.3)
    seen = observer.finish(0.4)
    assert (seen.tokens, seen.tokens_source, seen.finish_reason) == (7, "usage", "stop")
    broken = ResponseObserver(started=0.0)
    broken.on_start(200, SSE)
    broken.on_body(_event({"error": {"message": "boom"}}), 0.1)
    assert broken.finish(0.2).error


def test_non_streaming_body_is_parsed_once() -> None:
    body = json.dumps({"id": "chatcmpl-2", "choices": [{"finish_reason": "stop", "message": {"content": "hi"}}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode()
    observer = ResponseObserver(started=1.0)
    observer.on_start(200, JSON)
    observer.on_body(body[:10], 1.2)
    observer.on_body(body[10:], 1.3)
    seen = observer.finish(1.5)
    assert (seen.request_id, seen.stream, seen.ttft_s, seen.tokens, seen.finish_reason) == ("chatcmpl-2", False, None, 2, "stop")
    failed = ResponseObserver(started=0.0)
    failed.on_start(404, JSON)
    failed.on_body(b'{"error": {"message": "no such model"}}', 0.1)
    assert failed.finish(0.1).error and failed.finish(0.1).request_id is None
