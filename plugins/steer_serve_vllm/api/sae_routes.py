"""HTTP routes of the SAE library: list, read, upload (admin), delete (admin).

An upload is SAELens's pair (`cfg` = cfg.json, `weights` = sae_weights.safetensors) or Gemma
Scope's `params` (params.npz) with a `layer` field, plus the library `name`. The whole body
passes the gateway's body limit (`STEER_SERVE_MAX_BODY_BYTES`); larger SAEs go into --sae-dir.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from steer_serve.library.named_store import NameTaken
from steer_serve.library.sae_formats import SAEFormatError, read_gemma_scope, read_saelens
from steer_serve.library.sparse_autoencoder import SparseAutoencoder
from steer_serve_vllm.api.admin_auth import admin_refusal, error_response

logger = logging.getLogger(f"vllm.{__name__}")

router = APIRouter(tags=["steering SAEs"])


def _saes(request: Request) -> Any:
    return request.app.state.steer_serve.saes


def _bad(message: str, param: str | None = None) -> JSONResponse:
    return error_response(400, message, "BadRequestError", param)


@router.get("/v1/steering/saes")
async def list_saes(request: Request) -> dict[str, Any]:
    """Every usable SAE (layer, d_in, d_sae, architecture) and the files left out, with why."""
    library = _saes(request)
    return {"object": "list", "data": [entry.describe() for entry in library.entries()],
            "unusable": library.rejected}


@router.get("/v1/steering/saes/{name}")
async def get_sae(name: str, request: Request) -> Any:
    try:
        return _saes(request).get(name).describe()
    except KeyError as exc:
        return error_response(404, exc.args[0], "NotFoundError", "name")


@router.post("/v1/steering/saes")
async def register_sae(request: Request) -> Any:
    """multipart/form-data: `name`, and `cfg` + `weights` (SAELens) or `params` + `layer` (Gemma Scope)."""
    refusal = admin_refusal(request)
    if refusal is not None:
        return refusal
    replace = request.query_params.get("replace", "false").lower() in ("true", "1")
    try:
        form = await request.form(max_files=2, max_fields=4)
    except Exception as exc:  # starlette raises HTTPException/MultiPartException on malformed bodies
        return _bad(f"expected multipart/form-data: {getattr(exc, 'detail', exc)}")
    try:
        name = form.get("name")
        if not isinstance(name, str) or not name:
            return _bad("missing `name`: the library name of the SAE", "name")
        sae = await _read_upload(form)
    except SAEFormatError as exc:
        return _bad(f"SAE not registered: {exc}", _param_of(str(exc)))
    finally:
        await form.close()
    if isinstance(sae, JSONResponse):
        return sae
    try:
        entry = await asyncio.to_thread(_saes(request).register, name, sae, replace)
    except NameTaken as exc:
        return error_response(409, str(exc), "ConflictError", "name")
    except ValueError as exc:  # bad name, SAE for another model
        return _bad(f"SAE not registered: {exc}", "name" if "name" in str(exc).split(":")[0] else "cfg")
    return JSONResponse(entry.describe(), status_code=201)


async def _read_upload(form: Any) -> SparseAutoencoder | JSONResponse:
    cfg, weights, params = (form.get(part) for part in ("cfg", "weights", "params"))
    if isinstance(params, UploadFile):
        layer = form.get("layer")
        if not (isinstance(layer, str) and layer.isascii() and layer.isdigit() and len(layer) <= 4):
            return _bad("a Gemma Scope `params` upload needs `layer`, the decoder layer it reads", "layer")
        return read_gemma_scope(await params.read(), int(layer))
    if isinstance(cfg, UploadFile) and isinstance(weights, UploadFile):
        return read_saelens(await cfg.read(), await weights.read())
    return _bad("send `cfg` (cfg.json) and `weights` (sae_weights.safetensors), or `params` (params.npz) and `layer`",
                "weights")


def _param_of(message: str) -> str:
    if message.startswith(("cfg.json", "hook_name", "layer", "architecture", "normalize", "k ")):
        return "cfg"
    return "params" if "npz" in message else "weights"


@router.delete("/v1/steering/saes/{name}")
async def delete_sae(name: str, request: Request) -> Any:
    refusal = admin_refusal(request)
    if refusal is not None:
        return refusal
    try:
        removed = await asyncio.to_thread(_saes(request).delete, name)
    except ValueError as exc:
        return _bad(str(exc), "name")
    if not removed:
        return error_response(404, f"unknown SAE {name!r}", "NotFoundError", "name")
    return {"object": "steering_sae.deleted", "name": name, "deleted": True, "files": removed}
