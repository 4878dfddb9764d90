"""Every admin route answers our own 401 without a bearer key and 403 with a wrong one, before it
looks at its body or at whether experiments are enabled (FastAPI TestClient, no vLLM).

With vLLM's `--api-key` in front, callers without any valid key get vLLM's 401 first; that and
the user-key-is-not-the-admin-key 403 are covered against a real server in
tests/e2e/test_hostile_input.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from steer_serve.settings import Settings
from steer_serve_vllm.api.experiment_routes import router as experiment_router
from steer_serve_vllm.api.library_routes import router as library_router

ADMIN_ROUTES = [
    ("POST", "/v1/steering/vectors"),
    ("DELETE", "/v1/steering/vectors/v"),
    ("POST", "/v1/steering/presets"),
    ("DELETE", "/v1/steering/presets/p"),
    ("POST", "/v1/steering/experiments/reload"),
    ("POST", "/v1/steering/experiments/kill-switch"),
    ("POST", "/v1/steering/experiments/tone/kill-switch"),
]


def _client(tmp_path, admin_key: str | None) -> TestClient:
    """Routes with only the state the auth check reads: a refusal must come before anything else."""
    app = FastAPI()
    app.include_router(library_router)
    app.include_router(experiment_router)
    settings = Settings(vector_dir=tmp_path, preset_dir=tmp_path, admin_key=admin_key)
    app.state.steer_serve = SimpleNamespace(settings=settings, gateway=SimpleNamespace(arms=None))
    return TestClient(app)


@pytest.mark.parametrize("method, path", ADMIN_ROUTES)
def test_every_admin_route_refuses_missing_and_wrong_keys(tmp_path, method: str, path: str) -> None:
    client = _client(tmp_path, "right")
    for headers in ({}, {"Authorization": "right"}, {"Authorization": "Basic right"}, {"Authorization": "Bearer "}):
        answer = client.request(method, path, headers=headers, json={"engaged": True})
        assert answer.status_code == 401, (headers, answer.text)
        assert "send the admin key as `Authorization: Bearer KEY`" in answer.json()["error"]["message"]
    for wrong in ("wrong", "RIGHT", "righ", "rightt"):
        answer = client.request(method, path, headers={"Authorization": f"Bearer {wrong}"}, json={"engaged": True})
        assert answer.status_code == 403 and answer.json()["error"]["message"] == "wrong admin key", (wrong, answer.text)


@pytest.mark.parametrize("method, path", ADMIN_ROUTES)
def test_every_admin_route_is_closed_without_a_configured_key(tmp_path, method: str, path: str) -> None:
    answer = _client(tmp_path, None).request(method, path, headers={"Authorization": "Bearer anything"})
    assert answer.status_code == 403 and "no admin key is configured" in answer.json()["error"]["message"]
