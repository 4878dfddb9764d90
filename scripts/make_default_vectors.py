"""Rebuild the steering vectors shipped in configs/vectors/ from their datasets.

    .venv/bin/python scripts/make_default_vectors.py            # writes configs/vectors/gloomy.safetensors
    .venv/bin/python scripts/make_default_vectors.py --demo     # also prints HF before/after generations

gloomy.safetensors: difference of means (position "mean") of SmolLM2-135M-Instruct's
residual stream after decoder layers 6-14, gloomy minus cheerful assistant replies from
configs/datasets/gloomy.jsonl. Recommended scale: 0.6 (added at each of the 9 layers, at
every token). Much above that, answers drift into dark prose that ignores the question and
starts repeating; negative scales push towards cheerful (the model is cheerful already).

Everything is deterministic (greedy decoding, no sampling, no timestamps in the file).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from steer_serve.default_model import default_model_dir
from steer_serve.extraction import extract_to_file
from steer_serve.steering_vector import SteeringVector

ROOT = Path(__file__).resolve().parent.parent
DATASET = ROOT / "configs" / "datasets" / "gloomy.jsonl"
OUT = ROOT / "configs" / "vectors" / "gloomy.safetensors"
LAYERS = list(range(6, 15))
POSITION = "mean"
RECOMMENDED_SCALE = 0.6
DEMO_PROMPTS = ("Tell me about your weekend.", "What do you think of Mondays?", "Describe a walk in the park.")
DEMO_MAX_TOKENS = 60


def generate(model_dir: Path, prompt: str, vector: SteeringVector | None, scale: float) -> str:
    """Greedy HF generation with `scale * direction` added to each steered layer's output."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steer_serve.extraction import decoder_layers

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    handles = []
    for layer in vector.layers if vector is not None else []:
        delta = torch.from_numpy(vector.directions[layer]) * scale

        def hook(_module, _inputs, output, delta=delta):  # noqa: ANN001, ANN202
            if isinstance(output, tuple):
                return (output[0] + delta, *output[1:])
            return output + delta

        handles.append(decoder_layers(model)[layer].register_forward_hook(hook))
    try:
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=DEMO_MAX_TOKENS, do_sample=False)
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        for handle in handles:
            handle.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", action="store_true", help="print greedy before/after generations")
    parser.add_argument("--scale", type=float, default=RECOMMENDED_SCALE, help="scale for --demo")
    args = parser.parse_args()

    model_dir = default_model_dir()
    vector = extract_to_file(model_dir, DATASET, LAYERS, OUT, position=POSITION)
    norms = {layer: float((vector.directions[layer] ** 2).sum() ** 0.5) for layer in vector.layers}
    print(f"wrote {OUT.relative_to(ROOT)} sha256(content)={vector.content_sha256()}")
    print("norms: " + ", ".join(f"{layer}: {norm:.2f}" for layer, norm in norms.items()))
    if args.demo:
        for prompt in DEMO_PROMPTS:
            print(f"\n### {prompt}")
            print(f"before: {generate(model_dir, prompt, None, 0.0)!r}")
            print(f"after (scale {args.scale}): {generate(model_dir, prompt, vector, args.scale)!r}")


if __name__ == "__main__":
    main()
