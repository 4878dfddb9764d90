"""`steer-serve` command line: serve (vLLM's OpenAI server with the plugin), extract, convert."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from steer_serve.default_model import DEFAULT_MODEL_NAME, default_model_dir

_VLLM_ENTRY = "vllm.entrypoints.launchers.api_server.entry"
PLUGIN_NAMES = "steer_serve,steer_serve_api"


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
