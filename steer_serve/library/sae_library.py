"""The SAE library: a directory of sparse autoencoders for the served model.

An SAE named NAME is SAELens's pair renamed: `NAME.safetensors` (the weights) + `NAME.json` (the
`cfg.json`), or Gemma Scope's `NAME.npz` + `NAME.json` holding at least the hook point
(`{"hook_name": "blocks.12.hook_resid_post"}` or `{"layer": 12}`). Like the vector library it
is re-read when another process changes the directory, writes are atomic, and an SAE that does
not fit the served model (d_in, layer) stays out with the reason remembered for requests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from steer_serve.library.sae_formats import SAEFormatError, layer_of_hook, read_gemma_scope, read_saelens, write_saelens
from steer_serve.library.sparse_autoencoder import SparseAutoencoder
from steer_serve.files import atomic_write, remove
from steer_serve.library.library_files import Signature, check_name
from steer_serve.model_shape import ModelShape
from steer_serve.library.named_store import NamedFileStore, NameTaken

SIDECAR = ".json"


@dataclass(frozen=True)
class SAEEntry:
    name: str
    sae: SparseAutoencoder
    path: Path

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "object": "steering_sae", "format": self.path.suffix.lstrip("."),
                **self.sae.describe()}


class SAELibrary(NamedFileStore[SAEEntry]):
    kind = "SAE"
    suffixes = (".safetensors", ".npz")
    watched_suffixes = (SIDECAR,)

    def __init__(self, directory: Path, shape: ModelShape, poll_s: float = 1.0) -> None:
        self.shape = shape
        super().__init__(directory, poll_s)

    def entries(self) -> list[SAEEntry]:
        self.refresh()
        return [self._snapshot.items[name] for name in sorted(self._snapshot.items)]

    def _cache_key(self, name: str, file_name: str, signature: Signature) -> tuple:
        return (file_name, signature[file_name], signature.get(name + SIDECAR))

    def _load(self, name: str, path: Path) -> SAEEntry | str:
        try:
            sae = read_sae_files(path, path.with_suffix(SIDECAR))
            check_fits(sae, self.shape)
        except (SAEFormatError, OSError) as exc:
            return str(exc)
        return SAEEntry(name, sae, path)

    def register(self, name: str, sae: SparseAutoencoder, replace: bool = False) -> SAEEntry:
        """Store `sae` as NAME.safetensors + NAME.json (SAELens layout) and load it."""
        check_name(name, "SAE name")
        check_fits(sae, self.shape)
        cfg, weights = write_saelens(sae)
        with self._lock:
            self._reload()
            if self._exists(name) and not replace:
                raise NameTaken(f"an SAE named {name!r} exists (replace=true swaps it)")
            remove(self.directory / f"{name}.npz")
            atomic_write(self.directory / f"{name}{SIDECAR}", cfg)
            atomic_write(self.directory / f"{name}.safetensors", weights)
            self._reload()
        return self.get(name)

    def delete(self, name: str) -> list[str]:
        """Remove an SAE's files; returns the file names removed (empty if it did not exist)."""
        check_name(name, "SAE name")
        with self._lock:
            removed = [f"{name}{suffix}" for suffix in (*self.suffixes, SIDECAR)
                       if remove(self.directory / f"{name}{suffix}")]
            self._reload()
        return removed


def read_sae_files(weights: Path, sidecar: Path) -> SparseAutoencoder:
    """Read one library entry from its weights file and its JSON sidecar."""
    if not sidecar.exists():
        raise SAEFormatError(f"{sidecar.name} is missing (it holds the SAE's cfg.json / hook point)")
    if weights.suffix == ".safetensors":
        return read_saelens(sidecar.read_bytes(), weights.read_bytes())
    return read_gemma_scope(weights.read_bytes(), _sidecar_layer(sidecar))


def _sidecar_layer(sidecar: Path) -> int:
    try:
        data = json.loads(sidecar.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SAEFormatError(f"{sidecar.name} is not valid JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("hook_name"), str):
        return layer_of_hook(data["hook_name"])
    if isinstance(data, dict) and isinstance(data.get("layer"), int) and not isinstance(data["layer"], bool):
        return data["layer"]
    raise SAEFormatError(f"{sidecar.name} must give the layer: {{\"layer\": L}} or {{\"hook_name\": ...}}")


def check_fits(sae: SparseAutoencoder, shape: ModelShape) -> None:
    """Refuse an SAE that reads another model's residual stream."""
    if sae.d_in != shape.hidden_size:
        raise SAEFormatError(f"SAE d_in {sae.d_in} does not match the model's hidden size {shape.hidden_size}")
    if not 0 <= sae.layer < shape.num_layers:
        raise SAEFormatError(f"SAE layer {sae.layer} is out of range; the model has layers 0..{shape.num_layers - 1}")
