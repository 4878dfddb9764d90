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

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from steer_serve.tools.activations import (
    ContrastivePair,
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


def extract(
    model_dir: Path,
    pairs: Sequence[ContrastivePair],
    layers: list[int],
    position: str = "last",
    *,
    method: str = "diff_means",
    neutral: Sequence[TextExample] | None = None,
    source: Path | None = None,
    neutral_source: Path | None = None,
) -> SteeringVector:
    """One direction per layer by `method`; `source`/`neutral_source` are the dataset files
    (name and sha256 go into the metadata). Metadata holds no timestamps."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not pairs:
        raise ValueError("at least one contrastive pair is required")
    if (method == "mean_centred") != (neutral is not None):
        raise ValueError("a neutral set is required for mean_centred and only used by it")
    if neutral is not None and not neutral:
        raise ValueError("the neutral set is empty")
    model, tokenizer = load_model(model_dir)
    chosen = validate_layers(layers, position, len(decoder_layers(model)))

    def activations(examples: Sequence) -> dict[int, np.ndarray]:
        return collect_activations(model, tokenizer, [render(e, tokenizer) for e in examples], chosen, position)

    positive = activations([p.side(True) for p in pairs])
    if method == "mean_centred":
        reference = activations([n.content for n in neutral or ()])
        directions = {layer: mean_centred(positive[layer], reference[layer]) for layer in chosen}
    else:
        negative = activations([p.side(False) for p in pairs])
        statistic = difference_of_means if method == "diff_means" else pca_of_differences
        directions = {layer: statistic(positive[layer], negative[layer]) for layer in chosen}
    metadata = {
        "model": Path(model_dir).name,
        "hidden_size": str(model.config.hidden_size),
        "layers": ",".join(map(str, chosen)),
        "method": METHOD_LABELS[method],
        "position": position,
        "dataset": source.name if source is not None else "<in-memory>",
        "dataset_sha256": file_sha256(source) if source is not None else items_digest(pairs),
        "num_pairs": str(len(pairs)),
    }
    if neutral is not None:
        metadata |= {
            "neutral_dataset": neutral_source.name if neutral_source is not None else "<in-memory>",
            "neutral_dataset_sha256": file_sha256(neutral_source) if neutral_source is not None else items_digest(neutral),
            "num_neutral": str(len(neutral)),
        }
    return SteeringVector(
        directions={layer: d.astype(np.float32) for layer, d in directions.items()}, metadata=metadata
    )


def extract_to_file(
    model_dir: Path,
    pairs_path: Path,
    layers: list[int],
    out_path: Path,
    position: str = "last",
    *,
    method: str = "diff_means",
    neutral_path: Path | None = None,
) -> SteeringVector:
    """Load the datasets, extract, and write the vector (.safetensors or .gguf by suffix)."""
    pairs = load_pairs(pairs_path)
    neutral = load_texts(neutral_path) if neutral_path is not None else None
    vector = extract(model_dir, pairs, layers, position, method=method, neutral=neutral,
                     source=pairs_path, neutral_source=neutral_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_vector(vector, out_path)
    return vector
