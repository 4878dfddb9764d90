"""Admin routes without a configured admin key refuse with 403 and say why; the rest still answer."""

from __future__ import annotations

from types import SimpleNamespace

from fastapi import FastAPI
from fastapi.testclient import TestClient

from steer_serve_vllm.api.gateway import RequestGateway
from steer_serve.settings import Settings
from steer_serve_vllm.api.experiment_routes import router
from harness.experiments import experiment, selector, two_arms, write_experiments
from harness.libraries import resolver, vector

ADD = [{"type": "add", "vector": "v", "layers": [1], "scale": 2.0}]


def _client(tmp_path, admin_key: str | None) -> TestClient:
    resolve = resolver(tmp_path, v=vector())
    directory = write_experiments(tmp_path / "exp", experiment("e", two_arms(ADD)))
    app = FastAPI()
    app.include_router(router)
    settings = Settings(vector_dir=tmp_path, experiments_dir=directory, admin_key=admin_key)
    app.state.steer_serve = SimpleNamespace(settings=settings, gateway=RequestGateway(resolve, selector(directory, resolve)))
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
