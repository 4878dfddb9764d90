"""The runtime vector library and presets against a real tiny-model server, without restarts
except where persistence is the point: register -> use (same as inline) -> delete -> 400; a
vector deleted while a long stream uses it; presets alone and with inline interventions; admin
auth; bad uploads; everything still there after the server restarts on the same directories
(vectors, presets, experiments with their arm assignments, and an engaged kill switch)."""

from __future__ import annotations

import json
import shutil
import threading

import httpx
import numpy as np
import pytest

from harness.servers import ADMIN_KEY, Server
from harness.tiny_models import TINY_HIDDEN
from steer_serve.experiments.assignment import arm_index
from steer_serve.library.steering_vector import SteeringVector
from steer_serve.library.vector_formats import vector_bytes
from harness.completions import completion_body
from harness.experiments import experiment, two_arms, write_experiments

pytestmark = pytest.mark.slow

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PROMPT = [1, 504, 3130, 314, 253, 1375]
FINGERPRINT = "x-steer-serve-fingerprint"
DIRECTION = np.random.default_rng(11).standard_normal(TINY_HIDDEN).astype(np.float32)
LAYERS = [1, 2]
EXPERIMENT = experiment("kept_exp", two_arms([{"type": "add", "vector": [0.5] * TINY_HIDDEN, "layers": [1], "scale": 2.0}]))


class RestartableServer:
    """The one server of this module; `restart()` stops it and starts a new one on the same dirs."""

    def __init__(self, start) -> None:
        self._start = start
        self.server = start()

    def restart(self) -> int:
        """Stop (SIGTERM) and start again; returns the stopped server's exit status."""
        self.server.stop()
        status = self.server.process.returncode
        self.server = self._start()
        return status


@pytest.fixture(scope="module")
def library_server(request, tiny_llama_dir, tiny_vector_dir, log_dir, tmp_path_factory) -> RestartableServer:
    root = tmp_path_factory.mktemp("runtime-library")
    vectors, presets = root / "vectors", root / "presets"
    shutil.copytree(tiny_vector_dir, vectors)  # never modify the shared fixture (or configs/)
    presets.mkdir()
    experiments = write_experiments(root / "experiments", EXPERIMENT)  # keyed by `user`: the other tests send none

    def start() -> Server:
        server = Server(tiny_llama_dir, log_dir, vector_dir=vectors, eager=True,
                        extra_args=["--preset-dir", str(presets), "--admin-key", ADMIN_KEY,
                                    "--experiments", str(experiments)])
        try:
            return server.wait_ready()
        except BaseException:
            server.stop()
            raise

    holder = RestartableServer(start)
    holder.vector_dir, holder.preset_dir = vectors, presets
    request.addfinalizer(lambda: holder.server.stop())
    return holder


def _same_direction_vector(layers=LAYERS, **metadata: str) -> SteeringVector:
    return SteeringVector({layer: DIRECTION.copy() for layer in layers}, {"model": "tiny-llama", **metadata})


def _upload(server: Server, name: str, data: bytes, headers=ADMIN, **form: str) -> httpx.Response:
    return server.client.post("/v1/steering/vectors", files={"file": (f"{name}.bin", data)},
                              data={"name": name, **form}, headers=headers)


def _completion(server: Server, steering: dict | None, max_tokens: int = 8) -> httpx.Response:
    return server.client.post("/v1/completions", json=completion_body(server.model, PROMPT, max_tokens, steering))


