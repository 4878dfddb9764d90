"""A small HTTP client for observed completions on a running steer-serve server.

Prompts go to `/v1/completions` as token ids, so the server computes exactly the tokens the caller
rendered (no second tokenisation on the server). Transient failures (connection errors, timeouts,
429 and 5xx) are retried with exponential backoff; a 4xx is the server naming a bad field and is
raised at once. An answer whose observation could not be made (all of the server's observation
lanes taken) is asked again too. `map` runs calls on a bounded thread pool, results in input order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from steer_serve.tools.observation import Observation, ObservationUnavailable, parse_observation

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
T = TypeVar("T")
R = TypeVar("R")


class ServerError(RuntimeError):
    """The server refused a request (4xx) or kept failing after the retries."""

    def __init__(self, message: str, status: int | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


@dataclass(frozen=True)
class ServedModel:
    """The model a server serves: the name requests use, and the path it was loaded from."""

    id: str
    root: str


def error_of(response: httpx.Response) -> ServerError:
    """The server's own words for a failed response (OpenAI error object, or vLLM's flat form)."""
    try:
        body = response.json()
    except ValueError:
        return ServerError(f"HTTP {response.status_code}: {response.text[:300]}", response.status_code)
    error = body.get("error", body) if isinstance(body, dict) else {}
    if not isinstance(error, dict):
        error = {"message": str(error)}
    message = str(error.get("message") or body)
    return ServerError(f"HTTP {response.status_code}: {message}", response.status_code, error.get("param"))


class ObserveClient:
    """Observed completions against `url` (e.g. http://127.0.0.1:8000)."""

    def __init__(self, url: str, *, api_key: str | None = None, concurrency: int = 4, retries: int = 4,
                 timeout_s: float = 300.0, backoff_s: float = 0.5,
                 transport: httpx.BaseTransport | None = None) -> None:
        if concurrency < 1 or retries < 0:
            raise ValueError("concurrency must be >= 1 and retries >= 0")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s,
                                 limits=httpx.Limits(max_connections=concurrency), transport=transport)
        self.concurrency = concurrency
        self.retries = retries
        self.backoff_s = backoff_s
        self._model: ServedModel | None = None

    def __enter__(self) -> ObserveClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call with retries; returns only a 2xx response."""
        for attempt in range(self.retries + 1):
            last_try = attempt == self.retries
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if last_try:
                    raise ServerError(f"{self.http.base_url}{path}: {type(exc).__name__}: {exc}") from exc
            else:
                if response.is_success:
                    return response
                if response.status_code not in RETRY_STATUSES or last_try:
                    raise error_of(response)
            time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def served_model(self) -> ServedModel:
        """The first model of /v1/models (steer-serve serves one)."""
        if self._model is None:
            entry = self.request("GET", "/v1/models").json()["data"][0]
            self._model = ServedModel(id=entry["id"], root=entry.get("root") or entry["id"])
        return self._model

    def complete(self, prompt: list[int], observe: dict[str, Any], max_tokens: int = 1,
                 **fields: Any) -> tuple[dict[str, Any], Observation]:
        """A greedy completion of `prompt` (token ids) with `observe`; the body and its observation."""
        body = {"model": self.served_model().id, "prompt": prompt, "max_tokens": max_tokens,
                "temperature": 0.0, "observe": observe, **fields}
        for attempt in range(self.retries + 1):
            answer = self.request("POST", "/v1/completions", json=body).json()
            try:
                return answer, parse_observation(answer)
            except ObservationUnavailable:
                if attempt == self.retries:
                    raise
            time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def map(self, call: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """`call` on every item, at most `concurrency` at a time, results in input order."""
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(call, items))
