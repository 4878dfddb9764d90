"""A/B experiments against the real server: many users get sticky arms with headers, exposures
are logged and joined to feedback, results and /metrics show every arm, admin routes are guarded
and the kill switch sends everyone to control."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import httpx
import pytest

from harness.servers import ADMIN_KEY
from steer_serve.cli import main
from sqlalchemy import select

from steer_serve.experiments.db_schema import exposures as exposure_table
from steer_serve.experiments.db_schema import feedback as feedback_table
from steer_serve.experiments.store import ExperimentStore
from harness.metrics import counter_total

pytestmark = pytest.mark.slow

PROMPT = [1, 504, 3130, 314, 253, 1375]
USERS = [f"user-{i:03d}" for i in range(48)]
EXPERIMENT, ARM, FINGERPRINT = "x-steer-serve-experiment", "x-steer-serve-arm", "x-steer-serve-fingerprint"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _completion(server, user: str | None = None, stream: bool = False, **extra) -> dict:
    body = {"model": server.model, "prompt": PROMPT, "max_tokens": 4, "temperature": 0.0, "ignore_eos": True,
            "stream": stream, **extra}
    if stream:  # exact token counts: without a usage chunk they are counted from SSE events, which a loaded
        body["stream_options"] = {"include_usage": True}  # server may coalesce (README, exposure log)
    return body if user is None else {**body, "user": user}


async def _send_all(server, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
        return await asyncio.gather(*(client.post("/v1/completions", json=body) for body in bodies))


def _response_id(response: httpx.Response) -> str:
    if response.headers["content-type"].startswith("text/event-stream"):
        first = next(line for line in response.text.splitlines() if line.startswith("data: {"))
        return json.loads(first[6:])["id"]
    return response.json()["id"]


def _text(response: httpx.Response) -> str:
    return response.json()["choices"][0]["text"]


@pytest.fixture(scope="module")
def traffic(tiny_experiment_server):
    """One request per user (every third streamed), plus unit-less and forced requests."""
    server = tiny_experiment_server
    bodies = [_completion(server, user, stream=i % 3 == 0) for i, user in enumerate(USERS)]
    responses = asyncio.run(_send_all(server, bodies))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    return dict(zip(USERS, responses))


def test_listing_shows_experiments_without_salts(tiny_experiment_server) -> None:
    data = tiny_experiment_server.client.get("/v1/steering/experiments").json()["data"]
    assert [e["key"] for e in data] == ["a_session", "tone"]
    assert [a["name"] for a in data[1]["arms"]] == ["control", "strong", "inline"]
    assert "salt" not in data[1] and data[1]["arms"][0]["fingerprint"] is None


def test_users_get_sticky_arms_with_headers_and_steering(tiny_experiment_server, traffic) -> None:
    server = tiny_experiment_server
    arms = {user: r.headers[ARM] for user, r in traffic.items()}
    assert {r.headers[EXPERIMENT] for r in traffic.values()} == {"tone"}
    assert set(arms.values()) == {"control", "strong", "inline"}
    fingerprints = {a["name"]: a["fingerprint"] for a in server.client.get("/v1/steering/experiments").json()["data"][1]["arms"]}
    for user, response in traffic.items():
        assert response.headers.get(FINGERPRINT) == fingerprints[arms[user]], user
    again = asyncio.run(_send_all(server, [_completion(server, user) for user in USERS[:12]]))
    assert [r.headers[ARM] for r in again] == [arms[user] for user in USERS[:12]]
    plain = server.client.post("/v1/completions", json=_completion(server)).json()["choices"][0]["text"]
    texts = {arms[user]: _text(r) for user, r in zip(USERS[:12], again)}
    assert texts["control"] == plain and texts["strong"] != plain, texts


def test_header_unit_experiment_claims_first(tiny_experiment_server) -> None:
    server = tiny_experiment_server
    response = server.client.post("/v1/completions", json=_completion(server, "user-000"),
                                  headers={"x-session-id": "session-1"})
    assert response.headers[EXPERIMENT] == "a_session" and response.headers[ARM] in {"control", "steered"}


def test_unit_less_and_forced_requests_are_excluded_and_counted(tiny_experiment_server, traffic) -> None:
    server = tiny_experiment_server
    before = server.client.get("/v1/steering/experiments/tone/results").json()["assignments"]
    own = {"interventions": [{"type": "add", "vector": "tiny_a", "scale": 1.0}]}
    unitless = server.client.post("/v1/completions", json=_completion(server))
    forced = server.client.post("/v1/completions", json=_completion(server, "user-001", steering=own))
    assert EXPERIMENT not in unitless.headers and EXPERIMENT not in forced.headers and FINGERPRINT in forced.headers
    after = server.client.get("/v1/steering/experiments/tone/results").json()["assignments"]
    assert sum(after["forced"].values()) == sum(before.get("forced", {}).values()) + 1
    # unit-less: `a_session` (header unit, first in order) is the experiment that lacked a unit
    sessions = server.client.get("/v1/steering/experiments/a_session/results").json()["assignments"]
    assert sessions["no_unit"]["none"] >= 1


def test_exposures_feedback_and_results(tiny_experiment_server, traffic, experiments_dir, tmp_path) -> None:
    server = tiny_experiment_server
    store = ExperimentStore(f"sqlite:///{experiments_dir / 'experiments.db'}")  # the default store
    exposures: dict = {}
    for _ in range(300):  # the outbox is flushed every 0.1 s; under a loaded suite it can lag seconds
        exposures = {r.request_id: r._asdict() for r in store.read(select(exposure_table))}
        if all(_response_id(r) in exposures for r in traffic.values()):
            break
        time.sleep(0.1)
    for user, response in traffic.items():
        record = exposures[_response_id(response)]
        assert record["arm"] == response.headers[ARM] and record["experiment"] == "tone"
        assert record["tokens"] == 4 and record["finish_reason"] == "length" and record["status"] == 200
        assert (record["ttft_s"] is not None) == record["stream"] and record["latency_s"] > 0
    assert "user-0" not in json.dumps(list(exposures.values()))
    for index, (user, response) in enumerate(traffic.items()):
        for metric, value in (("liked", index % 2 == 0), ("rating", float(index % 5))):
            answer = server.client.post("/v1/steering/feedback",
                                        json={"request_id": _response_id(response), "metric": metric, "value": value})
            assert answer.status_code == 200, answer.text
    bad = server.client.post("/v1/steering/feedback", json={"request_id": "x", "metric": "Bad Name", "value": 1})
    assert bad.status_code == 400 and "metric" in bad.json()["error"]["message"]
    for _ in range(300):  # feedback reaches the store through the outbox (flushed every 0.1 s; slower under load)
        if len(list(store.read(select(feedback_table)))) >= 2 * len(traffic):
            break
        time.sleep(0.1)
    results = server.client.get("/v1/steering/experiments/tone/results").json()
    served = Counter(r.headers[ARM] for r in traffic.values())
    assert {a["name"]: a["units"] for a in results["arms"]} == dict(served)
    assert results["sample_ratio"]["p_value"] > 0.001
    assert {(m["metric"], m["arm"], m["kind"]) for m in results["metrics"]} == {
        ("liked", "strong", "binary"), ("liked", "inline", "binary"), ("rating", "strong", "numeric"), ("rating", "inline", "numeric")}
    assert sum(m["n"] for m in results["metrics"] if m["metric"] == "rating") + \
        next(m["control_n"] for m in results["metrics"]) == len(USERS)
    assert main(["ab", "report", "tone", "--experiments", str(experiments_dir), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "tone.png").stat().st_size > 1000


def test_metrics_have_series_per_arm(tiny_experiment_server, traffic) -> None:
    text = tiny_experiment_server.client.get("/metrics").text
    for arm in ("control", "strong", "inline"):
        assert f'steer_serve:e2e_request_latency_seconds_count{{arm="{arm}",experiment="tone"}}' in text
        assert f'steer_serve:time_to_first_token_seconds_count{{arm="{arm}",experiment="tone"}}' in text
    assert counter_total(tiny_experiment_server.client, "steer_serve:requests") >= len(USERS)
    assert counter_total(tiny_experiment_server.client, "steer_serve:generation_tokens") >= 4 * len(USERS)
    assert "steer_serve:vectors_loaded 1.0" in text and "user-0" not in text


def test_admin_routes_need_the_key_and_the_kill_switch_works(tiny_experiment_server, traffic) -> None:
    client = tiny_experiment_server.client
    assert client.post("/v1/steering/experiments/reload").status_code == 401
    assert client.post("/v1/steering/experiments/reload", headers={"Authorization": "Bearer nope"}).status_code == 403
    assert client.post("/v1/steering/experiments/reload", headers=ADMIN).status_code == 200
    user = next(u for u, r in traffic.items() if r.headers[ARM] == "strong")
    body = _completion(tiny_experiment_server, user)
    try:
        assert client.post("/v1/steering/experiments/tone/kill-switch", json={"engaged": True}, headers=ADMIN).status_code == 200
        killed = client.post("/v1/completions", json=body)
        assert killed.headers[ARM] == "control" and FINGERPRINT not in killed.headers
        assert client.get("/v1/steering/experiments").json()["data"][1]["killed"] is True
    finally:
        client.post("/v1/steering/experiments/tone/kill-switch", json={"engaged": False}, headers=ADMIN)
    assert client.post("/v1/completions", json=body).headers[ARM] == "strong"
    try:
        client.post("/v1/steering/experiments/kill-switch", json={"engaged": True}, headers=ADMIN)
        assert client.post("/v1/completions", json=body).headers[ARM] == "control"
    finally:
        client.post("/v1/steering/experiments/kill-switch", json={"engaged": False}, headers=ADMIN)
    time.sleep(1.0)  # the killed exposures reach the store through the outbox (flushed every 0.1 s)
    results = client.get("/v1/steering/experiments/tone/results").json()
    assert next(a for a in results["arms"] if a["name"] == "strong")["killed"] >= 2
