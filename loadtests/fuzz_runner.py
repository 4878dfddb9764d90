"""Generate cases from a running server's OpenAPI schema with schemathesis, send them, count answers.

One function, `run_fuzz`, is shared by the CLI (`loadtests.fuzz_openapi`) and the CI test
(`tests/e2e/test_fuzz_openapi.py`), so the test exercises exactly the harness whose numbers the
report records. Cases are generated first (Hypothesis, seeded: the same seed and schema give
the same cases), shuffled so admin changes interleave with completions, then sent from a few
threads so that random steering specs share engine batches, the way real traffic does.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
import numpy as np
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode

from loadtests.fuzz_schema import CHAT, COMPLETIONS, STEERING_PREFIX, fuzzed_operations, steering_focused
from steer_serve_vllm.api.gateway import FINGERPRINT_HEADER

REQUEST_TIMEOUT_S = 120
NEGATIVE_SHARE = 0.25
PROBE_PROMPT = [1, 504, 2291, 314, 260, 1345, 30, 1104]
PROBE_TOKENS = 16
PROBE_SCALE = 0.1  # mild: the tiny model still varies its tokens (at >= 0.3 it repeats one token)
# Shares of the budget; the steering routes split what is left evenly.
SHARES = {("focused", COMPLETIONS): 0.30, ("focused", CHAT): 0.20,
          ("published", COMPLETIONS): 0.05, ("published", CHAT): 0.05}


@dataclass
class FuzzResult:
    """What was sent and what came back; `problems` is empty when the run passed."""

    requests: int = 0
    by_operation: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    by_status: Counter = field(default_factory=Counter)
    by_mode: Counter = field(default_factory=Counter)
    steered_ok: int = 0  # 200s carrying the fingerprint header: steered requests that ran in the engine
    samples: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    server_errors: list[dict[str, Any]] = field(default_factory=list)
    transport_errors: list[dict[str, Any]] = field(default_factory=list)
    alive_after: bool = False
    probe_before: list[int] = field(default_factory=list)
    probe_after: list[int] = field(default_factory=list)
    probe_unsteered: list[int] = field(default_factory=list)
    duration_s: float = 0.0
    generation_s: float = 0.0
    policy_violations: list[dict[str, Any]] = field(default_factory=list)  # 2xx for a body the policy forbids

    @property
    def problems(self) -> list[str]:
        found = []
        if self.server_errors:
            found.append(f"{len(self.server_errors)} responses with a 5xx status or a 5xx error inside a stream")
        if self.transport_errors:
            found.append(f"{len(self.transport_errors)} requests got no HTTP answer")
        if not self.alive_after:
            found.append("server not healthy after the fuzz")
        if self.probe_after != self.probe_before:
            found.append(f"fixed steered request changed: {self.probe_before} -> {self.probe_after}")
        if self.probe_before == self.probe_unsteered:
            found.append("fixed steered request equals the unsteered one: the probe shows nothing")
        if self.policy_violations:
            found.append(f"{len(self.policy_violations)} bodies the policy forbids were answered 2xx")
        return found

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "duration_s": round(self.duration_s, 1),
                "generation_s": round(self.generation_s, 1),
                "by_status": dict(sorted(self.by_status.items())), "by_mode": dict(self.by_mode),
                "steered_ok": self.steered_ok,
                "by_operation": {op: dict(sorted(c.items())) for op, c in sorted(self.by_operation.items())},
                "server_errors": self.server_errors, "transport_errors": self.transport_errors,
                "samples": {op: dict(sorted(by.items())) for op, by in sorted(self.samples.items())},
                "policy_violations": self.policy_violations,
                "alive_after": self.alive_after, "probe": {"before": self.probe_before, "after": self.probe_after,
                                                            "unsteered": self.probe_unsteered},
                "problems": self.problems}


@dataclass(frozen=True)
class Planned:
    case: Case
    label: str
    mode: str


Judge = Callable[[Any], "str | None"]  # why a completion body is forbidden by the server's policy, or None


def run_fuzz(base_url: str, model: str, admin_key: str, budget: int, seed: int = 0, workers: int = 6,
             judge: Judge | None = None, probe_key: str | None = None) -> FuzzResult:
    """Fuzz the server at `base_url` with at least `budget` schemathesis cases; see module docstring.

    With `judge`, every 2xx completion whose body the judge calls forbidden is a problem; the
    probe then authenticates with `probe_key` (a caller the policy leaves unrestricted)."""
    result = FuzzResult()
    started = time.perf_counter()
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S,
                      headers={"Authorization": f"Bearer {probe_key}"} if probe_key else None) as client:
        hidden_size = _hidden_size(client)
        result.probe_unsteered = probe(client, model, steered=False, hidden_size=hidden_size)
        result.probe_before = probe(client, model, steered=True, hidden_size=hidden_size)
        raw = client.get("/openapi.json").json()
        names = {kind: [entry["name"] for entry in client.get(f"/v1/steering/{kind}").json()["data"]]
                 for kind in ("vectors", "presets")}
        names["experiments"] = [e["key"] for e in client.get("/v1/steering/experiments").json()["data"]]
        planned = plan_cases(raw, model, budget, seed, names["vectors"], names["presets"], names["experiments"])
        result.generation_s = time.perf_counter() - started
        _send_all(planned, base_url, admin_key, workers, result, judge)
        result.alive_after = client.get("/health").status_code == 200
        if result.alive_after:
            result.probe_after = probe(client, model, steered=True, hidden_size=hidden_size)
    result.duration_s = time.perf_counter() - started
    return result


def plan_cases(raw_schema: dict[str, Any], model: str, budget: int, seed: int, vectors: list[str] = (),
               presets: list[str] = (), experiments: list[str] = ()) -> list[Planned]:
    """At least `budget` cases from the published and the steering-focused schema, shuffled."""
    focused = steering_focused(raw_schema, model, list(vectors), list(presets), list(experiments))
    schemas = {"published": schemathesis.openapi.from_dict(raw_schema),
               "focused": schemathesis.openapi.from_dict(focused)}
    routes = [op for op in fuzzed_operations(raw_schema) if op not in (COMPLETIONS, CHAT)]
    route_share = (1 - sum(SHARES.values())) / max(len(routes), 1)
    targets = [(profile, op, share) for (profile, op), share in SHARES.items()]
    targets += [("focused", op, route_share) for op in routes]
    planned: list[Planned] = []
    for index, (profile, (path, method), share) in enumerate(targets):
        planned += _generate(schemas[profile], profile, path, method, round(budget * share), seed + 1000 * index)
    top_up = 0
    while len(planned) < budget:  # small operations run out of distinct cases: fill with steered completions
        top_up += 1
        planned += _generate(schemas["focused"], "focused", *COMPLETIONS, budget - len(planned), seed + 10**6 + top_up)
    random.Random(seed).shuffle(planned)
    return planned


def _generate(schema: Any, profile: str, path: str, method: str, count: int, seed: int) -> list[Planned]:
    operation = schema[path][method.upper()]
    label = f"{method.upper()} {path}" + (" [published body]" if profile == "published" else "")
    negative = round(count * NEGATIVE_SHARE)
    planned = []
    for mode, n in ((GenerationMode.POSITIVE, count - negative), (GenerationMode.NEGATIVE, negative)):
        planned += [Planned(case, label, mode.value) for case in _draw(operation, mode, n, seed)]
    return planned


def _draw(operation: Any, mode: GenerationMode, count: int, seed: int) -> list[Case]:
    """Up to `count` distinct cases; fewer when the operation has fewer (Hypothesis stops early)."""
    if count <= 0:
        return []
    cases: list[Case] = []

    @hypothesis_seed(seed)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(operation.as_strategy(generation_mode=mode))
    def collect(case: Case) -> None:
        cases.append(case)

    try:
        collect()
    except Unsatisfiable:  # e.g. no way to break an operation that takes no input at all
        pass
    return cases[:count]


def _send_all(planned: list[Planned], base_url: str, admin_key: str, workers: int, result: FuzzResult,
              judge: Judge | None = None) -> None:
    local = threading.local()
    lock = threading.Lock()

    def send(index: int, item: Planned) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        case = item.case
        if case.path.startswith(STEERING_PREFIX):  # every steering route: admin ones may lack `security`
            _choose_credentials(case, admin_key, index)
        try:
            response = case.call(base_url=base_url, session=local.session, timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:  # no HTTP answer at all: connection refused/reset, timeout
            with lock:
                result.requests += 1
                result.by_operation[item.label]["no answer"] += 1
                result.transport_errors.append({"operation": item.label, "error": repr(exc)[:500],
                                                "curl": case.as_curl_command(base_url=base_url)[:2000]})
            return
        status = str(response.status_code)
        stream_code = _stream_error_code(response)
        if stream_code is not None:
            status += f" (stream error {stream_code})"
        with lock:
            result.requests += 1
            result.by_operation[item.label][status] += 1
            result.by_status[status] += 1
            result.by_mode[item.mode] += 1
            if response.status_code == 200 and _header(response, FINGERPRINT_HEADER):
                result.steered_ok += 1
            result.samples[item.label].setdefault(status, response.content[:300].decode(errors="replace"))
            reason = _judged(judge, case, response.status_code)
            if reason is not None:
                result.policy_violations.append({"operation": item.label, "status": status, "forbidden": reason,
                                                 "curl": case.as_curl_command(base_url=base_url)[:4000]})
            if response.status_code >= 500 or (stream_code or 0) >= 500:
                result.server_errors.append({"operation": item.label, "status": status, "mode": item.mode,
                                             "response": response.content[:1000].decode(errors="replace"),
                                             "curl": case.as_curl_command(base_url=base_url)[:4000]})

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(send, range(len(planned)), planned))


def _judged(judge: Judge | None, case: Case, status: int) -> str | None:
    """Why a 2xx completion's body is forbidden by the policy (None: allowed, not 2xx, or no judge)."""
    if judge is None or not 200 <= status < 300 or (case.path, case.method.lower()) not in (COMPLETIONS, CHAT):
        return None
    return judge(case.body)


