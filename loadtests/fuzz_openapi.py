"""OpenAPI fuzzing of a real steer-serve server with schemathesis (issue "Reliability and security").

    .venv/bin/python -m loadtests.fuzz_openapi --requests 2000 --out docs/reliability/fuzz

Starts steer-serve on a tiny random Llama (eager, --max-model-len 256, one library vector, an
admin key, a preset dir and an experiment), fuzzes the completion endpoints and every
/v1/steering/* route from the schema the server publishes (`fuzz_runner.run_fuzz`), and writes
report.json and report.md. Passes when no answer is a 5xx, every request got an answer, the
server is healthy afterwards and a fixed steered request gives the same tokens as before.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any


import schemathesis

from loadtests.fuzz_policy import PROBE_KEY, forbidden, policy_yaml
from loadtests.fuzz_runner import FuzzResult, run_fuzz
from loadtests.git_commit import current_commit
from steer_serve.default_model import default_model_dir
from steer_serve.library.steering_vector import SteeringVector
from steer_serve.library.vector_formats import write_vector
from harness.experiments import experiment, write_experiments
from harness.servers import Server
from harness.steering_cases import tiny_library_directions
from harness.tiny_models import TINY_HIDDEN, TINY_LAYERS, build_tiny_llama

ADMIN_KEY = "fuzz-admin-key"
MAX_MODEL_LEN = 256


def launch_fuzz_server(work_dir: Path, log_dir: Path, policy: bool = False) -> Server:
    """A steer-serve server whose admin routes can write only inside `work_dir` (not started yet:
    call `wait_ready`). The experiment's arms use inline vectors, so deleting library vectors
    during the fuzz cannot break a reload. `policy`: under the restrictive policy of fuzz_policy."""
    model = build_tiny_llama(work_dir / "model", default_model_dir())
    vectors = work_dir / "vectors"
    vectors.mkdir(parents=True, exist_ok=True)
    write_vector(SteeringVector(tiny_library_directions(TINY_HIDDEN, TINY_LAYERS), {"model": "tiny-llama"}),
                 vectors / "tiny_a.safetensors")
    (work_dir / "presets").mkdir(exist_ok=True)
    (work_dir / "presets" / "fuzz_light.yaml").write_text(
        "description: tiny_a at 0.5 on generated tokens\n"
        "interventions:\n  - {type: add, vector: tiny_a, scale: 0.5, positions: generated}\n")
    arms = [{"name": "control", "weight": 1, "control": True},
            {"name": "steered", "weight": 1,
             "interventions": [{"type": "add", "vector": [0.25] * TINY_HIDDEN, "layers": [1], "scale": 2.0}]}]
    experiments = write_experiments(work_dir / "experiments", experiment("tone", arms))
    extra = []
    if policy:
        (work_dir / "policy.yaml").write_text(policy_yaml())
        extra = ["--policy", str(work_dir / "policy.yaml")]
    return Server(model, log_dir, vector_dir=vectors, eager=True, extra_args=[
        "--max-model-len", str(MAX_MODEL_LEN), "--preset-dir", str(work_dir / "presets"),
        "--experiments", str(experiments), "--admin-key", ADMIN_KEY, *extra])


def write_report(out: Path, result: FuzzResult, context: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    data = {**context, **result.as_dict()}
    (out / "report.json").write_text(json.dumps(data, indent=1) + "\n")
    lines = [
        "# OpenAPI fuzz (schemathesis)", "",
        f"Command: `{context['command']}`  ",
        f"Commit {context['commit']}, seed {context['seed']}, schemathesis {context['schemathesis']}, "
        f"{context['machine']}  ",
        f"**{result.requests} requests** in {result.duration_s:.0f} s (case generation {result.generation_s:.0f} s); "
        f"modes: {', '.join(f'{k} {v}' for k, v in result.by_mode.items())}; "
        f"{result.steered_ok} steered requests answered 200 (ran in the engine)  ",
        f"5xx: **{len(result.server_errors)}**, no answer: **{len(result.transport_errors)}**, "
        f"healthy after: **{result.alive_after}**, "
        f"policy: **{context['policy']}** (2xx for a forbidden body: **{len(result.policy_violations)}**), "
        f"fixed steered request unchanged: "
        f"**{bool(result.probe_before) and result.probe_before == result.probe_after}**  ",
        f"Result: **{'PASS' if not result.problems else 'FAIL: ' + '; '.join(result.problems)}**", "",
        "| status | count |", "|---|---|",
        *[f"| {status} | {count} |" for status, count in sorted(result.by_status.items())], "",
        "| operation | requests | statuses |", "|---|---|---|",
        *[f"| `{op}` | {sum(c.values())} | {', '.join(f'{s}: {n}' for s, n in sorted(c.items()))} |"
          for op, c in sorted(result.by_operation.items())], "",
        context["notes"], "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


NOTES = ("Cases come from the server's own /openapi.json. `[published body]` rows use vLLM's completion "
         "schemas as published (no required prompt: most are refused by vLLM itself). The other completion rows "
         "use the same schema with the body pinned to a short prompt, up to 8 tokens and a required `steering` "
         "(the server's `SteeringSpec` with the model bounds it publishes); in that view names (vectors, presets, "
         "experiment keys) are those that exist at the start, except in DELETE routes. 25% of each operation's "
         "cases use schemathesis' negative mode. Steering routes are sent with the right admin key (half), none, "
         "or a wrong one. Many 400s are by design: schemathesis spells some integers as floats (`2.0` is an "
         "integer for JSON Schema), which the strict `steering` validation refuses, and generated inline vectors "
         "can be all zeros (no direction to ablate or clamp).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="at least this many generated requests")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=6, help="concurrent senders")
    parser.add_argument("--policy", action="store_true",
                        help="run under the restrictive steering policy of loadtests/fuzz_policy.py and fail on "
                             "any 2xx for a body it forbids")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="steer-fuzz-"))
    server = launch_fuzz_server(work, work, policy=args.policy)
    try:
        server.wait_ready()
        result = run_fuzz(server.url, server.model, ADMIN_KEY, args.requests, seed=args.seed, workers=args.workers,
                          judge=forbidden if args.policy else None, probe_key=PROBE_KEY if args.policy else None)
    finally:
        server.stop()
    context = {"command": " ".join([".venv/bin/python -m loadtests.fuzz_openapi", *sys.argv[1:]]), "seed": args.seed,
               "schemathesis": schemathesis.SCHEMATHESIS_VERSION, "notes": NOTES,
               "policy": "restrictive (loadtests/fuzz_policy.py)" if args.policy else "none", "server_log": str(server.log_path),
               "machine": f"{platform.machine()}, Python {platform.python_version()}", "commit": current_commit()}
    print(f"report: {write_report(args.out, result, context)}")
    print(json.dumps({"requests": result.requests, "by_status": result.by_status, "problems": result.problems}))
    sys.exit(1 if result.problems else 0)


if __name__ == "__main__":
    main()
