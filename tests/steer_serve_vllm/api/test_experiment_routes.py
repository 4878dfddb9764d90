"""Admin routes without a configured admin key refuse with 403 and say why; the rest still answer.
With the database unreachable: feedback is still accepted (spooled), the listing reports the
store unhealthy, and results and kill switches answer 503 naming the store."""

from __future__ import annotations

from types import SimpleNamespace

from fastapi import FastAPI
from fastapi.testclient import TestClient

from steer_serve.experiments.arm_selector import ArmSelector
from steer_serve.experiments.store_services import StoreServices
from steer_serve_vllm.api.gateway import RequestGateway
from steer_serve.settings import Settings
from steer_serve_vllm.api.experiment_routes import router
from harness.experiments import experiment, two_arms, write_experiments
from harness.libraries import resolver, vector
from harness.servers import free_port

ADD = [{"type": "add", "vector": "v", "layers": [1], "scale": 2.0}]


def _client(tmp_path, admin_key: str | None, database: str | None = None) -> TestClient:
    resolve = resolver(tmp_path, v=vector())
    directory = write_experiments(tmp_path / "exp", experiment("e", two_arms(ADD)))
    app = FastAPI()
    app.include_router(router)
    settings = Settings(vector_dir=tmp_path, experiments_dir=directory, admin_key=admin_key, experiments_db=database)
    store = StoreServices.open(settings)
    arms = ArmSelector(directory, resolve, store.control)
    app.state.steer_serve = SimpleNamespace(settings=settings, gateway=RequestGateway(resolve, arms), store=store)
    return TestClient(app)


def test_no_admin_key_configured_means_403_saying_so(tmp_path) -> None:
    client = _client(tmp_path, None)
    for path in ("/v1/steering/experiments/reload", "/v1/steering/experiments/kill-switch", "/v1/steering/experiments/e/kill-switch"):
        answer = client.post(path, json={"engaged": True}, headers={"Authorization": "Bearer anything"})
        assert answer.status_code == 403 and "no admin key is configured" in answer.json()["error"]["message"]
    assert client.get("/v1/steering/experiments").json()["data"][0]["killed"] is False


def test_kill_switch_body_and_unknown_experiment_are_checked(tmp_path) -> None:
    client = _client(tmp_path, "k")
    admin = {"Authorization": "Bearer k"}
    assert client.post("/v1/steering/experiments/nope/kill-switch", json={"engaged": True}, headers=admin).status_code == 404
    assert client.post("/v1/steering/experiments/e/kill-switch", json={"engaged": "yes"}, headers=admin).status_code == 400
    assert client.post("/v1/steering/experiments/e/kill-switch", json={"engaged": True}, headers=admin).json()["killed"] == ["e"]
    assert client.get("/v1/steering/experiments").json()["data"][0]["killed"] is True


def test_an_unreachable_database_never_fails_feedback_and_says_what_it_cannot_do(tmp_path) -> None:
    client = _client(tmp_path, "k", database=f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    answer = client.post("/v1/steering/feedback", json={"request_id": "chatcmpl-1", "metric": "liked", "value": True})
    assert answer.status_code == 200 and answer.json()["accepted"] is True
    store = client.get("/v1/steering/experiments").json()["store"]
    assert store["healthy"] is False and "Connection refused" in store["last_error"] and store["outbox_pending_bytes"] > 0
    for response in (client.get("/v1/steering/experiments/e/results"),
                     client.post("/v1/steering/experiments/e/kill-switch", json={"engaged": True},
                                 headers={"Authorization": "Bearer k"})):
        assert response.status_code == 503 and "127.0.0.1" in response.json()["error"]["message"]
