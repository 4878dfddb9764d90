"""The vector library: a directory of named steering vectors, changeable at runtime.

A vector's name is its file stem (`NAME.safetensors` or `NAME.gguf`); an optional JSON sidecar
`NAME.json` next to it holds its record (model id, hidden size, layers, method, source data,
created, content hash). Files that cannot be used with the served model (bad file, wrong hidden
size, layers beyond the model, duplicate names) are kept out of the library, and the reason is
remembered so a request naming them gets a precise error.

Runtime changes (`register`, `delete`) write to disk atomically (temp file + rename) and then
re-read the directory, so memory always matches disk and changes survive a restart. Readers see
an immutable snapshot that writers swap in whole (copy-on-write), under one lock for writers.
Other API-server processes notice the change on their next lookup: at most once per `poll_s`
each process compares the directory's (name, mtime, size) list with the one it loaded from.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from steer_serve.files import atomic_write, remove
from steer_serve.library.library_files import Signature, check_name
from steer_serve.model_shape import ModelShape
from steer_serve.library.named_store import NamedFileStore, NameTaken, Snapshot
from steer_serve.library.steering_vector import SteeringVector
from steer_serve.library.vector_formats import SUFFIXES, VectorFormatError, read_vector, read_vector_bytes, vector_bytes

logger = logging.getLogger(__name__)

SIDECAR = ".json"
STORED_SUFFIX = ".safetensors"  # what runtime registration writes (GGUF uploads are converted)
MAX_METADATA_KEYS = 64
MAX_METADATA_VALUE = 4096
RECORD_FIELDS = ("model_id", "hidden_size", "layers", "method", "source_data", "created", "content_sha256",
                 "description")


@dataclass(frozen=True)
class LibraryEntry:
    name: str
    vector: SteeringVector
    path: Path
    file_sha256: str
    record: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        norms = {str(layer): float(np.linalg.norm(self.vector.directions[layer])) for layer in self.vector.layers}
        return {
            "name": self.name,
            "object": "steering_vector",
            "layers": self.vector.layers,
            "dim": self.vector.dim,
            "norm": norms,
            "sha256": self.file_sha256,
            "format": self.path.suffix.lstrip("."),
            "metadata": dict(self.vector.metadata),
            **{key: self.record.get(key) for key in RECORD_FIELDS},
        }


def check_fits(vector: SteeringVector, shape: ModelShape) -> None:
    """Raise ValueError if the vector cannot steer a model of this shape."""
    if vector.dim != shape.hidden_size:
        raise ValueError(f"hidden size {vector.dim} does not match the model's {shape.hidden_size}")
    outside = [layer for layer in vector.layers if not 0 <= layer < shape.num_layers]
    if outside:
        raise ValueError(f"layers {outside} are outside the model's 0..{shape.num_layers - 1}")


def clean_metadata(raw: Any) -> dict[str, str]:
    """User metadata for a registration: a flat JSON object of strings/numbers/booleans, bounded."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError("metadata must be a JSON object")
    if len(raw) > MAX_METADATA_KEYS:
        raise ValueError(f"metadata has {len(raw)} keys; at most {MAX_METADATA_KEYS}")
    cleaned: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not 0 < len(key) <= 128:
            raise ValueError(f"metadata key {key!r} must be a string of 1-128 characters")
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (int, float)):
            value = str(value)
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
            raise ValueError(f"metadata[{key!r}] must be a string, number or boolean of at most {MAX_METADATA_VALUE} characters")
        cleaned[key] = value
    return cleaned


def make_record(vector: SteeringVector, sidecar: dict[str, Any] | None = None) -> dict[str, Any]:
    """The standard record of a vector: from its sidecar when that describes these numbers,
    otherwise from the file's own metadata (e.g. `steer-serve extract` writes model/method/dataset)."""
    meta = vector.metadata
    record: dict[str, Any] = {
        "model_id": meta.get("model") or meta.get("model_id") or meta.get("model_hint") or None,
        "hidden_size": vector.dim,
        "layers": vector.layers,
        "method": meta.get("method"),
        "source_data": meta.get("source_data") or meta.get("dataset") or meta.get("source"),
        "created": meta.get("created"),
        "content_sha256": vector.content_sha256(),
        "description": meta.get("description"),
    }
    if sidecar and sidecar.get("content_sha256") == record["content_sha256"]:
        for key in ("model_id", "method", "source_data", "created", "description"):
            if sidecar.get(key) is not None:
                record[key] = sidecar[key]
    return record


