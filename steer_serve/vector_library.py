"""The vector library: a directory of named steering vectors, loaded at start.

A vector's name is its file stem. Files that cannot be used with the served model (bad file,
wrong hidden size, layers beyond the model, duplicate names) are kept out of the library, and
the reason is remembered so a request naming them gets a precise error.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steer_serve.model_shape import ModelShape
from steer_serve.steering_vector import SteeringVector
from steer_serve.vector_formats import SUFFIXES, VectorFormatError, read_vector

logger = logging.getLogger(__name__)

VECTOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class LibraryEntry:
    name: str
    vector: SteeringVector
    path: Path
    file_sha256: str

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
        }


def check_fits(vector: SteeringVector, shape: ModelShape) -> None:
    """Raise ValueError if the vector cannot steer a model of this shape."""
    if vector.dim != shape.hidden_size:
        raise ValueError(f"hidden size {vector.dim} does not match the model's {shape.hidden_size}")
    outside = [layer for layer in vector.layers if not 0 <= layer < shape.num_layers]
    if outside:
        raise ValueError(f"layers {outside} are outside the model's 0..{shape.num_layers - 1}")


class VectorLibrary:
    def __init__(self, entries: dict[str, LibraryEntry], rejected: dict[str, str]) -> None:
        self._entries = entries
        self.rejected = rejected

    @classmethod
    def load_dir(cls, directory: Path, shape: ModelShape) -> VectorLibrary:
        entries: dict[str, LibraryEntry] = {}
        rejected: dict[str, str] = {}
        files = sorted(p for p in directory.glob("*") if p.suffix in SUFFIXES) if directory.is_dir() else []
        for path in files:
            name = path.stem
            try:
                entries[name] = _load_entry(path, shape, duplicate=name in entries or name in rejected)
            except (VectorFormatError, ValueError) as exc:
                entries.pop(name, None)
                rejected[name] = f"{path.name}: {exc}"
                logger.warning("vector %s not loaded: %s", name, rejected[name])
        logger.info("vector library %s: %d loaded, %d rejected", directory, len(entries), len(rejected))
        return cls(entries, rejected)

    def get(self, name: str) -> LibraryEntry:
        """Return the entry; KeyError with a message that says why the name is unusable."""
        if name in self._entries:
            return self._entries[name]
        if name in self.rejected:
            raise KeyError(f"vector {name!r} is in the library but unusable: {self.rejected[name]}")
        known = ", ".join(sorted(self._entries)) or "none"
        raise KeyError(f"unknown vector {name!r} (available: {known})")

    def describe(self) -> list[dict[str, object]]:
        return [self._entries[name].describe() for name in sorted(self._entries)]


def _load_entry(path: Path, shape: ModelShape, duplicate: bool) -> LibraryEntry:
    if not VECTOR_NAME.match(path.stem):
        raise ValueError(f"name {path.stem!r} is not allowed (letters, digits, '.', '_', '-')")
    if duplicate:
        raise ValueError("another file has the same name (one vector per name)")
    vector = read_vector(path)
    check_fits(vector, shape)
    return LibraryEntry(path.stem, vector, path, hashlib.sha256(path.read_bytes()).hexdigest())
