"""The steering policy on a real server: two callers with different `--api-key` values, each rule
allowed and refused (403 naming the rule), refused requests never reaching the engine, refusals
counted by rule on /metrics, arms served whatever the caller's rule, reload with a mistake kept
out (400), and `serve --policy` with a mistake stopping before vLLM starts.

One module-scoped tiny server (eager). Every check that needs no server is in
tests/steer_serve/policy/.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pytest
import yaml

from harness.experiments import experiment, write_experiments
from harness.metrics import counter_by_label, counter_total
from harness.servers import ADMIN_KEY, REPO_ROOT, Server
from harness.tiny_models import TINY_HIDDEN
from steer_serve.library.steering_vector import SteeringVector
from steer_serve.library.vector_formats import read_vector, write_vector

pytestmark = pytest.mark.slow

KEY1, KEY2 = "policy-key-one", "policy-key-two"
ONE, TWO, ADMIN = ({"Authorization": f"Bearer {key}"} for key in (KEY1, KEY2, ADMIN_KEY))
INLINE = [0.25] * TINY_HIDDEN
REFUSALS = "steer_serve:policy_refusals"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _policy(tiny_b_hash: str) -> dict:
    return {
        "default": {  # KEY1 (and the admin key): not listed
            "inline_vectors": False, "kinds": ["add"], "vectors": {"allow": ["tiny_*"], "deny": ["tiny_b"]},
            "presets": {"allow": ["soft"]}, "layers": ["1-2"], "max_abs_scale": 4, "max_dose": 0.5,
            "max_interventions": 2, "override_experiments": False,
        },
        "callers": {"lab": {  # KEY2
            "keys_sha256": [_sha(KEY2)], "kinds": ["add", "ablate", "heads"],
            "vectors": {"allow": [f"sha256:{tiny_b_hash}", "tiny_a"]}, "presets": {"allow": [], "deny": []},
            "max_abs_scale": 50,
        }},
        "arms": {"kinds": ["add"], "inline_vectors": True},
    }


@pytest.fixture(scope="module")
def policed(request, tiny_llama_dir, tiny_vector_dir, log_dir, tmp_path_factory) -> Server:
    root = tmp_path_factory.mktemp("policy")
    vectors, presets = root / "vectors", root / "presets"
    shutil.copytree(tiny_vector_dir, vectors)
    rng = np.random.default_rng(3)
    write_vector(SteeringVector({1: rng.standard_normal(TINY_HIDDEN).astype(np.float32)}, {"model": "t"}),
                 vectors / "tiny_b.safetensors")
    presets.mkdir()
    (presets / "soft.yaml").write_text("interventions: [{type: add, vector: tiny_a, layers: [1, 2], scale: 1.0}]\n")
    experiments = write_experiments(root / "experiments", experiment("tone", [
        {"name": "control", "weight": 1, "control": True},
        {"name": "inline", "weight": 3, "interventions": [{"type": "add", "vector": INLINE, "layers": [3], "scale": 2.0}]},
    ]))
    tiny_b_hash = read_vector(vectors / "tiny_b.safetensors").content_sha256()
    policy = root / "policy.yaml"
    policy.write_text(yaml.safe_dump(_policy(tiny_b_hash), sort_keys=False))
    server = Server(tiny_llama_dir, log_dir, vector_dir=vectors, eager=True, extra_args=[
        "--preset-dir", str(presets), "--experiments", str(experiments), "--admin-key", ADMIN_KEY,
        "--policy", str(policy), "--api-key", KEY1, KEY2, ADMIN_KEY])
    request.addfinalizer(server.stop)
    server.policy_path = policy
    return server.wait_ready()


def _complete(server: Server, steering: dict | None, headers: dict, **fields) -> httpx.Response:
    body = {"model": server.model, "prompt": "Hello there", "max_tokens": 3, "temperature": 0.0, **fields}
    if steering is not None:
        body["steering"] = steering
    return server.client.post("/v1/completions", json=body, headers=headers)


def _add(vector, **fields) -> dict:
    return {"interventions": [{"type": "add", "vector": vector, **fields}]}


def _abl(vector, **fields) -> dict:
    return {"interventions": [{"type": "ablate", "vector": vector, **fields}]}


# rule field -> [(caller headers, steering, extra body fields, expected status, rule named by a 403)]
CASES = {
    "inline_vectors": [(ONE, _add(INLINE, layers=[1]), {}, 403, "default.inline_vectors"),
                       (TWO, _add(INLINE, layers=[1]), {}, 200, None)],
    "kinds": [(ONE, _abl("tiny_a", layers=[1]), {}, 403, "default.kinds"),
              (TWO, _abl("tiny_a", layers=[1]), {}, 200, None), (ONE, _add("tiny_a", layers=[1]), {}, 200, None)],
    "vectors": [(ONE, _add("tiny_b"), {}, 403, "default.vectors"), (TWO, _add("tiny_b"), {}, 200, None),
                (ONE, _add("tiny_a", layers=[2]), {}, 200, None)],
    "presets": [(ONE, {"preset": "soft"}, {}, 200, None), (TWO, {"preset": "soft"}, {}, 403, "lab.presets")],
    "layers": [(ONE, _add("tiny_a"), {}, 403, "default.layers"),  # tiny_a's default layers: 0..3
               (TWO, _add("tiny_a"), {}, 200, None), (ONE, _add("tiny_a", layers=[1, 2]), {}, 200, None)],
    "max_abs_scale": [(ONE, _add("tiny_a", layers=[1], scale=4.5), {}, 403, "default.max_abs_scale"),
                      (ONE, _add("tiny_a", layers=[1], scale=-4), {}, 200, None),
                      (TWO, _add("tiny_a", layers=[1], scale=45), {}, 200, None),
                      (TWO, _add("tiny_a", layers=[1], scale=55), {}, 403, "lab.max_abs_scale")],
    "max_interventions": [(ONE, {"interventions": _add("tiny_a", layers=[1])["interventions"] * 3}, {}, 403,
                           "default.max_interventions"),
                          (TWO, {"interventions": _add("tiny_a", layers=[1])["interventions"] * 3}, {}, 200, None)],
    "observe": [(ONE, None, {"observe": {"residual": [1]}}, 403, "default.observe"),
                (TWO, None, {"observe": {"residual": [1]}}, 403, "lab.observe"), (TWO, None, {}, 200, None)],
    "override_experiments": [(ONE, _add("tiny_a", layers=[1]), {"user": "u-7"}, 403, "default.override_experiments"),
                             (TWO, _add("tiny_a", layers=[1]), {"user": "u-7"}, 200, None)],
}


@pytest.mark.parametrize("field", sorted(CASES))
def test_each_rule_allows_and_refuses_per_caller(policed, field: str) -> None:
    for headers, steering, fields, status, rule in CASES[field]:
        response = _complete(policed, steering, headers, **fields)
        assert response.status_code == status, (headers, steering, response.text)
        if status == 403:
            error = response.json()["error"]
            assert error["rule"] == rule and f"policy rule {rule}" in error["message"], error
            assert error["type"] == "PermissionDeniedError"


def _engine(server: Server) -> tuple:
    stats = server.client.get("/v1/steering/engine", headers=ADMIN).json()
    return (counter_total(server.client, "vllm:request_success"), counter_total(server.client, "vllm:prompt_tokens"),
            stats)


def test_refused_requests_never_reach_the_engine_and_are_counted_by_rule(policed) -> None:
    refused = [(headers, steering, fields) for cases in CASES.values()
               for headers, steering, fields, status, _ in cases if status == 403]
    before, counted = _engine(policed), counter_by_label(policed.client, REFUSALS, "rule")
    for headers, steering, fields in refused:
        assert _complete(policed, steering, headers, **fields).status_code == 403
    assert _engine(policed) == before  # no request finished, no prompt token computed, no slot touched
    after = counter_by_label(policed.client, REFUSALS, "rule")
    expected = {rule for cases in CASES.values() for *_, status, rule in cases if status == 403}
    assert {rule for rule in after if after[rule] > counted.get(rule, 0)} == expected
    assert _complete(policed, _add("tiny_a", layers=[1]), ONE).status_code == 200
    assert _engine(policed)[0] == before[0] + 1  # guard: an allowed request is seen by the same counters
    scrape = policed.client.get("/metrics").text
    assert KEY1 not in scrape and KEY2 not in scrape and _sha(KEY2) not in scrape


def test_the_rule_follows_the_key_vllm_authenticated(policed) -> None:
    """vLLM checks the first of repeated Authorization headers; a second one must not choose the rule."""
    body = {"model": policed.model, "prompt": "Hi", "max_tokens": 2, "steering": _add(INLINE, layers=[1])}
    for first, second, status in ((KEY2, "nobody", 200), (KEY1, KEY2, 403)):
        headers = httpx.Headers([("Authorization", f"Bearer {first}"), ("Authorization", f"Bearer {second}")])
        assert policed.client.post("/v1/completions", json=body, headers=headers).status_code == status


def test_same_edits_get_each_callers_dose_limit(policed) -> None:
    steering = _add("tiny_a", layers=[1], scale=3.0)
    one, two = (_complete(policed, steering, h) for h in (ONE, TWO))
    assert one.status_code == two.status_code == 200
    fingerprint = "x-steer-serve-fingerprint"
    assert one.headers[fingerprint] != two.headers[fingerprint]  # default's max_dose 0.5 is part of the edit


def test_an_experiment_arm_is_served_whatever_the_callers_rule(policed) -> None:
    """The `inline` arm (inline vector, layer 3) breaks the default rule, but the operator chose it."""
    arms = set()
    for index in range(32):  # weights 1:3, so P(one arm never drawn) < 1e-4
        response = _complete(policed, None, ONE, user=f"unit-{index}")
        assert response.status_code == 200, response.text
        arms.add(response.headers.get("x-steer-serve-arm"))
    assert arms == {"control", "inline"}


def _edited(text: str, **fields) -> str:
    """The policy text with fields of the default rule replaced or added."""
    policy = yaml.safe_load(text)
    policy["default"].update(fields)
    return yaml.safe_dump(policy, sort_keys=False)


MISTAKES = [  # (fields of the default rule, what the 400 must say)
    ({"max_dos": 0.5}, "default.max_dos: Extra inputs are not permitted"),
    ({"vectors": {"allow": ["tiny_[*"]}}, "default.vectors.allow: Value error, [0] bad glob 'tiny_[*'"),
    ({"vectors": {"allow": ["tiny_*"], "deny": ["tiny_c"]}}, "default.vectors.deny[0]: unknown vector 'tiny_c'"),
]


def test_reload_with_a_mistake_keeps_the_old_policy(policed) -> None:
    path = policed.policy_path
    good = path.read_text()
    try:
        for fields, fragment in MISTAKES:
            path.write_text(_edited(good, **fields))
            assert policed.client.post("/v1/steering/policy/reload", headers=ONE).status_code == 403  # admin only
            response = policed.client.post("/v1/steering/policy/reload", headers=ADMIN)
            assert response.status_code == 400, response.text
            message = response.json()["error"]["message"]
            assert "the previous policy stays in force" in message and str(path) in message and fragment in message
            assert _complete(policed, _add("tiny_b"), ONE).json()["error"]["rule"] == "default.vectors"
        path.write_text(_edited(good, vectors={"allow": ["tiny_*"]}))
        response = policed.client.post("/v1/steering/policy/reload", headers=ADMIN)
        assert response.status_code == 200 and response.json()["rules"] == ["default", "lab"], response.text
        assert _complete(policed, _add("tiny_b"), ONE).status_code == 200  # the new policy is in force
    finally:
        path.write_text(good)
        assert policed.client.post("/v1/steering/policy/reload", headers=ADMIN).status_code == 200


def test_serve_with_a_policy_mistake_stops_before_vllm_starts(tmp_path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("default: {inline_vectors: false, vectors: {allow: ['gl[oomy']}}\n")
    done = subprocess.run([sys.executable, "-m", "steer_serve.cli", "serve", "--policy", str(path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"{path}: default.vectors.allow: Value error, [0] bad glob 'gl[oomy'" in done.stderr, done.stderr
    assert "vllm" not in done.stderr.lower()  # refused before the server command was even printed
