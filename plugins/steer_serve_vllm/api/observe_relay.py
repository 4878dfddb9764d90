"""Bring a request's observation from the workers into its response.

When the response ends (the JSON body is complete, or the SSE stream reaches `data: [DONE]`), the
relay takes the result from the workers by observation id (api/observe_fetch.py: one poll loop
for all waiting requests, `collective_rpc` of names.OBSERVE_METHOD) and puts it
- non-streaming: under the top-level key `steer_serve.observe` of the JSON body;
- streaming: in one extra chunk right before `data: [DONE]` (empty `choices`, like the usage chunk).
Every observed request is fetched exactly once, also when the client goes away (aborted requests
leave nothing behind in the workers): then in a background task. Results feed the /metrics
histogram of server probes (`on_result`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable

from steer_serve.request import observe_wire
from steer_serve_vllm.api.observe_gateway import Observation

logger = logging.getLogger(f"vllm.{__name__}")
Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]
_DONE = b"data: [DONE]"
_background: set[asyncio.Task] = set()


class ObservationRelay:
    def __init__(self, send: Send, observation: Observation, fetch: Callable[[str], Awaitable[dict | None]],
                 on_result: Callable[[dict[str, Any]], None]) -> None:
        self._send = send
        self.observation = observation
        self._fetch = fetch
        self._on_result = on_result
        self._fetched = False
        self._start: Message | None = None
        self._streaming = False
        self._status = 200
        self._buffer: list[bytes] = []
        self._first_chunk: dict[str, Any] | None = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._status = message["status"]
            headers = dict((k.lower(), v) for k, v in message.get("headers", []))
            self._streaming = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            if self._streaming:
                await self._send(message)
            else:
                self._start = message
            return
        if message["type"] != "http.response.body":
            await self._send(message)
        elif self._streaming:
            await self._stream(message)
        else:
            await self._whole(message)

    async def _whole(self, message: Message) -> None:
        self._buffer.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(self._buffer)
        observed = await self._take()
        if self._status == 200 and self.observation.reported:
            try:
                data = json.loads(body)
                data["steer_serve"] = {"observe": observed}
                body = json.dumps(data).encode()
            except ValueError:
                pass
        headers = [(k, v) for k, v in self._start.get("headers", []) if k.lower() != b"content-length"]
        await self._send(dict(self._start, headers=headers + [(b"content-length", str(len(body)).encode())]))
        await self._send(dict(message, body=body))

    async def _stream(self, message: Message) -> None:
        body = message.get("body", b"")
        if self._first_chunk is None and body.startswith(b"data: {"):
            try:
                self._first_chunk = json.loads(body[6:].split(b"\n\n", 1)[0])
            except ValueError:
                self._first_chunk = {}
        at = body.find(_DONE)
        if at < 0:
            await self._send(message)
            return
        observed = await self._take()
        if self.observation.reported:
            chunk = {k: (self._first_chunk or {}).get(k) for k in ("id", "object", "created", "model")}
            chunk |= {"choices": [], "steer_serve": {"observe": observed}}
            body = body[:at] + b"data: " + json.dumps(chunk).encode() + b"\n\n" + body[at:]
        await self._send(dict(message, body=body))

    async def _take(self) -> dict[str, Any] | None:
        """The public observation object (None if the engine had none); fetched once."""
        self._fetched = True
        try:
            result = await self._fetch(self.observation.observation_id)
        except Exception as exc:  # the response itself must still go out
            logger.error("steer-serve: fetching observation %s failed: %s", self.observation.observation_id, exc)
            return {"error": f"the observation could not be fetched: {exc}"}
        if result is None:
            return None
        self._on_result(result)
        return observe_wire.response_object(result)

    def finish(self) -> None:
        """After the response (or the client's disconnect): fetch what was not fetched, in the background."""
        if not self._fetched:
            task = asyncio.get_running_loop().create_task(self._take())
            _background.add(task)
            task.add_done_callback(_background.discard)
