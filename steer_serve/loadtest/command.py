"""`steer-serve loadtest`: parse, check, run, report, gate. Exit 0 all good, 1 an SLO missed or a
figure regressed, 2 the scenario or the server is unusable (nothing was sent)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from steer_serve.loadtest.scenario import ScenarioError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None, help="bearer key the server wants (vLLM --api-key)")
    parser.add_argument("--scenario", required=True, help="scenario YAML (see configs/loadtests/)")
    parser.add_argument("--out", required=True, help="directory for report.md, report.json and the PNGs")
    parser.add_argument("--tokenizer", default=None, help="local tokenizer directory (overrides the scenario's)")
    parser.add_argument("--baseline", default=None, help="an earlier report.json: write regression.md, gate on it")
    parser.add_argument("--max-regression", type=float, default=0.1, help="allowed relative regression (0.1 = 10%%)")
    parser.add_argument("--title", default=None, help="report title (default: the model)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _tokenizer(scenario_tokenizer: str | None, model: str, given: str | None) -> str:
    from steer_serve.default_model import DEFAULT_MODEL_NAME, default_model_dir

    name = given or scenario_tokenizer or model
    return str(default_model_dir()) if name == DEFAULT_MODEL_NAME else name


def _read_baseline(path: str | None) -> dict | None:
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"--baseline: cannot read {path}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from steer_serve.loadtest.baseline import compare, render
    from steer_serve.loadtest.engine import load_engine
    from steer_serve.loadtest.preflight import PreflightError
    from steer_serve.loadtest.report import write_report
    from steer_serve.loadtest.runner import Target, run_scenario
    from steer_serve.loadtest.scenario import load_scenario

    try:
        scenario = load_scenario(Path(args.scenario))
        target = Target(args.url, args.api_key, _tokenizer(scenario.tokenizer, scenario.model, args.tokenizer))
        baseline = _read_baseline(args.baseline)
        report = run_scenario(scenario, target, load_engine(), progress=not args.no_progress)
    except (ScenarioError, PreflightError) as exc:
        print(f"steer-serve loadtest: {exc}", file=sys.stderr)
        return 2
    report["title"] = args.title
    report["context"] = {"command": "steer-serve loadtest " + " ".join(sys.argv[2:])}
    out = Path(args.out)
    path = write_report(report, out)
    print(path.read_text())
    code = 0 if report["slo_met"] else 1
    if baseline is not None:
        rows = compare(report, baseline, args.max_regression)
        table = render(rows, args.max_regression)
        (out / "regression.md").write_text(table)
        (out / "regression.json").write_text(json.dumps(rows, indent=2))
        print(table)
        code = max(code, int(any(r["regressed"] for r in rows)))
    print(f"wrote {path}, {out / 'report.json'} and PNGs" + ("; SLOs missed" if not report["slo_met"] else ""),
          file=sys.stderr)
    return code