def _choose_credentials(case: Case, admin_key: str, index: int) -> None:
    """Half the admin cases carry the right key; the rest none or the generated (wrong) one."""
    headers = case.headers if case.headers is not None else {}
    variant = index % 4
    if variant in (0, 1):
        headers["Authorization"] = f"Bearer {admin_key}"
    elif variant == 2:
        headers.pop("Authorization", None)
    case.headers = headers


def _stream_error_code(response: Any) -> int | None:
    """The largest error code inside an event stream (vLLM reports engine failures there with a 200)."""
    if "text/event-stream" not in _header(response, "content-type"):
        return None
    codes = []
    for line in response.content.decode(errors="replace").splitlines():
        if line.startswith("data: {") and '"error"' in line:
            try:
                error = json.loads(line[len("data: "):]).get("error", {})
            except ValueError:
                continue
            codes.append(int(error.get("code") or 500) if isinstance(error, dict) else 500)
    return max(codes) if codes else None


def _header(response: Any, name: str) -> str:
    """A response header by lower-case name ("" when absent); schemathesis keeps a list per name."""
    for key, value in response.headers.items():
        if key.lower() == name:
            return ",".join(value) if isinstance(value, list) else str(value)
    return ""


def _hidden_size(client: httpx.Client) -> int:
    """The served model's hidden size, as the schema publishes it (inline vector length)."""
    add = client.get("/openapi.json").json()["components"]["schemas"]["AddIntervention"]
    return next(o for o in add["properties"]["vector"]["anyOf"] if o.get("type") == "array")["minItems"]


def probe(client: httpx.Client, model: str, steered: bool, hidden_size: int) -> list[int]:
    """Greedy tokens of one fixed request; steered with a fixed inline vector (the fuzz may delete
    library vectors, so the probe must not depend on one)."""
    body: dict[str, Any] = {"model": model, "prompt": PROBE_PROMPT, "max_tokens": PROBE_TOKENS, "temperature": 0.0,
                            "ignore_eos": True, "logprobs": 0, "return_tokens_as_token_ids": True}
    if steered:
        vector = np.random.default_rng(7).standard_normal(hidden_size).round(4).tolist()
        edit = {"type": "add", "vector": vector, "layers": [1, 2], "scale": PROBE_SCALE}
        body["steering"] = {"interventions": [edit]}
    response = client.post("/v1/completions", json=body)
    response.raise_for_status()
    tokens = response.json()["choices"][0]["logprobs"]["tokens"]
    return [int(token.removeprefix("token_id:")) for token in tokens]
