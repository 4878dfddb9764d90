"""Reading sparse autoencoders from SAELens's and Gemma Scope's files, and writing SAELens's.

- SAELens: `cfg.json` (architecture, d_in, d_sae, apply_b_dec_to_input, normalize_activations,
  k, the hook name at the top level or under `metadata`) + `sae_weights.safetensors` (W_enc
  [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold for jumprelu).
- Gemma Scope: one `params.npz` with the same five arrays; always JumpReLU, b_dec is not
  subtracted from the input; the layer comes from outside the file.
Nothing is unpickled (`np.load(allow_pickle=False)`); every problem is a SAEFormatError whose
message names the field.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from steer_serve.library.sparse_autoencoder import SparseAutoencoder, check_sae

WEIGHT_NAMES = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
_RESID_POST = re.compile(r"blocks\.(\d{1,4})\.hook_resid_post")
_RESID_PRE = re.compile(r"blocks\.(\d{1,4})\.hook_resid_pre")
_HF_LAYER = re.compile(r"(?:model\.)?layers\.(\d{1,4})")


class SAEFormatError(ValueError):
    """An SAE file that cannot be used; the message names the field."""


def layer_of_hook(hook_name: str) -> int:
    """The decoder layer whose output a hook point reads (resid_post L = resid_pre L+1)."""
    if match := _RESID_POST.fullmatch(hook_name):
        return int(match.group(1))
    match = _RESID_PRE.fullmatch(hook_name)
    if match and int(match.group(1)) >= 1:
        return int(match.group(1)) - 1
    if match := _HF_LAYER.fullmatch(hook_name):
        return int(match.group(1))
    raise SAEFormatError(
        f"hook_name {hook_name!r} is not the residual stream after a decoder layer "
        "(use blocks.L.hook_resid_post, blocks.L+1.hook_resid_pre or model.layers.L)")


def read_saelens(cfg_bytes: bytes, weights_bytes: bytes, layer: int | None = None) -> SparseAutoencoder:
    """An SAE from SAELens's `cfg.json` and `sae_weights.safetensors` bytes."""
    cfg = _parse_cfg(cfg_bytes)
    weights = _read_safetensors(weights_bytes)
    hook_layer = _hook_layer(cfg)
    if layer is None:
        if hook_layer is None:
            raise SAEFormatError("cfg.json names no hook_name; give the layer explicitly")
        layer = hook_layer
    elif hook_layer is not None and hook_layer != layer:
        raise SAEFormatError(f"layer {layer} was given but cfg.json's hook_name reads layer {hook_layer}")
    sae = _build(cfg, weights, layer)
    for name, value in (("d_in", sae.d_in), ("d_sae", sae.d_sae)):
        if name in cfg and cfg[name] != value:
            raise SAEFormatError(f"cfg.json says {name} = {cfg[name]!r} but the weights have {value}")
    return sae


def read_gemma_scope(npz_bytes: bytes, layer: int) -> SparseAutoencoder:
    """An SAE from Gemma Scope's `params.npz` (JumpReLU, no b_dec on the input)."""
    try:
        with np.load(io.BytesIO(npz_bytes), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise SAEFormatError(f"params: not a valid .npz file ({exc})") from None
    weights = {name: _float32(name, value) for name, value in arrays.items() if name in WEIGHT_NAMES}
    cfg = {"architecture": "jumprelu", "apply_b_dec_to_input": False, "normalize_activations": "none"}
    return _build(cfg, weights, layer)


def write_saelens(sae: SparseAutoencoder, hook_name: str | None = None) -> tuple[bytes, bytes]:
    """(cfg.json bytes, sae_weights.safetensors bytes) in SAELens's layout."""
    cfg: dict[str, Any] = {
        "architecture": sae.architecture, "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": "float32",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input, "normalize_activations": sae.normalize_activations,
        "metadata": {"hook_name": hook_name or f"blocks.{sae.layer}.hook_resid_post", **sae.metadata},
    }
    if sae.k is not None:
        cfg["k"] = sae.k
    # C order: safetensors.numpy.save writes an array's buffer as is, whatever its strides
    tensors = {name: np.ascontiguousarray(getattr(sae, name), dtype=np.float32)
               for name in WEIGHT_NAMES if getattr(sae, name) is not None}
    return json.dumps(cfg, indent=2).encode(), save_safetensors(tensors)


# ---- helpers ------------------------------------------------------------------------------
def _parse_cfg(data: bytes) -> dict[str, Any]:
    try:
        cfg = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SAEFormatError(f"cfg.json is not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise SAEFormatError("cfg.json must be a JSON object")
    return cfg


def _hook_layer(cfg: dict[str, Any]) -> int | None:
    for holder in (cfg, cfg.get("metadata"), cfg.get("meta")):
        if isinstance(holder, dict) and isinstance(holder.get("hook_name"), str):
            return layer_of_hook(holder["hook_name"])
    return None


def _read_safetensors(data: bytes) -> dict[str, np.ndarray]:
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise SAEFormatError(f"weights: not a valid safetensors file ({exc})") from None
    except (TypeError, KeyError) as exc:  # a dtype numpy lacks (bfloat16): the API process stays free of torch
        raise SAEFormatError(f"weights: unsupported dtype ({exc}); save the SAE in float32 or float16") from None
    return {name: _float32(name, tensor) for name, tensor in tensors.items() if name in WEIGHT_NAMES}


def _float32(name: str, array: np.ndarray) -> np.ndarray:
    if array.dtype.kind != "f":
        raise SAEFormatError(f"{name} has dtype {array.dtype}; SAE weights must be floating point")
    return array.astype(np.float32)


def _build(cfg: dict[str, Any], weights: dict[str, np.ndarray], layer: int) -> SparseAutoencoder:
    missing = [name for name in WEIGHT_NAMES[:4] if name not in weights]
    if missing:
        raise SAEFormatError(f"weights lack {', '.join(missing)}")
    k = cfg.get("k")
    sae = SparseAutoencoder(
        layer=layer, architecture=cfg.get("architecture", "standard"),
        W_enc=weights["W_enc"], W_dec=weights["W_dec"], b_enc=weights["b_enc"], b_dec=weights["b_dec"],
        threshold=weights.get("threshold"), k=int(k) if isinstance(k, (int, float)) and k == int(k) else k,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        normalize_activations=cfg.get("normalize_activations", "none") or "none",
    )
    try:
        check_sae(sae)
    except ValueError as exc:
        raise SAEFormatError(str(exc)) from None
    return sae
