"""Runs a scenario: check everything, then one benchmark run per offered load, each bracketed by
/metrics scrapes, and the client's figures set beside the server's."""

from __future__ import annotations

import math
import secrets
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from scipy.stats import chisquare

from steer_serve.loadtest import fingerprints as fp
from steer_serve.loadtest import metrics_scrape as ms
from steer_serve.loadtest import slo as slo_mod
from steer_serve.loadtest.engine import BenchEngine, BenchJob, BenchOutcome
from steer_serve.loadtest.preflight import PreflightError, ServerFacts, check_server, hidden_size
from steer_serve.loadtest.scenario import Scenario, ScenarioError
from steer_serve.loadtest.traffic import FilePrompt, plan_requests, read_prompt_file


@dataclass(frozen=True)
class Target:
    url: str
    api_key: str | None
    tokenizer: str  # local directory (or hub name already cached) for token ids and counts


def client_for(target: Target) -> httpx.Client:
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    return httpx.Client(base_url=target.url.rstrip("/"), headers=headers, timeout=30)


@dataclass(frozen=True)
class Prepared:
    """Everything checked before traffic: server facts, tokenizer, prompts."""

    facts: ServerFacts
    vocab_size: int
    file_prompts: list[FilePrompt] | None
    dim: int | None


def count_tokens(tokenizer: Any, prompt: str | list[dict[str, Any]]) -> int:
    """Prompt tokens as the server will count them (chat: with its template and generation prompt)."""
    if isinstance(prompt, list):
        return len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"])
    return len(tokenizer(prompt).input_ids)


def prepare(scenario: Scenario, target: Target, client: httpx.Client) -> Prepared:
    from transformers import AutoTokenizer

    facts = check_server(client, scenario)
    try:
        tokenizer = AutoTokenizer.from_pretrained(target.tokenizer)
    except (OSError, ValueError) as exc:
        raise PreflightError(f"tokenizer: cannot load {target.tokenizer!r} ({exc}); give `tokenizer` in the "
                             "scenario or --tokenizer (a local directory with the served model's tokenizer)") from None
    file_prompts = None
    if scenario.prompts.file is not None:
        try:
            file_prompts = read_prompt_file(Path(scenario.prompts.file), lambda p: count_tokens(tokenizer, p))
        except ValueError as exc:
            raise ScenarioError(f"prompts.file: {exc}") from None
    dims = {hidden_size(c, facts) for c in scenario.traffic} - {None}
    return Prepared(facts, len(tokenizer), file_prompts, dims.pop() if dims else None)


def run_scenario(scenario: Scenario, target: Target, engine: BenchEngine, *, progress: bool = True) -> dict[str, Any]:
    with client_for(target) as client:
        prepared = prepare(scenario, target, client)
        if scenario.warmup_requests:
            _warm_up(scenario, target, engine, client, prepared)
        runs = [_one_run(scenario, target, engine, client, prepared, i, rate, progress)
                for i, rate in enumerate(scenario.arrival.rates)]
    return {"scenario": scenario.model_dump(mode="json"), "url": target.url, "runs": runs,
            "sweep": sweep_summary(runs) if scenario.arrival.sweep else None,
            "slo_met": overall_verdict(scenario, runs)}


def _job(scenario: Scenario, target: Target, prepared: Prepared, seed: int, run_id: str, n: int, rate: float,
         progress: bool) -> BenchJob:
    requests = plan_requests(scenario, n, seed, f"lt{secrets.token_hex(4)}-{run_id}", vocab_size=prepared.vocab_size,
                             dim=prepared.dim, file_prompts=prepared.file_prompts)
    return BenchJob(target.url.rstrip("/"), scenario.model, target.tokenizer, requests, rate, scenario.arrival.process,
                    scenario.arrival.concurrency, target.api_key, slo_mod.percentiles(scenario.slo),
                    slo_mod.goodput_limits(scenario.slo), scenario.ignore_eos, scenario.temperature, seed, progress)


def _warm_up(scenario: Scenario, target: Target, engine: BenchEngine, client: httpx.Client,
             prepared: Prepared) -> None:
    """Unmeasured requests of the same mix, all at once (first-request costs, allocator, caches),
    their steering probed first so that a spec the server refuses stops the run here."""
    job = _job(scenario, target, prepared, scenario.seed + 10_000, "warmup", scenario.warmup_requests, math.inf, False)
    fp.expected_fingerprints(client, scenario.model, job.requests)
    engine(job)


def _one_run(scenario: Scenario, target: Target, engine: BenchEngine, client: httpx.Client, prepared: Prepared,
             index: int, rate: float, progress: bool) -> dict[str, Any]:
    job = _job(scenario, target, prepared, scenario.seed + index, str(index), scenario.requests_at(rate), rate,
               progress)
    expected = fp.expected_fingerprints(client, scenario.model, job.requests)
    before = ms.settled(client) if prepared.facts.has_metrics else None  # the probes counted before the run
    with ms.Sampler(client) as sampler:
        outcome = engine(job)
    server = None
    if before is not None:
        server = {**ms.server_deltas(before, ms.settled(client)), "peaks": dict(sampler.peaks)}
    return describe_run(scenario, rate, outcome, server, fp.check(job.requests, outcome.records, expected))


