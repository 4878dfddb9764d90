"""Read and write steering vectors as safetensors or llama.cpp GGUF control vectors.

Both formats store one float32 tensor `direction.{L}` per layer L (the llama.cpp / repeng
convention). Neither format can execute code on load: we never unpickle anything.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from steer_serve.library.steering_vector import SteeringVector

SUFFIXES = (".safetensors", ".gguf")
_TENSOR_NAME = re.compile(r"direction\.([0-9]{1,18})")  # ASCII digits only; used with fullmatch
_GGUF_ARCH = "controlvector"
_METADATA_KEY = "steer_serve"


class VectorFormatError(ValueError):
    """The file is not a readable steering vector; the message says why."""


def read_vector(path: Path) -> SteeringVector:
    """Load a `.safetensors` or `.gguf` steering vector, chosen by suffix."""
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix == ".gguf":
        return read_gguf(path)
    raise VectorFormatError(f"{path.name}: unsupported suffix (use {' or '.join(SUFFIXES)})")


def write_vector(vector: SteeringVector, path: Path) -> list[str]:
    """Write by suffix; returns warnings (GGUF with `direction.0`, which llama.cpp refuses)."""
    if path.suffix == ".safetensors":
        write_safetensors(vector, path)
        return []
    elif path.suffix == ".gguf":
        return write_gguf(vector, path)
    else:
        raise VectorFormatError(f"{path.name}: unsupported suffix (use {' or '.join(SUFFIXES)})")


def _directions_from_tensors(tensors: dict[str, np.ndarray], source: str) -> dict[int, np.ndarray]:
    directions: dict[int, np.ndarray] = {}
    for name, value in tensors.items():
        match = _TENSOR_NAME.fullmatch(name)
        if match is None:
            raise VectorFormatError(f"{source}: unexpected tensor {name!r} (want direction.<layer>)")
        array = np.asarray(value, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(array)):
            raise VectorFormatError(f"{source}: tensor {name} contains NaN or Inf")
        directions[int(match.group(1))] = array
    if not directions:
        raise VectorFormatError(f"{source}: no direction.<layer> tensors")
    return directions


def read_safetensors(path: Path) -> SteeringVector:
    from safetensors import safe_open

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="numpy") as handle:
            metadata = _parse_metadata(handle.metadata() or {})
    except Exception as exc:  # safetensors raises several error types for malformed files
        raise VectorFormatError(f"{path.name}: not a valid safetensors file ({exc})") from exc
    return _build(_directions_from_tensors(tensors, path.name), metadata, path.name)


def write_safetensors(vector: SteeringVector, path: Path) -> None:
    """Metadata goes into one JSON-valued header key: safetensors writes several keys in random
    order, and a library file should be byte-for-byte reproducible."""
    tensors = {f"direction.{layer}": vector.directions[layer].astype(np.float32) for layer in vector.layers}
    metadata = json.dumps({k: str(v) for k, v in vector.metadata.items()}, sort_keys=True)
    save_file(tensors, str(path), metadata={_METADATA_KEY: metadata})


def _parse_metadata(header: dict[str, str]) -> dict[str, str]:
    """Our own files keep metadata as JSON under one key; other tools' files use flat keys."""
    if _METADATA_KEY not in header:
        return dict(header)
    parsed = json.loads(header[_METADATA_KEY])
    if not isinstance(parsed, dict):
        raise ValueError(f"{_METADATA_KEY} metadata is not a JSON object")
    return {str(k): str(v) for k, v in parsed.items()}


def read_gguf(path: Path) -> SteeringVector:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        tensors = {t.name: np.array(t.data) for t in reader.tensors}
        arch_field = reader.get_field("general.architecture")
        arch = arch_field.contents() if arch_field is not None else None
        hint_field = reader.get_field(f"{_GGUF_ARCH}.model_hint")
        hint = hint_field.contents() if hint_field is not None else None
        ours = reader.get_field(f"{_METADATA_KEY}.metadata")
        metadata = _parse_metadata({_METADATA_KEY: ours.contents()} if ours is not None else {})
    except Exception as exc:  # GGUFReader raises ValueError/IndexError/... on corrupt files
        raise VectorFormatError(f"{path.name}: not a valid GGUF file ({exc})") from exc
    if arch != _GGUF_ARCH:
        raise VectorFormatError(f"{path.name}: general.architecture is {arch!r}, not {_GGUF_ARCH!r}")
    metadata = ({"model_hint": str(hint)} if hint else {}) | metadata
    return _build(_directions_from_tensors(tensors, path.name), metadata, path.name)


def write_gguf(vector: SteeringVector, path: Path) -> list[str]:
    """Write a llama.cpp control vector; returns warnings (llama.cpp refuses `direction.0`)."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), _GGUF_ARCH)
    writer.add_string(f"{_GGUF_ARCH}.model_hint", vector.metadata.get("model_hint", vector.metadata.get("model", "")))
    writer.add_uint32(f"{_GGUF_ARCH}.layer_count", len(vector.layers))
    writer.add_string(f"{_METADATA_KEY}.metadata", json.dumps(vector.metadata, sort_keys=True))
    for layer in vector.layers:
        writer.add_tensor(f"direction.{layer}", vector.directions[layer].astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if 0 in vector.directions:
        return [f"{path.name}: contains direction.0; llama.cpp refuses layer 0 (steer-serve accepts it)"]
    return []


def _build(directions: dict[int, np.ndarray], metadata: dict[str, str], source: str) -> SteeringVector:
    try:
        return SteeringVector(directions=directions, metadata=metadata)
    except ValueError as exc:
        raise VectorFormatError(f"{source}: {exc}") from exc


# ---- bytes in, bytes out (uploads and exports of the runtime library) --------------------------
GGUF_MAGIC = b"GGUF"


def sniff_suffix(data: bytes) -> str:
    """`.gguf` or `.safetensors` from the first bytes (a client's file name is not trusted)."""
    if data[:4] == GGUF_MAGIC:
        return ".gguf"
    if len(data) >= 9 and data[8:9] == b"{":  # safetensors: u64 header length, then a JSON object
        return ".safetensors"
    raise VectorFormatError("neither a safetensors file nor a GGUF control vector (unrecognised first bytes)")


def read_vector_bytes(data: bytes) -> SteeringVector:
    """Parse an uploaded vector (format sniffed). Any failure is a VectorFormatError, never a crash."""
    import tempfile

    suffix = sniff_suffix(data)
    with tempfile.TemporaryDirectory(prefix="steer-serve-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            vector = read_vector(path)
        except VectorFormatError:
            raise
        except Exception as exc:  # a reader bug on hostile input must still be a clear 400
            raise VectorFormatError(f"{path.name}: cannot read ({type(exc).__name__}: {exc})") from exc
    # own copies: nothing may keep pointing into the (deleted) temp file
    return SteeringVector({k: np.array(v, dtype=np.float32, copy=True) for k, v in vector.directions.items()},
                          dict(vector.metadata))


def vector_bytes(vector: SteeringVector, suffix: str) -> tuple[bytes, list[str]]:
    """The file contents of `vector` as `.safetensors` or `.gguf`, and the writer's warnings."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="steer-serve-export-") as tmp:
        path = Path(tmp) / f"vector{suffix}"
        warnings = write_vector(vector, path) or []
        return path.read_bytes(), warnings