class VectorLibrary(NamedFileStore[LibraryEntry]):
    kind = "vector"
    suffixes = SUFFIXES
    watched_suffixes = (SIDECAR,)

    def __init__(self, directory: Path, shape: ModelShape, *, poll_s: float = 1.0,
                 on_change: Callable[[int], None] | None = None) -> None:
        self.shape = shape
        self._on_change = on_change
        super().__init__(directory, poll_s)
        snapshot = self._snapshot
        logger.info("vector library %s: %d loaded, %d rejected", directory, len(snapshot.items), len(snapshot.rejected))

    @classmethod
    def load_dir(cls, directory: Path, shape: ModelShape, **kwargs: Any) -> VectorLibrary:
        return cls(directory, shape, **kwargs)

    def describe(self) -> list[dict[str, object]]:
        self.refresh()
        entries = self._snapshot.items
        return [entries[name].describe() for name in sorted(entries)]

    # ---- writing -------------------------------------------------------------------------
    def register(self, name: str, data: bytes, *, metadata: Any = None, replace: bool = False) -> LibraryEntry:
        """Validate an uploaded file (safetensors or GGUF) against the model and store it as
        NAME.safetensors + NAME.json. ValueError (VectorFormatError included): unusable; NameTaken."""
        check_name(name, "vector name")
        user = clean_metadata(metadata)
        uploaded = read_vector_bytes(data)
        vector = SteeringVector(uploaded.directions, {**uploaded.metadata, **user})
        try:
            check_fits(vector, self.shape)
        except ValueError as exc:
            raise ValueError(f"vector does not fit the served model {self.shape.model_id}: {exc}") from None
        record = make_record(vector)
        record["model_id"] = record["model_id"] or self.shape.model_id
        record["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        sidecar = {"name": name, **record, "registered_for": self.shape.model_id}
        contents, _ = vector_bytes(vector, STORED_SUFFIX)
        with self._lock:
            self._reload()  # decide on the current disk state, not a stale snapshot
            if not replace and self._exists(name):
                raise NameTaken(f"vector {name!r} already exists; delete it first or register with replace=true")
            # sidecar first: a reader in between sees the old vector (its sidecar is ignored by
            # content hash) or nothing, never a new vector without its record
            atomic_write(self.directory / f"{name}{SIDECAR}", json.dumps(sidecar, indent=2, sort_keys=True).encode())
            atomic_write(self.directory / f"{name}{STORED_SUFFIX}", contents)
            for suffix in SUFFIXES:
                if suffix != STORED_SUFFIX:
                    remove(self.directory / f"{name}{suffix}")
            self._reload()
            entry = self._snapshot.items.get(name)
        if entry is None:  # only if the directory changed under us in between
            raise ValueError(f"vector {name!r} was written but is not usable: {self._snapshot.rejected.get(name)}")
        logger.info("vector library: registered %s (layers %s, sha256 %s)", name, vector.layers, entry.file_sha256)
        return entry

    def delete(self, name: str) -> list[str]:
        """Remove the vector's files (and sidecar); returns the removed file names. KeyError if none."""
        check_name(name, "vector name")
        with self._lock:
            removed = [f"{name}{suffix}" for suffix in SUFFIXES if remove(self.directory / f"{name}{suffix}")]
            if not removed:
                raise KeyError(f"unknown vector {name!r}")
            if remove(self.directory / f"{name}{SIDECAR}"):
                removed.append(f"{name}{SIDECAR}")
            self._reload()
        logger.info("vector library: deleted %s (%s)", name, ", ".join(removed))
        return removed

    def export(self, name: str, suffix: str) -> tuple[bytes, list[str]]:
        """The vector as `.safetensors` or `.gguf` bytes, with warnings (GGUF and layer 0)."""
        return vector_bytes(self.get(name).vector, suffix)

    # ---- loading (under the lock) ----------------------------------------------------------
    def _cache_key(self, name: str, file_name: str, signature: Signature) -> tuple[Any, ...]:
        return (file_name, signature[file_name], signature.get(f"{name}{SIDECAR}"))

    def _load(self, name: str, path: Path) -> LibraryEntry | str:
        try:
            check_name(name, "name")
            vector = read_vector(path)
            check_fits(vector, self.shape)
            file_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        except (VectorFormatError, ValueError, OSError) as exc:
            return f"{path.name}: {exc}"
        sidecar = _read_sidecar(self.directory / f"{name}{SIDECAR}")
        return LibraryEntry(name, vector, path, file_sha256, make_record(vector, sidecar))

    def _reloaded(self, previous: Snapshot[LibraryEntry]) -> None:
        entries = self._snapshot.items
        if self._on_change is not None:
            self._on_change(len(entries))
        if set(entries) != set(previous.items):
            logger.info("vector library %s: %s", self.directory, ", ".join(sorted(entries)) or "empty")


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        parsed = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring sidecar %s: %s", path, exc)
        return None
    return parsed if isinstance(parsed, dict) else None
