"""`steer-serve` command line: serve (vLLM's OpenAI server with the plugin), extract, convert."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from steer_serve.default_model import DEFAULT_MODEL_NAME, default_model_dir

_VLLM_ENTRY = "vllm.entrypoints.launchers.api_server.entry"
PLUGIN_NAMES = "steer_serve,steer_serve_api"
DEFAULT_CPU_KVCACHE_GIB = "4"


def serve_command(args: argparse.Namespace, passthrough: list[str]) -> list[str]:
    """The vLLM server command line for these arguments (model resolved, flags passed on)."""
    if args.model is None:
        model = str(default_model_dir())
        passthrough = ["--served-model-name", DEFAULT_MODEL_NAME, *passthrough]
    else:
        model = args.model
    return [sys.executable, "-m", _VLLM_ENTRY, "--model", model, "--host", args.host, "--port", str(args.port), *passthrough]


def serve_environment(args: argparse.Namespace) -> dict[str, str]:
    """Environment for the server: our plugins allow-listed, our settings as STEER_SERVE_*."""
    env = dict(os.environ)
    env["VLLM_PLUGINS"] = PLUGIN_NAMES
    env.setdefault("HF_HUB_OFFLINE", "1")  # local models only: nothing is downloaded at run time
    # Steering patches vLLM's V1 model runner; on GPU vLLM 0.32 would otherwise pick Model Runner V2.
    env["VLLM_USE_V2_MODEL_RUNNER"] = "0"
    # On CPU, vLLM otherwise reserves 92% of RAM and refuses to start when anything else runs.
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_CPU_KVCACHE_GIB)
    if args.vector_dir is not None:
        env["STEER_SERVE_VECTOR_DIR"] = str(Path(args.vector_dir).resolve())
    return env


def _run_serve(args: argparse.Namespace, passthrough: list[str]) -> int:
    command = serve_command(args, passthrough)
    print("steer-serve: " + " ".join(command), file=sys.stderr, flush=True)
    os.execve(command[0], command, serve_environment(args))
    return 0  # not reached


def _run_default_model(args: argparse.Namespace, passthrough: list[str]) -> int:
    print(default_model_dir())
    return 0


def parse_layers(text: str) -> list[int]:
    """'6-14,20' -> [6, 7, ..., 14, 20]."""
    layers: list[int] = []
    for part in text.split(","):
        start, _, end = part.strip().partition("-")
        layers += range(int(start), int(end or start) + 1)
    return layers


def _run_extract(args: argparse.Namespace, passthrough: list[str]) -> int:
    from steer_serve.extraction import extract_to_file

    model = Path(args.model) if args.model else default_model_dir()
    vector = extract_to_file(model, Path(args.pairs), parse_layers(args.layers), Path(args.out), args.position)
    print(f"wrote {args.out}: layers {vector.layers}, dim {vector.dim}, sha256 {vector.content_sha256()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steer-serve", description=__doc__, allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="start the OpenAI-compatible server with per-request steering", allow_abbrev=False,
        description="Unrecognised flags (--dtype, --enforce-eager, --max-num-seqs, ...) go to vLLM.",
    )
    serve.add_argument("--model", default=None, help=f"local HF model directory (default: {DEFAULT_MODEL_NAME})")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--vector-dir", default=None, help="steering vector library (default: configs/vectors)")
    serve.set_defaults(handler=_run_serve)

    extract = commands.add_parser("extract", help="difference-of-means vector from contrastive pairs (JSONL)")
    extract.add_argument("--pairs", required=True, help="JSONL of contrastive pairs (see configs/datasets/)")
    extract.add_argument("--layers", required=True, help="decoder layers, e.g. 6-14 or 8,10,12")
    extract.add_argument("--out", required=True, help="output .safetensors or .gguf (name = file stem)")
    extract.add_argument("--position", choices=["last", "mean"], default="last", help="token position(s) read")
    extract.add_argument("--model", default=None, help=f"HF model directory (default: {DEFAULT_MODEL_NAME})")
    extract.set_defaults(handler=_run_extract)

    model = commands.add_parser("default-model", help="convert (once) and print the default model directory")
    model.set_defaults(handler=_run_default_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args, passthrough = build_parser().parse_known_args(argv)
    if passthrough and args.command != "serve":
        build_parser().error(f"unrecognized arguments: {' '.join(passthrough)}")
    return args.handler(args, passthrough)


if __name__ == "__main__":
    raise SystemExit(main())
