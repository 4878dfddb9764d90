"""A fleet: two tiny-model replicas (the first with two API-server processes) sharing one real
PostgreSQL, behind a round-robin proxy. Users keep their arm whichever replica serves them,
feedback joins across replicas, a kill switch reaches the other replica within a second, both
give identical results, every request served is one exposure; and with the database killed for
30 s under traffic nothing fails and afterwards every exposure and feedback is stored exactly once."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter

import httpx
import pytest
from sqlalchemy import func, select

from steer_serve.experiments.db_schema import exposures, feedback
from steer_serve.experiments.store import ExperimentStore, database_url
from harness.experiments import experiment, write_experiments
from harness.metrics import counter_total
from harness.proxy import RoundRobinProxy
from harness.servers import ADMIN_KEY, Server

pytestmark = pytest.mark.slow

PROMPT = [1, 504, 3130, 314, 253, 1375]
USERS = [f"fleet-user-{i:03d}" for i in range(200)]
ARM, EXPERIMENT = "x-steer-serve-arm", "x-steer-serve-experiment"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
OUTAGE_S = 30


@pytest.fixture(scope="module")
def fleet(request, postgres, tiny_llama_dir, tiny_vector_dir, log_dir, tmp_path_factory):
    url = postgres.new_database()
    directory = write_experiments(tmp_path_factory.mktemp("fleet-experiments"), experiment("fleet", [
        {"name": "control", "weight": 1, "control": True},
        {"name": "treatment", "weight": 1, "interventions": [{"type": "add", "vector": "tiny_a", "scale": 4.0}]}]))
    servers = []
    for index, extra in enumerate((["--api-server-count", "2"], [])):
        outbox = tmp_path_factory.mktemp(f"outbox-{index}")  # each replica spools on its own disk
        servers.append(Server(model=tiny_llama_dir, log_dir=log_dir, vector_dir=tiny_vector_dir, eager=True,
                              extra_args=["--experiments", str(directory), "--experiments-db", url,
                                          "--admin-key", ADMIN_KEY, *extra],
                              env={"STEER_SERVE_OUTBOX_DIR": str(outbox)}))
        request.addfinalizer(servers[-1].stop)
    for server in servers:
        server.wait_ready()
    proxy = RoundRobinProxy([s.url for s in servers]).start()
    request.addfinalizer(proxy.stop)
    return servers, proxy, ExperimentStore(database_url(url, None))


def _body(user: str, stream: bool = False) -> dict:
    return {"model": "unused", "prompt": PROMPT, "max_tokens": 4, "temperature": 0.0, "ignore_eos": True,
            "stream": stream, "user": user}


def _response_id(response: httpx.Response) -> str:
    if response.headers["content-type"].startswith("text/event-stream"):
        first = next(line for line in response.text.splitlines() if line.startswith("data: {"))
        return json.loads(first[6:])["id"]
    return response.json()["id"]


async def _post_all(url: str, path: str, bodies: list[dict], concurrency: int = 16) -> list[httpx.Response]:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        async def one(body: dict) -> httpx.Response:
            async with limit:
                return await client.post(path, json=body)
        return await asyncio.gather(*(one(body) for body in bodies))


def _model(server: Server) -> str:
    return server.client.get("/v1/models").json()["data"][0]["id"]


def _stored(store: ExperimentStore, table, ids: set[str], column) -> int:
    return sum(store.read(select(func.count()).select_from(table).where(column.in_(chunk)))[0][0]
               for chunk in _chunks(sorted(ids), 500))


def _chunks(items: list, size: int):
    return (items[i:i + size] for i in range(0, len(items), size))


def _wait(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def traffic(fleet):
    """400 requests through the proxy under concurrency: every user twice, every third streamed."""
    servers, proxy, _ = fleet
    model = _model(servers[0])
    bodies = [{**_body(user, stream=(i + round_) % 3 == 0), "model": model}
              for round_ in range(2) for i, user in enumerate(USERS)]
    responses = asyncio.run(_post_all(proxy.url, "/v1/completions", bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies), [r.text for r in responses if r.status_code != 200][:3]
    return responses


def test_users_keep_their_arm_on_both_replicas(fleet, traffic) -> None:
    servers, _, _ = fleet
    arms: dict[str, set[str]] = {}
    for body_user, response in zip([u for _ in range(2) for u in USERS], traffic):
        arms.setdefault(body_user, set()).add(response.headers[ARM])
    assert all(len(seen) == 1 for seen in arms.values())
    assert Counter(next(iter(a)) for a in arms.values()).keys() == {"control", "treatment"}
    served_by = Counter(r.headers["x-upstream"] for r in traffic)
    assert set(served_by) == {s.url for s in servers} and min(served_by.values()) >= 150
    model = _model(servers[1])
    for user in USERS[:20]:  # directly, bypassing the proxy
        direct = {s.client.post("/v1/completions", json={**_body(user), "model": model}).headers[ARM] for s in servers}
        assert direct == arms[user], user


def test_exposures_equal_requests_served_and_feedback_joins_across_replicas(fleet, traffic) -> None:
    servers, _, store = fleet
    ids = {_response_id(r) for r in traffic}
    assert len(ids) == len(traffic)
    _wait(lambda: _stored(store, exposures, ids, exposures.c.request_id) == len(ids))
    # every other note goes straight to the replica that did not serve its request, the rest to the one
    # that did (through a round-robin proxy which replica a note reaches depends on arrival order)
    by_replica: dict[str, list[dict]] = {s.url: [] for s in servers}
    for i, response in enumerate(traffic):
        served = response.headers["x-upstream"]
        target = next(url for url in by_replica if url != served) if i % 2 == 0 else served
        by_replica[target].append({"request_id": _response_id(response), "metric": "liked", "value": i % 3 == 0})
    answers = [a for url, notes in by_replica.items() for a in asyncio.run(_post_all(url, "/v1/steering/feedback", notes))]
    assert len(answers) == len(traffic) and all(a.status_code == 200 for a in answers)
    _wait(lambda: _stored(store, feedback, ids, feedback.c.request_id) == len(ids))
    time.sleep(1.0)  # the previous test's direct requests are flushed too (every 0.1 s)
    results = [s.client.get("/v1/steering/experiments/fleet/results").json() for s in servers]
    for result in results:
        result.pop("assignments")  # Prometheus counts of each replica's own processes
    assert results[0] == results[1]
    liked = results[0]["metrics"][0]
    assert liked["metric"] == "liked" and liked["n"] + liked["control_n"] == len(traffic)
    assert results[0]["feedback_unmatched"] == 0
    assert sum(a["requests"] for a in results[0]["arms"]) >= len(traffic)


def test_kill_switch_on_one_replica_applies_on_the_other_within_a_second(fleet, traffic) -> None:
    servers, _, _ = fleet
    user = next(u for u, r in zip(USERS, traffic) if r.headers[ARM] == "treatment")
    body = {**_body(user), "model": _model(servers[1])}
    try:
        assert servers[0].client.post("/v1/steering/experiments/fleet/kill-switch", json={"engaged": True},
                                      headers=ADMIN).status_code == 200
        engaged = time.monotonic()
        while servers[1].client.get("/v1/steering/experiments").json()["data"][0]["killed"] is not True:
            time.sleep(0.02)
        followed = time.monotonic() - engaged
        assert followed < 1.0, followed
        assert servers[1].client.post("/v1/completions", json=body).headers[ARM] == "control"
    finally:
        servers[1].client.post("/v1/steering/experiments/fleet/kill-switch", json={"engaged": False}, headers=ADMIN)
    _wait(lambda: servers[0].client.post("/v1/completions", json=body).headers[ARM] == "treatment", timeout=2)


class _Traffic(threading.Thread):
    """Completions and feedback through the proxy in a loop until stopped; keeps every answer."""

    def __init__(self, url: str, model: str) -> None:
        super().__init__(daemon=True)
        self.url, self.model = url, model
        self.completions: list[httpx.Response] = []
        self.feedback: list[httpx.Response] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            index = 0
            while not self.stop.is_set():
                user = USERS[index % len(USERS)]
                try:
                    answer = client.post("/v1/completions", json={**_body(user, index % 4 == 0), "model": self.model})
                    self.completions.append(answer)
                    if answer.status_code == 200:
                        self.feedback.append(client.post("/v1/steering/feedback", json={
                            "request_id": _response_id(answer), "metric": "rating", "value": float(index % 5)}))
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                index += 1


def test_database_outage_under_traffic_loses_nothing_and_duplicates_nothing(fleet, postgres) -> None:
    servers, proxy, store = fleet
    loads = [_Traffic(proxy.url, _model(servers[0])) for _ in range(3)]
    for load in loads:
        load.start()
    time.sleep(2)
    postgres.kill()
    try:
        time.sleep(3)
        health = [s.client.get("/v1/steering/experiments").json()["store"] for s in servers]
        assert [h["healthy"] for h in health] == [False, False] and all(h["last_error"] for h in health)
        assert servers[1].client.get("/v1/steering/experiments/fleet/results").status_code == 503
        assert "steer_serve:experiment_store_up 0.0" in servers[1].client.get("/metrics").text
        time.sleep(OUTAGE_S - 3)
        spooled = sum(counter_total(s.client, "steer_serve:experiment_records_spooled") for s in servers)
    finally:
        postgres.start()
    time.sleep(2)
    for load in loads:
        load.stop.set()
    for load in loads:
        load.join(timeout=120)
    completions = [r for load in loads for r in load.completions]
    notes = [r for load in loads for r in load.feedback]
    assert not [f for load in loads for f in load.failures]
    assert Counter(r.status_code for r in completions + notes) == Counter({200: len(completions) + len(notes)})
    assert spooled > 0 and len(completions) > 20
    ids = {_response_id(r) for r in completions}
    feedback_ids = {n.json()["id"] for n in notes}
    assert len(ids) == len(completions) and len(feedback_ids) == len(notes)
    _wait(lambda: _stored(store, exposures, ids, exposures.c.request_id) == len(ids), timeout=60)
    _wait(lambda: _stored(store, feedback, feedback_ids, feedback.c.id) == len(notes), timeout=60)
    assert _stored(store, feedback, ids, feedback.c.request_id) == len(notes)  # no value stored twice
    health = [s.client.get("/v1/steering/experiments").json()["store"] for s in servers]
    assert [h["healthy"] for h in health] == [True, True]