def describe_run(scenario: Scenario, rate: float, outcome: BenchOutcome, server: dict | None,
                 fingerprints: dict[str, Any]) -> dict[str, Any]:
    slo_rows = slo_mod.verdicts(scenario.slo, outcome.overall)
    return {
        "rate": None if math.isinf(rate) else rate, "concurrency": scenario.arrival.concurrency,
        "process": scenario.arrival.process, "requests": len(outcome.records), "duration_s": outcome.duration_s,
        "overall": {**outcome.overall, "goodput_share": slo_mod.goodput_share(outcome.overall)},
        "classes": {c.name: {**outcome.classes[c.name], "goodput_share": slo_mod.goodput_share(outcome.classes[c.name])}
                    for c in scenario.traffic if c.name in outcome.classes},
        "shares": shares(scenario, outcome),
        "errors": {**errors_by_status(outcome), **fp.mismatch_errors(fingerprints)},
        "headers": header_counts(scenario, outcome, fingerprints), "server": server,
        "checks": client_vs_server(outcome, server), "slo": slo_rows, "slo_met": slo_mod.all_met(slo_rows),
    }


def shares(scenario: Scenario, outcome: BenchOutcome) -> dict[str, Any]:
    """Configured vs drawn share of each class, and the chi-square test of the draw."""
    counts = Counter(r.traffic_class for r in outcome.records)
    total_weight = sum(c.weight for c in scenario.traffic)
    n = len(outcome.records)
    expected = [n * c.weight / total_weight for c in scenario.traffic]
    observed = [counts.get(c.name, 0) for c in scenario.traffic]
    p_value = float(chisquare(observed, expected).pvalue) if len(observed) > 1 else 1.0
    return {"classes": {c.name: {"configured": c.weight / total_weight, "requests": counts.get(c.name, 0),
                                 "drawn": counts.get(c.name, 0) / n} for c in scenario.traffic},
            "chi_square_p": p_value}


def _status(record: Any) -> str:
    return str(record.status) if record.status is not None else "no answer"


def errors_by_status(outcome: BenchOutcome) -> dict[str, Any]:
    """Failed requests by HTTP status ('no answer': connection refused, reset...), with one message each."""
    failed = [r for r in outcome.records if not r.success]
    grouped: dict[str, Any] = {}
    for record in failed:
        entry = grouped.setdefault(_status(record), {"count": 0, "classes": Counter(), "example": record.error})
        entry["count"] += 1
        entry["classes"][record.traffic_class] += 1
    return {status: {**e, "classes": dict(e["classes"])} for status, e in grouped.items()}


def header_counts(scenario: Scenario, outcome: BenchOutcome, fingerprints: dict[str, Any]) -> dict[str, Any]:
    """Per class: answers carrying the fingerprint of the steering they asked for (`fingerprinted`)
    or another one (`mismatched`, also among the errors), distinct fingerprints, experiment arms."""
    out: dict[str, Any] = {}
    for traffic in scenario.traffic:
        records = [r for r in outcome.records if r.traffic_class == traffic.name and r.status == 200]
        checked = fingerprints.get(traffic.name, {})
        out[traffic.name] = {"answered": len(records), "fingerprinted": checked.get("matched", 0),
                             "mismatched": checked.get("mismatched", 0), "expected": checked.get("expected", []),
                             "distinct_fingerprints": len({r.headers[fp.FINGERPRINT] for r in records
                                                           if fp.FINGERPRINT in r.headers}),
                             "arms": dict(Counter(r.headers[fp.ARM] for r in records if fp.ARM in r.headers))}
    return out


def client_vs_server(outcome: BenchOutcome, server: dict | None) -> list[dict[str, Any]]:
    """The client's counts beside the server's /metrics deltas (a mismatch means other traffic on
    the server during the run, or requests lost between the two)."""
    if server is None:
        return []
    m = outcome.overall
    rows = [("requests finished (vllm:request_success)", m["completed"], server["requests_finished"]),
            ("prompt tokens (vllm:prompt_tokens)", m["total_input"], server["prompt_tokens"]),
            ("generated tokens (vllm:generation_tokens)", m["total_output"], server["generation_tokens"])]
    if "steer_serve_requests_by_status" in server:
        by_status = Counter(_status(r) for r in outcome.records)
        for status, count in sorted(by_status.items()):
            rows.append((f"HTTP {status} (steer_serve:requests)", count,
                         server["steer_serve_requests_by_status"].get(status, 0)))
    return [{"figure": name, "client": float(c), "server": float(s), "equal": float(c) == float(s)}
            for name, c, s in rows]


def sweep_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The highest offered load meeting every SLO with every lower load meeting them too (the knee)."""
    best = None
    for run in runs:
        if not run["slo_met"]:
            break
        best = run["rate"]
    return {"rates": [r["rate"] for r in runs], "max_rate_meeting_slo": best,
            "met": [r["slo_met"] for r in runs]}


def overall_verdict(scenario: Scenario, runs: list[dict[str, Any]]) -> bool:
    """Single run: its SLOs met. Sweep: at least the lowest load meets them."""
    return runs[0]["slo_met"] if scenario.arrival.sweep else all(r["slo_met"] for r in runs)
