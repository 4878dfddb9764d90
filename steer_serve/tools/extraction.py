"""Extract a steering vector from a dataset, on a model's own activations.

For each requested decoder layer L we read the residual stream after layer L (the output of
`model.model.layers[L]`, the same point steering adds to) for every example, reduce it to one
vector per example (the last token, or the mean over tokens), and apply one statistic
(`steer_serve.tools.extraction_methods`):

- `diff_means`: mean(positive) - mean(negative) (Turner et al.'s ActAdd, Rimsky et al.'s CAA);
- `mean_centred`: mean(positive) - mean(neutral set) (Jorgensen et al.); negatives unused;
- `pca`: first principal component of the paired differences, unit norm (repeng's `pca_diff`).

No training and no randomness, so a vector can be rebuilt byte-for-byte from its dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steer_serve.tools.activations import (
    ContrastivePair,
    Example,
    TextExample,
    collect_activations,
    decoder_layers,
    file_sha256,
    items_digest,
    load_model,
    load_pairs,
    load_texts,
    render,
    validate_layers,
)
from steer_serve.tools.extraction_methods import difference_of_means, mean_centred, pca_of_differences
from steer_serve.library.steering_vector import SteeringVector
from steer_serve.library.vector_formats import write_vector

METHODS: tuple[str, ...] = ("diff_means", "mean_centred", "pca")
# The name written into the vector's metadata (difference_of_means predates the other methods).
METHOD_LABELS = {"diff_means": "difference_of_means", "mean_centred": "mean_centred", "pca": "pca_of_differences"}


# Examples (texts or chats, dataset order) -> per layer a float64 (len(examples), hidden) matrix of
# reduced activations. The HF path reads them from hooks, the server path from `observe.capture`.
Collector = Callable[[Sequence[Example]], dict[int, np.ndarray]]


@dataclass(frozen=True)
class ExtractionSpec:
    """What to extract, independent of where the activations come from (the HF model or a running
    server): both paths take one spec, so their options cannot drift apart. `source` and
    `neutral_source` are the dataset files (name and sha256 go into the metadata)."""

    pairs: Sequence[ContrastivePair]
    layers: list[int]
    position: str = "last"
    method: str = "diff_means"
    neutral: Sequence[TextExample] | None = None
    source: Path | None = None
    neutral_source: Path | None = None

    def check(self) -> None:
        """The method/dataset combinations every path refuses before reading any activation."""
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not self.pairs:
            raise ValueError("at least one contrastive pair is required")
        if (self.method == "mean_centred") != (self.neutral is not None):
            raise ValueError("a neutral set is required for mean_centred and only used by it")
        if self.neutral is not None and not self.neutral:
            raise ValueError("the neutral set is empty")

    def metadata(self, layers: list[int], model_name: str, hidden_size: int) -> dict[str, str]:
        """The vector file's metadata: no timestamps, so a rebuild is byte-for-byte identical."""
        metadata = {
            "model": model_name,
            "hidden_size": str(hidden_size),
            "layers": ",".join(map(str, layers)),
            "method": METHOD_LABELS[self.method],
            "position": self.position,
            "dataset": self.source.name if self.source is not None else "<in-memory>",
            "dataset_sha256": file_sha256(self.source) if self.source is not None else items_digest(self.pairs),
            "num_pairs": str(len(self.pairs)),
        }
        if self.neutral is not None:
            named = self.neutral_source is not None
            metadata |= {
                "neutral_dataset": self.neutral_source.name if named else "<in-memory>",
                "neutral_dataset_sha256": file_sha256(self.neutral_source) if named else items_digest(self.neutral),
                "num_neutral": str(len(self.neutral)),
            }
        return metadata


def directions_from_activations(collect: Collector, spec: ExtractionSpec, layers: list[int]) -> dict[int, np.ndarray]:
    """One float64 direction per layer by the spec's method, whatever produced the activations."""
    positive = collect([p.side(True) for p in spec.pairs])
    if spec.method == "mean_centred":
        reference = collect([n.content for n in spec.neutral or ()])
        return {layer: mean_centred(positive[layer], reference[layer]) for layer in layers}
    negative = collect([p.side(False) for p in spec.pairs])
    statistic = difference_of_means if spec.method == "diff_means" else pca_of_differences
    return {layer: statistic(positive[layer], negative[layer]) for layer in layers}


def build_vector(
    collect: Collector, spec: ExtractionSpec, layers: list[int], *, model_name: str, hidden_size: int
) -> SteeringVector:
    """The steering vector of `spec` from already validated `layers`, shared by the HF and server paths
    (same statistic, same metadata, so both write the same file for the same activations)."""
    spec.check()
    directions = directions_from_activations(collect, spec, layers)
    return SteeringVector(
        directions={layer: d.astype(np.float32) for layer, d in directions.items()},
        metadata=spec.metadata(layers, model_name, hidden_size),
    )


def extract(model_dir: Path, spec: ExtractionSpec) -> SteeringVector:
    """One direction per layer by `spec.method` on the HF model in `model_dir`."""
    spec.check()
    model, tokenizer = load_model(model_dir)
    chosen = validate_layers(spec.layers, spec.position, len(decoder_layers(model)))

    def collect(examples: Sequence[Example]) -> dict[int, np.ndarray]:
        return collect_activations(model, tokenizer, [render(e, tokenizer) for e in examples], chosen, spec.position)

    return build_vector(collect, spec, chosen, model_name=Path(model_dir).name, hidden_size=model.config.hidden_size)


def extract_to_file(
    model_dir: Path,
    pairs_path: Path,
    layers: list[int],
    out_path: Path,
    position: str = "last",
    *,
    method: str = "diff_means",
    neutral_path: Path | None = None,
    extractor: Callable[[Path, ExtractionSpec], SteeringVector] | None = None,
) -> SteeringVector:
    """Load the datasets, extract, and write the vector (.safetensors or .gguf by suffix). `extractor`
    is `extract` by default (the HF model in `model_dir`), or e.g. `partial(extract_via_server, client)`
    to read the activations from a running server."""
    spec = ExtractionSpec(
        pairs=load_pairs(pairs_path), layers=layers, position=position, method=method,
        neutral=load_texts(neutral_path) if neutral_path is not None else None,
        source=pairs_path, neutral_source=neutral_path,
    )
    vector = (extractor or extract)(model_dir, spec)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_vector(vector, out_path)
    return vector