def _tokens(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["logprobs"]["tokens"]


INLINE = {"interventions": [{"type": "add", "vector": DIRECTION.tolist(), "layers": LAYERS, "scale": 0.5}]}


def test_admin_routes_need_the_key(library_server) -> None:
    server = library_server.server
    data = vector_bytes(_same_direction_vector(), ".safetensors")[0]
    assert _upload(server, "nokey", data, headers={}).status_code == 401
    assert _upload(server, "nokey", data, headers={"Authorization": "Bearer wrong"}).status_code == 403
    preset = {"name": "p", "interventions": [{"type": "add", "vector": "tiny_a"}]}
    assert server.client.post("/v1/steering/presets", json=preset).status_code == 401
    assert server.client.post("/v1/steering/presets", json=preset, headers={"Authorization": "Bearer x"}).status_code == 403
    assert server.client.delete("/v1/steering/vectors/tiny_a").status_code == 401
    assert server.client.delete("/v1/steering/presets/p", headers={"Authorization": "Basic x"}).status_code == 401
    assert "nokey" not in [v["name"] for v in server.client.get("/v1/steering/vectors").json()["data"]]


def test_register_use_delete_without_restart(library_server) -> None:
    server = library_server.server
    plain = _tokens(_completion(server, None))
    inline = _completion(server, INLINE)
    assert _tokens(inline) != plain, "case too weak to show steering"
    registered = _upload(server, "runtime_v", vector_bytes(_same_direction_vector(method="test"), ".gguf")[0],
                         metadata=json.dumps({"source_data": "unit test"}))
    assert registered.status_code == 201, registered.text
    described = registered.json()
    assert described["layers"] == LAYERS and described["method"] == "test" and described["source_data"] == "unit test"
    named = _completion(server, {"interventions": [{"type": "add", "vector": "runtime_v", "scale": 0.5}]})
    assert named.headers[FINGERPRINT] == inline.headers[FINGERPRINT]
    assert _tokens(named) == _tokens(inline)
    assert named.json()["choices"][0]["logprobs"]["token_logprobs"] == inline.json()["choices"][0]["logprobs"]["token_logprobs"]
    assert server.client.delete("/v1/steering/vectors/runtime_v", headers=ADMIN).status_code == 200
    gone = _completion(server, {"interventions": [{"type": "add", "vector": "runtime_v", "scale": 0.5}]})
    assert gone.status_code == 400 and "unknown vector 'runtime_v'" in gone.json()["error"]["message"]
    loaded = len(server.client.get("/v1/steering/vectors").json()["data"])
    gauge = [line for line in server.client.get("/metrics").text.splitlines()
             if line.startswith("steer_serve:vectors_loaded")]
    assert [float(line.split()[-1]) for line in gauge] == [float(loaded)], gauge


def test_vector_deleted_during_a_long_stream(library_server) -> None:
    """The stream was resolved into its own payload: deleting the vector mid-stream changes nothing."""
    server = library_server.server
    max_tokens = 900  # seconds of decoding on CPU; the delete comes after the first 5 tokens
    assert _upload(server, "inflight", vector_bytes(_same_direction_vector(), ".safetensors")[0]).status_code == 201
    expected = _completion(server, INLINE, max_tokens).json()["choices"][0]
    body = completion_body(server.model, PROMPT, max_tokens,
                           {"interventions": [{"type": "add", "vector": "inflight", "scale": 0.5}]})
    body["stream"] = True
    tokens: list[str] = []
    finish = None
    chunks_after_delete = 0
    deleted = threading.Event()
    with httpx.Client(base_url=server.url, timeout=300) as client:
        with client.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200 and response.headers[FINGERPRINT]
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                choice = json.loads(line[6:])["choices"][0]
                tokens += choice["logprobs"]["tokens"]
                finish = choice.get("finish_reason") or finish
                if deleted.is_set():
                    chunks_after_delete += 1
                elif len(tokens) >= 5:
                    answer = server.client.delete("/v1/steering/vectors/inflight", headers=ADMIN)
                    assert answer.status_code == 200, answer.text
                    deleted.set()
    assert deleted.is_set() and chunks_after_delete > 100, chunks_after_delete  # really in flight when deleted
    assert finish == "length" and tokens == expected["logprobs"]["tokens"]
    assert _completion(server, {"interventions": [{"type": "add", "vector": "inflight"}]}).status_code == 400


def test_presets_alone_and_with_inline_interventions(library_server) -> None:
    server = library_server.server
    preset = {"name": "tiny_pair", "description": "e2e",
              "interventions": [{"type": "add", "vector": "tiny_a", "layers": [1], "scale": 0.2}]}
    created = server.client.post("/v1/steering/presets", json=preset, headers=ADMIN)
    assert created.status_code == 201, created.text
    via_preset = _completion(server, {"preset": "tiny_pair"})
    inline = _completion(server, {"interventions": preset["interventions"]})
    assert via_preset.headers[FINGERPRINT] == inline.headers[FINGERPRINT] and _tokens(via_preset) == _tokens(inline)
    extra = INLINE["interventions"]
    combined = _completion(server, {"preset": "tiny_pair", "interventions": extra})
    spelled_out = _completion(server, {"interventions": preset["interventions"] + extra})
    assert combined.headers[FINGERPRINT] == spelled_out.headers[FINGERPRINT] != via_preset.headers[FINGERPRINT]
    assert _tokens(combined) == _tokens(spelled_out)
    chat = server.client.post("/v1/chat/completions", json={
        "model": server.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
        "temperature": 0, "steering": {"preset": "tiny_pair"}})
    assert chat.status_code == 200 and chat.headers[FINGERPRINT] == via_preset.headers[FINGERPRINT]
    unknown = _completion(server, {"preset": "no_such_preset"})
    assert unknown.status_code == 400 and "unknown preset 'no_such_preset'" in unknown.json()["error"]["message"]
    assert unknown.json()["error"]["param"] == "steering.preset"
    bad = server.client.post("/v1/steering/presets", headers=ADMIN, json={
        "name": "too_deep", "interventions": [{"type": "add", "vector": "tiny_a", "layers": [9]}]})
    assert bad.status_code == 400 and "layer 9 is out of range" in bad.json()["error"]["message"]
    assert [p["name"] for p in server.client.get("/v1/steering/presets").json()["data"]] == ["tiny_pair"]


@pytest.mark.parametrize("case", ["junk", "truncated", "wide", "too_deep", "traversal", "no_file"])
def test_bad_uploads_get_400(library_server, case) -> None:
    server = library_server.server
    good = vector_bytes(_same_direction_vector(), ".safetensors")[0]
    if case == "no_file":
        answer = server.client.post("/v1/steering/vectors", data={"name": "x"}, headers=ADMIN)
    else:
        name, data = "bad_upload", good
        if case == "junk":
            data = b"GGUF but not really"
        elif case == "truncated":
            data = good[: len(good) // 2]
        elif case == "wide":
            data = vector_bytes(SteeringVector({1: np.ones(TINY_HIDDEN * 2, np.float32)}), ".safetensors")[0]
        elif case == "too_deep":
            data = vector_bytes(_same_direction_vector(layers=[1, 12]), ".safetensors")[0]
        elif case == "traversal":
            name = "../escape"
        answer = _upload(server, name, data)
    assert answer.status_code == 400, answer.text
    message = answer.json()["error"]["message"]
    expected = {"wide": f"hidden size {TINY_HIDDEN * 2} does not match", "too_deep": "layers [12] are outside",
                "traversal": "not allowed", "junk": "not a valid GGUF", "truncated": "not a valid safetensors"}
    assert expected.get(case, "file") in message
    assert server.is_alive()


def _arm(server: Server, user: str) -> str:
    body = {**completion_body(server.model, PROMPT, 2), "user": user}
    response = server.client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.headers["x-steer-serve-arm"]


def _kill_switch(server: Server, engaged: bool) -> None:
    answer = server.client.post("/v1/steering/experiments/kept_exp/kill-switch", json={"engaged": engaged}, headers=ADMIN)
    assert answer.status_code == 200, answer.text


def test_changes_survive_a_restart(library_server) -> None:
    """Last in this module: it restarts the server on the same directories. The kill switch stays
    engaged across the restart (a restart must not quietly re-enable an arm an operator stopped)."""
    server = library_server.server
    assert _upload(server, "kept", vector_bytes(_same_direction_vector(), ".safetensors")[0]).status_code == 201
    preset = {"name": "kept_preset", "interventions": [{"type": "add", "vector": "kept", "scale": 0.5}]}
    assert server.client.post("/v1/steering/presets", json=preset, headers=ADMIN).status_code == 201
    before = _completion(server, {"preset": "kept_preset"})
    names_before = [v["name"] for v in server.client.get("/v1/steering/vectors").json()["data"]]
    assert "inflight" not in names_before and "kept" in names_before
    user = next(u for u in (f"user-{i}" for i in range(100)) if arm_index(EXPERIMENT["salt"], u, [1, 1]) == 1)
    assert _arm(server, user) == "treatment"
    _kill_switch(server, True)
    assert _arm(server, user) == "control"
    # A normal stop is a clean exit (0); an engine death is not (test_faults.py checks that side).
    stopped = library_server.server
    assert library_server.restart() == 0, stopped.log_tail()
    server = library_server.server
    assert [v["name"] for v in server.client.get("/v1/steering/vectors").json()["data"]] == names_before
    assert server.client.get("/v1/steering/vectors/kept").json()["content_sha256"] == _same_direction_vector().content_sha256()
    after = _completion(server, {"preset": "kept_preset"})
    assert after.headers[FINGERPRINT] == before.headers[FINGERPRINT] and _tokens(after) == _tokens(before)
    assert sorted(p.name for p in library_server.vector_dir.iterdir() if not p.name.startswith(".")) == [
        "kept.json", "kept.safetensors", "tiny_a.safetensors"]
    assert not [p for p in library_server.vector_dir.iterdir() if p.name.endswith(".tmp")]
    listed = server.client.get("/v1/steering/experiments").json()["data"]
    assert [(e["key"], e["killed"]) for e in listed] == [("kept_exp", True)]
    assert _arm(server, user) == "control"
    _kill_switch(server, False)
    assert _arm(server, user) == "treatment", "the unit's arm is the same after the restart"
