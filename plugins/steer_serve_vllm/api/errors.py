"""The OpenAI-shaped error every steer-serve answer uses (gateway rejections and admin routes):
`{"error": {"message", "type", "param", "code"}}`, as vLLM's own errors and the openai client expect."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


def error_body(status: int, message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def error_response(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, kind, param), status_code=status)
