"""A short run of the OpenAPI fuzz (schemathesis) against a real server, so the harness cannot rot
and a regression that turns hostile input into a 5xx or kills the engine fails CI.

Same code path as `python -m loadtests.fuzz_openapi` (`launch_fuzz_server` + `run_fuzz`), with
~150 requests instead of >= 2000; the full run's report is docs/reliability/fuzz/.
"""

from __future__ import annotations

import pytest

from loadtests.fuzz_openapi import ADMIN_KEY, launch_fuzz_server
from loadtests.fuzz_policy import PROBE_KEY, forbidden
from loadtests.fuzz_runner import run_fuzz

pytestmark = pytest.mark.slow

BUDGET = 150


@pytest.fixture(scope="module")
def fuzz_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Its own server: the fuzz registers and deletes vectors, presets and kill switches."""
    work = tmp_path_factory.mktemp("fuzz")
    server = launch_fuzz_server(work, work)
    request.addfinalizer(server.stop)
    return server.wait_ready()


def test_schema_publishes_model_bounds_and_admin_bodies(fuzz_server) -> None:
    schema = fuzz_server.client.get("/openapi.json").json()
    models = schema["components"]["schemas"]
    add = models["AddIntervention"]["properties"]
    inline = next(o for o in add["vector"]["anyOf"] if o.get("type") == "array")
    assert inline["minItems"] == inline["maxItems"] == 128
    layers = next(o for o in add["layers"]["anyOf"] if o.get("type") == "array")
    assert layers["items"] == {"type": "integer", "minimum": 0, "maximum": 3}
    items = models["SteeringSpec"]["properties"]["interventions"]["anyOf"][0]
    assert items["maxItems"] == 16 and "experts" not in items["items"]["discriminator"]["mapping"]  # dense model
    upload = schema["paths"]["/v1/steering/vectors"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"] and upload["security"]


def test_fuzz_gets_no_5xx_and_leaves_the_server_intact(fuzz_server) -> None:
    result = run_fuzz(fuzz_server.url, fuzz_server.model, ADMIN_KEY, BUDGET, seed=1)
    assert result.requests >= BUDGET
    assert not result.server_errors, result.server_errors[:3]
    assert not result.transport_errors, result.transport_errors[:3]
    assert result.alive_after and fuzz_server.is_alive()
    assert result.probe_after == result.probe_before != result.probe_unsteered
    assert result.steered_ok > 0, "no generated steered request reached the engine"
    assert {"200", "400"} <= set(result.by_status) and any(s in result.by_status for s in ("401", "403"))
    assert result.problems == []


def test_vector_overflowing_float32_is_a_400(fuzz_server) -> None:
    """Regression (found by this fuzz): 1e300 is finite JSON but inf in float32; it ran as a 200
    generating from NaN logits. Now a 400 naming the value."""
    body = {"model": fuzz_server.model, "prompt": "hi", "max_tokens": 2, "steering": {"interventions": [
        {"type": "add", "vector": [1e300] + [0.0] * 127, "layers": [1]}]}}
    response = fuzz_server.client.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "steering.interventions[0].vector"


@pytest.fixture(scope="module")
def policed_fuzz_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The same server under the restrictive policy of loadtests/fuzz_policy.py."""
    work = tmp_path_factory.mktemp("fuzz-policy")
    server = launch_fuzz_server(work, work, policy=True)
    request.addfinalizer(server.stop)
    return server.wait_ready()


def test_fuzz_under_a_restrictive_policy_gets_no_5xx_and_no_2xx_for_forbidden_bodies(policed_fuzz_server) -> None:
    server = policed_fuzz_server
    result = run_fuzz(server.url, server.model, ADMIN_KEY, BUDGET, seed=2, judge=forbidden, probe_key=PROBE_KEY)
    assert result.requests >= BUDGET
    assert not result.server_errors, result.server_errors[:3]
    assert not result.policy_violations, result.policy_violations[:3]
    assert result.alive_after and result.probe_after == result.probe_before != result.probe_unsteered
    completions = [c for op, c in result.by_operation.items() if "completions" in op and "published" not in op]
    assert sum(c["403"] for c in completions) > 0  # the policy did refuse generated bodies
    assert result.problems == []
