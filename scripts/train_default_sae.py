"""Train the shipped SAE of the default model (SmolLM2-135M-Instruct, layer 10) and its report.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/train_default_sae.py [--steps 2000]

Writes configs/saes/smollm2_l10_topk.{safetensors,json} (SAELens layout) and
docs/reports/sae_smollm2_l10_topk.{md,json}: quality on held-out tokens and the tokens that
activate a few features most. Deterministic on one machine (seeded; same Python stdlib).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

from steer_serve.default_model import DEFAULT_MODEL_NAME, default_model_dir
from steer_serve.library.sae_formats import write_saelens
from steer_serve.settings import REPO_CONFIGS
from steer_serve.tools.sae_training import collect, dataset_texts, evaluate, stdlib_docstrings, top_tokens, train_topk

LAYER, WIDTH, K, SEED = 10, 2304, 24, 0
NAME = "smollm2_l10_topk"
SHOWN_FEATURES = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--docstrings", type=int, default=1300)
    args = parser.parse_args()
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(SEED)
    model_dir = default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    labelled = dataset_texts(REPO_CONFIGS / "datasets", tokenizer)
    labelled += [("stdlib", doc) for doc in stdlib_docstrings(args.docstrings)]
    texts = [text for _, text in labelled]
    acts, origin, ids_of = collect(model_dir, LAYER, texts)
    order = np.random.default_rng(SEED).permutation(len(acts))
    split = int(0.9 * len(acts))
    train, heldout = acts[order[:split]], acts[order[split:]]
    sae = train_topk(train, WIDTH, K, args.steps, SEED, LAYER)
    report = evaluate(sae, heldout, len(train), args.steps)
    gloomy = gloomy_features(sae, acts, origin, [source for source, _ in labelled])
    examples = top_tokens(sae, acts, origin, ids_of, tokenizer, gloomy)
    _write(sae, report, examples, len(texts))


def gloomy_features(sae, acts: np.ndarray, origin: list[tuple[int, int]], sources: list[str]) -> list[int]:  # noqa: ANN001
    """The features whose mean activation differs most between the gloomy and the cheerful side of
    configs/datasets/gloomy.jsonl (its pairs give texts in order: gloomy, cheerful, gloomy, ...)."""
    gloomy_texts = [index for index, source in enumerate(sources) if source == "gloomy"]
    side_of = {text: position % 2 for position, text in enumerate(gloomy_texts)}  # 0 gloomy, 1 cheerful
    side = np.array([side_of.get(text, -1) for text, _ in origin])
    features = sae.encode(acts)
    difference = features[side == 0].mean(axis=0) - features[side == 1].mean(axis=0)
    return [int(f) for f in np.argsort(-difference)[:SHOWN_FEATURES]]


def _write(sae, report, examples, num_texts: int) -> None:  # noqa: ANN001
    sae_dir = REPO_CONFIGS / "saes"
    sae_dir.mkdir(exist_ok=True)
    provenance = {"model_name": DEFAULT_MODEL_NAME, "source": "scripts/train_default_sae.py",
                  "texts": f"configs/datasets/*.jsonl + Python {platform.python_version()} stdlib docstrings",
                  "num_texts": str(num_texts)}
    cfg, weights = write_saelens(sae.__class__(**{**sae.__dict__, "metadata": provenance}))
    (sae_dir / f"{NAME}.json").write_bytes(cfg)
    (sae_dir / f"{NAME}.safetensors").write_bytes(weights)
    reports = Path(__file__).resolve().parent.parent / "docs" / "reports"
    (reports / f"sae_{NAME}.json").write_text(json.dumps(
        {"quality": report.as_dict(), "top_tokens": {str(f): e for f, e in examples.items()}}, indent=2))
    lines = [f"# SAE `{NAME}`: {DEFAULT_MODEL_NAME}, output of layer {sae.layer}", "",
             f"TopK SAE, {sae.d_sae} features (k = {sae.k}), trained by `scripts/train_default_sae.py` on "
             f"{report.tokens_train} tokens of {num_texts} texts ({provenance['texts']}); measured on "
             f"{report.tokens_heldout} held-out tokens.", "",
             "| fraction of variance unexplained | L0 (active features / token) | dead features (held-out) | steps |",
             "|---:|---:|---:|---:|",
             f"| {report.fvu:.3f} | {report.l0:.1f} | {report.dead_fraction:.1%} | {report.steps} |", "",
             "The features most associated with the gloomy side of `configs/datasets/gloomy.jsonl` (mean activation, "
             "gloomy minus cheerful), with the tokens that activate them most ([token] after 3 tokens of context):", ""]
    for feature, found in examples.items():
        shown = "; ".join(f"`{text.strip()}` ({value:.1f})" for value, text in found)
        lines.append(f"- feature {feature}: {shown}")
    (reports / f"sae_{NAME}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
