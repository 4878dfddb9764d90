"""Library and preset admin routes over HTTP (FastAPI TestClient, no vLLM): auth, uploads,
conflicts, bad files as 400s, export with the GGUF layer-0 warning, presets CRUD, and that the
steering gateway passes these bodies through untouched."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from steer_serve.library.presets import PresetLibrary
from steer_serve_vllm.api.gateway import Forward, RequestGateway
from steer_serve.settings import Settings
from steer_serve.request.steering_resolver import SteeringResolver
from steer_serve.library.vector_formats import read_vector_bytes, vector_bytes
from steer_serve.library.vector_library import VectorLibrary
from steer_serve_vllm.api.admin_auth import admin_refusal
from steer_serve_vllm.api.library_routes import router
from harness.libraries import SHAPE, vector

KEY = "k"
ADMIN = {"Authorization": f"Bearer {KEY}"}


def _app(tmp_path, admin_key: str | None = KEY, max_vector_bytes: int = 1 << 20):
    (tmp_path / "vectors").mkdir(parents=True)
    (tmp_path / "presets").mkdir()
    settings = Settings(vector_dir=tmp_path / "vectors", preset_dir=tmp_path / "presets", admin_key=admin_key,
                        max_vector_bytes=max_vector_bytes)
    counts: list[int] = []
    library = VectorLibrary(settings.vector_dir, SHAPE, on_change=counts.append)
    plain = SteeringResolver(SHAPE, library, settings)
    presets = PresetLibrary(settings.preset_dir, plain.resolve)
    resolver = plain.with_presets(presets)
    app = FastAPI()
    app.include_router(router)
    app.state.steer_serve = SimpleNamespace(settings=settings, library=library, presets=presets)
    return TestClient(app), resolver, counts


def _upload(client, name: str | None, data: bytes, headers=ADMIN, metadata: str | None = None, query: str = ""):
    form = {} if name is None else {"name": name}
    if metadata is not None:
        form["metadata"] = metadata
    return client.post(f"/v1/steering/vectors{query}", files={"file": ("v.bin", data)}, data=form, headers=headers)


def test_admin_routes_need_the_key(tmp_path) -> None:
    client, _, _ = _app(tmp_path)
    data = vector_bytes(vector(), ".safetensors")[0]
    routes = [("post", "/v1/steering/presets"), ("delete", "/v1/steering/presets/x"), ("delete", "/v1/steering/vectors/x")]
    assert _upload(client, "v", data, headers={}).status_code == 401
    assert _upload(client, "v", data, headers={"Authorization": "Bearer nope"}).status_code == 403
    for method, path in routes:
        assert getattr(client, method)(path).status_code == 401
        assert getattr(client, method)(path, headers={"Authorization": "Bearer nope"}).status_code == 403
    assert client.get("/v1/steering/vectors").json()["data"] == []  # reading is open
    closed, _, _ = _app(tmp_path / "closed", admin_key=None)
    answer = _upload(closed, "v", data)
    assert answer.status_code == 403 and "no admin key is configured" in answer.json()["error"]["message"]


def test_experiment_routes_use_the_shared_check() -> None:
    from steer_serve_vllm.api import experiment_routes

    assert experiment_routes._admin_refusal is admin_refusal


def test_upload_use_list_export_delete(tmp_path) -> None:
    client, resolver, counts = _app(tmp_path)
    source = vector(layers=(0, 2), seed=3)
    answer = _upload(client, "mine", vector_bytes(source, ".gguf")[0], metadata=json.dumps({"method": "pca"}))
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["name"] == "mine" and body["layers"] == [0, 2] and body["method"] == "pca" and body["model_id"] == "unit"
    assert body["content_sha256"] == source.content_sha256() and "llama.cpp" in body["warnings"][0]
    assert counts[-1] == 1
    assert client.get("/v1/steering/vectors/mine").json()["created"] == body["created"]
    exported = client.get("/v1/steering/vectors/mine/export?format=gguf")
    assert exported.status_code == 200 and "direction.0" in exported.headers["x-steer-serve-warning"]
    assert read_vector_bytes(exported.content).content_sha256() == source.content_sha256()
    plain = client.get("/v1/steering/vectors/mine/export")
    assert "x-steer-serve-warning" not in plain.headers and plain.content[8:9] == b"{"
    assert client.get("/v1/steering/vectors/mine/export?format=pt").status_code == 400
    assert _upload(client, "mine", vector_bytes(source, ".safetensors")[0]).status_code == 409
    assert _upload(client, "mine", vector_bytes(vector(seed=8), ".safetensors")[0], query="?replace=true").status_code == 201
    client.post("/v1/steering/presets", json={"name": "p", "interventions": [{"type": "add", "vector": "mine"}]},
                headers=ADMIN)
    deleted = client.delete("/v1/steering/vectors/mine", headers=ADMIN).json()
    assert deleted["files"] == ["mine.safetensors", "mine.json"] and deleted["presets_affected"] == ["p"]
    assert counts[-1] == 0
    assert client.get("/v1/steering/vectors/mine").status_code == 404
    assert client.delete("/v1/steering/vectors/mine", headers=ADMIN).status_code == 404
    assert client.get("/v1/steering/vectors/mine/export").status_code == 404


@pytest.mark.parametrize("case", ["not_multipart", "no_file", "file_as_text", "empty", "junk", "truncated",
                                  "truncated_gguf", "pickle", "wide", "deep", "traversal", "unicode",
                                  "bad_metadata", "metadata_not_object", "too_large", "bad_replace"])
def test_bad_uploads_are_400_with_a_reason(tmp_path, case) -> None:
    client, _, _ = _app(tmp_path, max_vector_bytes=4096)
    good = vector_bytes(vector(), ".safetensors")[0]
    gguf = vector_bytes(vector(), ".gguf")[0]
    url = "/v1/steering/vectors"
    if case == "not_multipart":
        answer = client.post(url, json={"name": "x"}, headers=ADMIN)
    elif case == "no_file":
        answer = client.post(url, data={"name": "x"}, files={"other": ("a", b"1")}, headers=ADMIN)
    elif case == "file_as_text":
        answer = client.post(url, data={"name": "x", "file": "hello"}, files={"other": ("a", b"1")}, headers=ADMIN)
    else:
        name, data, metadata, query = "x", good, None, ""
        if case == "empty":
            data = b""
        elif case == "junk":
            data = b"\x00\x01 definitely not a vector"
        elif case == "truncated":
            data = good[:len(good) - 7]
        elif case == "truncated_gguf":
            data = gguf[:len(gguf) // 2]
        elif case == "pickle":
            import pickle
            data = pickle.dumps({"direction.1": [1.0] * 8})
        elif case == "wide":
            data = vector_bytes(vector(dim=16), ".safetensors")[0]
        elif case == "deep":
            data = vector_bytes(vector(layers=(7,)), ".safetensors")[0]
        elif case == "traversal":
            name = "../evil"
        elif case == "unicode":
            name = "gl\u00f6\u00f6my"
        elif case == "bad_metadata":
            metadata = "{not json"
        elif case == "metadata_not_object":
            metadata = "[1, 2]"
        elif case == "too_large":
            data = good + b"\x00" * 5000
        elif case == "bad_replace":
            query = "?replace=maybe"
        answer = _upload(client, name, data, metadata=metadata, query=query)
    expected = 413 if case == "too_large" else 400
    assert answer.status_code == expected, answer.text
    error = answer.json()["error"]
    assert error["code"] == expected and error["message"]
    reasons = {"wide": "hidden size 16", "deep": "layers [7] are outside", "traversal": "not allowed",
               "unicode": "not allowed", "truncated": "not a valid safetensors", "truncated_gguf": "not a valid GGUF",
               "pickle": "neither a safetensors file nor a GGUF", "empty": "neither"}
    assert reasons.get(case, "") in error["message"]
    assert sorted(p.name for p in (tmp_path / "vectors").iterdir()) == []


def test_presets_crud(tmp_path) -> None:
    client, resolver, _ = _app(tmp_path)
    assert _upload(client, "v", vector_bytes(vector(), ".safetensors")[0]).status_code == 201
    body = {"name": "light", "description": "d", "interventions": [{"type": "add", "vector": "v", "scale": 0.5}]}
    created = client.post("/v1/steering/presets", json=body, headers=ADMIN)
    assert created.status_code == 201 and created.json()["usable"] is True
    assert client.post("/v1/steering/presets", json=body, headers=ADMIN).status_code == 409
    assert client.post("/v1/steering/presets?replace=true", json=body, headers=ADMIN).status_code == 201
    assert [p["name"] for p in client.get("/v1/steering/presets").json()["data"]] == ["light"]
    assert client.get("/v1/steering/presets/light").json()["interventions"] == body["interventions"]
    for bad, why in (({"name": "x", "interventions": [{"type": "add", "vector": "ghost"}]}, "unknown vector 'ghost'"),
                     ({"name": "x", "interventions": [{"type": "add", "vector": "v", "layers": [99]}]}, "layer 99"),
                     ({"name": "x"}, "interventions"), ([1], "JSON object"), ({"name": "a/b", "interventions": []}, "")):
        answer = client.post("/v1/steering/presets", json=bad, headers=ADMIN)
        assert answer.status_code == 400 and why in answer.json()["error"]["message"], answer.text
    assert client.post("/v1/steering/presets", content=b"{", headers=ADMIN).status_code == 400
    client.delete("/v1/steering/vectors/v", headers=ADMIN)
    listed = client.get("/v1/steering/presets/light").json()
    assert listed["usable"] is False and "unknown vector 'v'" in listed["error"]
    assert client.delete("/v1/steering/presets/light", headers=ADMIN).json()["deleted"] is True
    assert client.get("/v1/steering/presets/light").status_code == 404
    assert client.delete("/v1/steering/presets/light", headers=ADMIN).status_code == 404


def test_gateway_lets_admin_bodies_through(tmp_path) -> None:
    _, resolver, _ = _app(tmp_path)
    gateway = RequestGateway(resolver)
    body = json.dumps({"name": "light", "description": "steer it gently",
                       "interventions": [{"type": "add", "vector": "v"}]}).encode()
    assert gateway.prepare("/v1/steering/presets", body) == Forward()
    assert gateway.prepare("/v1/steering/vectors", b"--boundary\r\ncontent-disposition: form-data") == Forward()
