"""HTTP routes of the runtime vector library and the presets.

Reading is open; creating and deleting needs the admin key (`admin_auth`). Changes are written
to disk (atomic temp file + rename) and apply to the next request, in this process at once and
in other API-server processes within `library_poll_s`. A request already admitted keeps the
vectors it was resolved with: resolution copies them into its payload before vLLM sees it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from steer_serve.library.named_store import NameTaken
from steer_serve_vllm.api.admin_auth import admin_refusal
from steer_serve_vllm.api.errors import error_response

logger = logging.getLogger(f"vllm.{__name__}")

router = APIRouter(tags=["steering library"])
EXPORT_FORMATS = {"safetensors": ".safetensors", "gguf": ".gguf"}
WARNING_HEADER = "x-steer-serve-warning"


def _service(request: Request) -> Any:
    return request.app.state.steer_serve


def _bad(message: str, param: str | None = None) -> JSONResponse:
    return error_response(400, message, "BadRequestError", param)


def _not_found(message: str, param: str = "name") -> JSONResponse:
    return error_response(404, message, "NotFoundError", param)


def _admin_replace_flag(request: Request) -> bool | JSONResponse:
    """For admin writes: the admin-key refusal, else `?replace=` as a bool (or its 400)."""
    refusal = admin_refusal(request)
    if refusal is not None:
        return refusal
    value = request.query_params.get("replace", "false").lower()
    if value not in ("true", "false", "1", "0"):
        return _bad(f"replace must be true or false, got {value!r}", "replace")
    return value in ("true", "1")


async def _admin_delete(request: Request, delete: Callable[[str], list[str]], name: str) -> list[str] | JSONResponse:
    """An admin delete off the event loop: unknown name -> 404, malformed name -> 400."""
    refusal = admin_refusal(request)
    if refusal is not None:
        return refusal
    try:
        return await asyncio.to_thread(delete, name)
    except KeyError as exc:
        return _not_found(exc.args[0])
    except ValueError as exc:
        return _bad(str(exc), "name")


# ---- vectors --------------------------------------------------------------------------------
@router.get("/v1/steering/vectors")
async def list_vectors(request: Request) -> dict[str, Any]:
    """The vector library: name, layers, dim, per-layer norm, file sha256, metadata and record."""
    return {"object": "list", "data": _service(request).library.describe()}


@router.get("/v1/steering/vectors/{name}")
async def get_vector(name: str, request: Request) -> Any:
    try:
        return _service(request).library.get(name).describe()
    except KeyError as exc:
        return _not_found(exc.args[0])


@router.get("/v1/steering/vectors/{name}/export")
async def export_vector(name: str, request: Request, format: str = "safetensors") -> Any:
    """The vector as a file; GGUF with layer 0 is written, with a warning header (llama.cpp refuses it)."""
    suffix = EXPORT_FORMATS.get(format)
    if suffix is None:
        return _bad(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}", "format")
    library = _service(request).library
    try:
        library.get(name)
    except KeyError as exc:
        return _not_found(exc.args[0])
    data, warnings = await asyncio.to_thread(library.export, name, suffix)
    headers = {"content-disposition": f'attachment; filename="{name}{suffix}"'}
    if warnings:
        headers[WARNING_HEADER] = "; ".join(warnings)
    return Response(data, media_type="application/octet-stream", headers=headers)


@router.post("/v1/steering/vectors")
async def register_vector(request: Request) -> Any:
    """multipart/form-data: `file` (.safetensors or .gguf), `name` (default: the file's stem),
    optional `metadata` (a JSON object); `?replace=true` swaps an existing vector of that name."""
    replace = _admin_replace_flag(request)
    if isinstance(replace, JSONResponse):
        return replace
    service = _service(request)
    limit = service.settings.max_vector_bytes
    try:
        form = await request.form(max_files=1, max_fields=8)
    except Exception as exc:  # starlette raises HTTPException/MultiPartException on malformed bodies
        return _bad(f"expected multipart/form-data with a `file` part: {getattr(exc, 'detail', exc)}")
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return _bad("missing `file`: send the vector as a multipart file part named `file`", "file")
        data = await upload.read(limit + 1)
        if len(data) > limit:
            return error_response(413, f"vector file exceeds {limit} bytes", "BadRequestError", "file")
        name = form.get("name")
        if name is None:
            # The file name is only a default for `name`, never a path: one that carries a
            # directory (POSIX or Windows) is refused rather than silently cut to its last part.
            filename = upload.filename or ""
            if "/" in filename or "\\" in filename:
                return _bad(f"file name {filename!r} contains a directory; send a plain file name or `name`", "file")
            name = filename.rsplit(".", 1)[0]
        if not isinstance(name, str) or not name:
            return _bad("missing `name`: the library name of the vector", "name")
        metadata = form.get("metadata")
        if metadata is not None:
            if not isinstance(metadata, str):
                return _bad("`metadata` must be a JSON object in a text field", "metadata")
            try:
                metadata = json.loads(metadata)
            except ValueError as exc:
                return _bad(f"`metadata` is not valid JSON: {exc}", "metadata")
    finally:
        await form.close()
    try:
        entry = await asyncio.to_thread(service.library.register, name, data, metadata=metadata, replace=replace)
    except NameTaken as exc:
        return error_response(409, str(exc), "ConflictError", "name")
    except ValueError as exc:  # VectorFormatError, misfit, bad name, bad metadata
        return _bad(f"vector not registered: {exc}", _param_of(str(exc)))
    except Exception as exc:  # hostile input must never be a 500
        logger.exception("vector upload %r failed", name)
        return _bad(f"vector not registered: cannot read the file ({type(exc).__name__})", "file")
    described = entry.describe()
    warnings = []
    if 0 in entry.vector.directions:
        warnings.append("layer 0 (direction.0) is served, but llama.cpp refuses it in a GGUF control vector")
    return JSONResponse({**described, "warnings": warnings}, status_code=201)


def _param_of(message: str) -> str:
    if "name" in message.split(":", 1)[0]:
        return "name"
    return "metadata" if message.startswith("metadata") else "file"


@router.delete("/v1/steering/vectors/{name}")
async def delete_vector(name: str, request: Request) -> Any:
    """Remove a vector; requests already admitted keep their copy. Presets naming it stop resolving."""
    removed = await _admin_delete(request, lambda n: _service(request).library.delete(n), name)
    if isinstance(removed, JSONResponse):
        return removed
    service = _service(request)
    affected = [p["name"] for p in service.presets.describe()
                if any(i.get("vector") == name for i in p.get("interventions", []))]
    return {"object": "steering_vector.deleted", "name": name, "deleted": True, "files": removed,
            "presets_affected": affected}


# ---- presets --------------------------------------------------------------------------------
@router.get("/v1/steering/presets")
async def list_presets(request: Request) -> dict[str, Any]:
    """Every preset with its interventions, and whether it resolves against the served model now."""
    return {"object": "list", "data": _service(request).presets.describe()}


@router.get("/v1/steering/presets/{name}")
async def get_preset(name: str, request: Request) -> Any:
    presets = _service(request).presets
    try:
        preset = presets.get(name)
    except KeyError as exc:
        return _not_found(exc.args[0])
    problem = presets.problem(preset)
    return {**preset.describe(), "usable": problem is None, "error": problem}


@router.post("/v1/steering/presets")
async def create_preset(request: Request) -> Any:
    """JSON body `{"name", "description"?, "interventions": [...]}`; `?replace=true` swaps one."""
    replace = _admin_replace_flag(request)
    if isinstance(replace, JSONResponse):
        return replace
    try:
        body = await request.json()
    except ValueError as exc:
        return _bad(f"body is not JSON: {exc}")
    if not isinstance(body, dict):
        return _bad("body must be a JSON object with `name` and `interventions`")
    presets = _service(request).presets
    try:
        preset = await asyncio.to_thread(presets.register, body, replace=replace)
    except NameTaken as exc:
        return error_response(409, str(exc), "ConflictError", "name")
    except ValueError as exc:
        return _bad(f"preset not created: {exc}", "interventions")
    return JSONResponse({**preset.describe(), "usable": True, "error": None}, status_code=201)


@router.delete("/v1/steering/presets/{name}")
async def delete_preset(name: str, request: Request) -> Any:
    removed = await _admin_delete(request, lambda n: _service(request).presets.delete(n), name)
    if isinstance(removed, JSONResponse):
        return removed
    return {"object": "steering_preset.deleted", "name": name, "deleted": True, "files": removed}
