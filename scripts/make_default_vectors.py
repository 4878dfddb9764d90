"""Rebuild the steering vectors shipped in configs/vectors/ from their datasets.

    .venv/bin/python scripts/make_default_vectors.py                 # writes every vector below
    .venv/bin/python scripts/make_default_vectors.py --only gloomy   # one of them
    .venv/bin/python scripts/make_default_vectors.py --demo          # also prints HF before/after generations

All from SmolLM2-135M-Instruct's residual stream (layer L = output of decoder layer L), with
the token position "mean" (mean over the tokens of each example):

- gloomy: difference of means, layers 6-14, gloomy minus cheerful replies (gloomy.jsonl).
  Recommended scale 0.6; much above, answers drift into dark prose that ignores the question
  and starts repeating; negative scales push towards cheerful (the model is cheerful already).
- gloomy_centred: mean-centred, the gloomy replies of gloomy.jsonl minus neutral.jsonl.
- gloomy_pca: repeng's PCA of the paired gloomy - cheerful differences (unit norm per layer).
- formal: difference of means, formal minus casual replies (formal.jsonl).
- pirate: difference of means, pirate-speak minus plain replies (pirate.jsonl).

Everything is deterministic (no sampling, no timestamps in the files); see
configs/vectors/README.md for scales and docs/reports/ for measured effects.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from steer_serve.default_model import default_model_dir
from steer_serve.tools.extraction import extract_to_file
from steer_serve.library.steering_vector import SteeringVector

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT / "configs" / "datasets"
VECTORS = ROOT / "configs" / "vectors"
MIDDLE = list(range(6, 15))


@dataclass(frozen=True)
class VectorRecipe:
    name: str
    dataset: str
    method: str
    recommended_scale: float
    layers: tuple[int, ...] = tuple(MIDDLE)
    position: str = "mean"
    neutral: str | None = None


RECIPES = (
    VectorRecipe("gloomy", "gloomy.jsonl", "diff_means", 0.6),
    VectorRecipe("gloomy_centred", "gloomy.jsonl", "mean_centred", 0.2, tuple(range(6, 11)), neutral="neutral.jsonl"),
    VectorRecipe("gloomy_pca", "gloomy.jsonl", "pca", 4.0),
    VectorRecipe("formal", "formal.jsonl", "diff_means", 0.6),
    VectorRecipe("pirate", "pirate.jsonl", "diff_means", 0.6, tuple(range(6, 11))),
)
DEMO_PROMPTS = ("Tell me about your weekend.", "What do you think of Mondays?", "Describe a walk in the park.")
DEMO_MAX_TOKENS = 60


def build(recipe: VectorRecipe, model_dir: Path) -> SteeringVector:
    neutral = DATASETS / recipe.neutral if recipe.neutral else None
    return extract_to_file(model_dir, DATASETS / recipe.dataset, list(recipe.layers), VECTORS / f"{recipe.name}.safetensors",
                           position=recipe.position, method=recipe.method, neutral_path=neutral)


def generate(model_dir: Path, prompt: str, vector: SteeringVector | None, scale: float) -> str:
    """Greedy HF generation with `scale * direction` added to each steered layer's output."""
    import torch

    from steer_serve.tools.activations import load_model
    from steer_serve.tools.effect_report import steered

    model, tokenizer = load_model(model_dir)
    additions = dict(vector.directions) if vector is not None else {}
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with steered(model, additions, scale), torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=DEMO_MAX_TOKENS, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=[r.name for r in RECIPES], action="append", help="build only these vectors")
    parser.add_argument("--demo", action="store_true", help="print greedy before/after generations")
    parser.add_argument("--scale", type=float, default=None, help="scale for --demo (default: each vector's recommended)")
    args = parser.parse_args()

    model_dir = default_model_dir()
    for recipe in RECIPES:
        if args.only and recipe.name not in args.only:
            continue
        vector = build(recipe, model_dir)
        norms = {layer: float((vector.directions[layer] ** 2).sum() ** 0.5) for layer in vector.layers}
        print(f"wrote configs/vectors/{recipe.name}.safetensors ({recipe.method}) sha256(content)={vector.content_sha256()}")
        print("norms: " + ", ".join(f"{layer}: {norm:.2f}" for layer, norm in norms.items()))
        if args.demo:
            scale = args.scale if args.scale is not None else recipe.recommended_scale
            for prompt in DEMO_PROMPTS:
                print(f"\n### {recipe.name}: {prompt}")
                print(f"before: {generate(model_dir, prompt, None, 0.0)!r}")
                print(f"after (scale {scale}): {generate(model_dir, prompt, vector, scale)!r}")


if __name__ == "__main__":
    main()
