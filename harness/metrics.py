"""Read one counter from a server's Prometheus /metrics text."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def counter_total(client: httpx.Client, name: str) -> float:
    """Sum of all samples of counter `name` (e.g. "vllm:prefix_cache_hits")."""
    text = client.get("/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == name
        for sample in family.samples
        if sample.name == f"{name}_total"
    )


def counter_by_label(client: httpx.Client, name: str, label: str) -> dict[str, float]:
    """Counter `name` per value of `label` (e.g. steer_serve:policy_refusals by rule)."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples if family.name == name else []:
            if sample.name == f"{name}_total":
                key = sample.labels.get(label, "")
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals
