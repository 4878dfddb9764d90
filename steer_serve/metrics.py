"""Every Prometheus metric steer-serve exports, in one place.

They live in prometheus_client's default registry, which vLLM's `/metrics` serves; with several
API-server processes vLLM sets PROMETHEUS_MULTIPROC_DIR before they start, and prometheus_client
then writes these values to that directory, where vLLM's MultiProcessCollector reads them.
Names carry the `steer_serve:` prefix (like vLLM's `vllm:`). Every label value comes from the
server's own configuration or a fixed vocabulary, never from a client (no user ids, no request
model names), so series stay bounded.
"""

from __future__ import annotations

import os
import re

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess

NONE = "none"  # label value for "not in an experiment" / "no arm"
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
_REJECTION_FIELDS = ("vector", "layers", "scale", "positions", "type", "value", "disable", "force", "mask",
                     "interventions", "preset", "vllm_xargs", "steering")

REQUESTS = Counter(
    "steer_serve:requests", "Completion requests answered, by served model, experiment, arm and HTTP status",
    ["model", "experiment", "arm", "status"],
)
ASSIGNMENTS = Counter(
    "steer_serve:experiment_assignments",
    "Assignment decisions: assigned, forced (request carried its own steering), no_unit, not_covered, killed",
    ["experiment", "arm", "outcome"],
)
TIME_TO_FIRST_TOKEN = Histogram(
    "steer_serve:time_to_first_token_seconds", "Time to the first streamed chunk, by experiment and arm",
    ["experiment", "arm"], buckets=_LATENCY_BUCKETS,
)
E2E_LATENCY = Histogram(
    "steer_serve:e2e_request_latency_seconds", "Request start to last response byte, by experiment and arm",
    ["experiment", "arm"], buckets=_LATENCY_BUCKETS,
)
GENERATION_TOKENS = Counter(
    "steer_serve:generation_tokens", "Generated tokens (usage, or streamed chunks), by experiment and arm",
    ["experiment", "arm"],
)
REJECTIONS = Counter(
    "steer_serve:validation_rejections", "Requests refused by the steering gateway, by offending field",
    ["reason"],
)
POLICY_REFUSALS = Counter(
    "steer_serve:policy_refusals", "Requests refused (403) by the steering policy, by rule (`<rule name>.<field>`)",
    ["rule"],
)
PROBE_MEAN_PROJECTION = Histogram(
    "steer_serve:probe_mean_projection",
    "Per-request mean projection of the residual stream on a server probe (--probes), by probe, experiment, arm",
    ["probe", "experiment", "arm"], buckets=(-16, -8, -4, -2, -1, -0.5, 0, 0.5, 1, 2, 4, 8, 16),
)
VECTORS_LOADED = Gauge(
    "steer_serve:vectors_loaded", "Vectors in the library of the API server", multiprocess_mode="max",
)
KILL_SWITCH = Gauge(
    "steer_serve:kill_switch_engaged", "1 while an experiment (or `all`) is switched to control",
    ["experiment"], multiprocess_mode="mostrecent",
)

STORE_UP = Gauge(
    "steer_serve:experiment_store_up", "1 while the experiment database accepts writes (min over API processes)",
    multiprocess_mode="livemin",
)
STORE_PENDING_BYTES = Gauge(
    "steer_serve:experiment_outbox_pending_bytes", "Exposure/feedback bytes in the local outbox, not yet in the database",
    multiprocess_mode="livesum",
)
STORE_SPOOLED = Counter(
    "steer_serve:experiment_records_spooled", "Records written to the local outbox while the database was unreachable",
    ["kind"],
)
STORE_DROPPED = Counter(
    "steer_serve:experiment_records_dropped", "Records dropped because the local outbox was full", ["kind"],
)
STORE_FLUSHED = Counter(
    "steer_serve:experiment_records_flushed", "Records sent from the outbox to the database (resends included)",
    ["kind"],
)


def rejection_reason(status: int, param: str | None) -> str:
    """Bounded label for a rejection: the last recognised field of its `param`, or the status."""
    if status == 413:
        return "body_too_large"
    for part in reversed(re.split(r"[.\[\]]+", param or "")):
        if part in _REJECTION_FIELDS:
            return part
    return "other"


def assignment_counts(experiment: str) -> dict[str, dict[str, int]]:
    """outcome -> arm -> count of assignment decisions for `experiment`, over all API-server processes."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    counts: dict[str, dict[str, int]] = {}
    for family in registry.collect():
        if family.name != "steer_serve:experiment_assignments":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("experiment") == experiment:
                arms = counts.setdefault(sample.labels["outcome"], {})
                arms[sample.labels["arm"]] = arms.get(sample.labels["arm"], 0) + int(sample.value)
    return counts
