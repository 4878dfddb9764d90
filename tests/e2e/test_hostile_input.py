"""Hostile input against real servers: every case is a 4xx with the exact status and a message
naming the problem, and the server serves a normal steered request right after.

Two servers: the session's `tiny_eager_server` for request bodies, and one module server
started with vLLM's `--api-key` (a user key and the admin key), an admin key, a preset dir and
the experiments, for auth, uploads and the /metrics privacy check. Cases already covered
elsewhere are not repeated (see test_bad_input.py, test_library_admin.py, test_interventions.py).
"""

from __future__ import annotations

import json
import shutil
import struct

import httpx
import numpy as np
import pytest

from harness.experiments import copy_definitions
from harness.servers import ADMIN_KEY, Server
from harness.tiny_models import TINY_HIDDEN
from steer_serve.library.steering_vector import SteeringVector
from steer_serve.library.vector_formats import vector_bytes

pytestmark = pytest.mark.slow

DEEP = 100_000
BODY_LIMIT = 32 * 1024 * 1024  # Settings.max_body_bytes
USER_KEY = "user-key-hostile"
USER = {"Authorization": f"Bearer {USER_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
GOOD = {"interventions": [{"type": "add", "vector": "tiny_a", "layers": [0, 3], "scale": 0.5}]}
DIRECTION = np.random.default_rng(5).standard_normal(TINY_HIDDEN).astype(np.float32)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _raw(server: Server, fields: str, path: str = "/v1/completions", headers: dict | None = None) -> httpx.Response:
    """POST a body written by hand (NaN literals, 100k-deep nesting, 400-digit integers)."""
    body = f'{{"model": {json.dumps(server.model)}, "prompt": "Hi", "max_tokens": 2, {fields}}}'
    return server.client.post(path, content=body.encode(), headers={"content-type": "application/json", **(headers or {})})


def _steered(interventions_json: str) -> str:
    return f'"steering": {{"interventions": [{interventions_json}]}}'


def _add(**fields) -> str:
    return json.dumps({"type": "add", "vector": "tiny_a", "layers": [1], "scale": 1.0} | fields)


def assert_still_serving(server: Server, headers: dict | None = None) -> None:
    """A normal steered request succeeds: the hostile one left the server healthy."""
    body = {"model": server.model, "prompt": "Hi", "max_tokens": 1, "steering": GOOD}
    response = server.client.post("/v1/completions", json=body, headers=headers or {})
    assert response.status_code == 200, response.text
    assert response.headers["x-steer-serve-fingerprint"]


def assert_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text[:2000]
    error = response.json()["error"]
    assert error["code"] == status and fragment in error["message"], error["message"][:2000]


# ---- request bodies (tiny_eager_server) ---------------------------------------------------------
ZERO_WIDTH, RTL, EMOJI = "tiny\u200ba", "\u202etiny_a", "tiny_a\U0001F600"
BODY_CASES: dict[str, tuple[str, str, int, str]] = {
    # name: (raw body fields, path, status, message fragment)
    "deep-array-as-steering": (f'"steering": {_nested(DEEP)}', "/v1/completions", 400,
                               "request body is nested too deeply"),
    "deep-object-in-intervention": (_steered('{"type": "add", "vector": ' + '{"a": ' * DEEP + "1" + "}" * DEEP + "}"),
                                    "/v1/completions", 400, "request body is nested too deeply"),
    "deep-prompt-no-steering": (f'"extra": {_nested(DEEP)}', "/v1/completions", 400, "request body is nested too deeply"),
    "deep-chat-messages": (f'"messages": {_nested(DEEP)}', "/v1/chat/completions", 400,
                           "request body is nested too deeply"),
    "deep-in-vllm-xargs-string": ('"vllm_xargs": {"steering": ' + json.dumps(_nested(DEEP)) + "}", "/v1/completions",
                                  400, "vllm_xargs.steering is nested too deeply"),
    "inline-vector-of-a-million-floats": (_steered(_add(vector=[0.25] * 10**6)), "/v1/completions", 400,
                                          "at most 65536 items"),
    "thousands-of-layer-keys": (_steered(json.dumps({"type": "heads", "scale": {str(i): {"0": 0.5} for i in range(50_000)}})),
                                "/v1/completions", 400, "layer 4 is out of range"),
    "nan-in-per-layer-scale": (_steered('{"type": "add", "vector": "tiny_a", "scale": {"1": NaN}}'), "/v1/completions",
                               400, "scale for layer 1 must be a finite number, got nan"),
    "infinity-clamp-value": (_steered('{"type": "clamp", "vector": "tiny_a", "layers": [1], "value": Infinity}'),
                             "/v1/completions", 400, "value must be a finite number, got inf"),
    "minus-infinity-head-scale": (_steered('{"type": "heads", "scale": {"1": {"0": -Infinity}}}'), "/v1/completions",
                                  400, "must be a finite number, got -inf"),
    "1e999-in-inline-vector": (_steered('{"type": "add", "layers": [1], "vector": [1e999' + ", 0" * (TINY_HIDDEN - 1)
                                        + "]}"), "/v1/completions", 400, "vector[0] is inf; values must be finite"),
    "scale-1e308": (_steered(_add(scale=1e308)), "/v1/completions", 400, "scale 1e+308 for layer 1 exceeds the limit"),
    "scale-minus-1e308": (_steered(_add(scale=-1e308)), "/v1/completions", 400, "scale -1e+308 for layer 1 exceeds"),
    "scale-400-digit-integer": (_steered('{"type": "add", "vector": "tiny_a", "scale": 1' + "0" * 400 + "}"),
                                "/v1/completions", 400, "got an integer too large for a float"),
    "scale-5000-digit-integer": (_steered('{"type": "add", "vector": "tiny_a", "scale": 1' + "0" * 5000 + "}"),
                                 "/v1/completions", 400, "request body has a number with too many digits"),
    "head-scale-1e308": (_steered('{"type": "heads", "scale": {"1": {"0": 1e308}}}'), "/v1/completions", 400,
                         "head scale 1e+308 exceeds the limit"),
    "layer-10^30": (_steered(_add(layers=[10**30])), "/v1/completions", 400, f"layer {10**30} is out of range"),
    "superscript-layer-key": (_steered(_add(layers=None, scale={"\u00b2": 1.0})), "/v1/completions", 400,
                              "is not a layer number"),
    "head-out-of-range": (_steered('{"type": "heads", "mask": {"1": [2]}}'), "/v1/completions", 400,
                          "head 2 does not exist in layer 1 (heads 0..1)"),
    "head-negative": (_steered('{"type": "heads", "mask": {"1": [-1]}}'), "/v1/completions", 400,
                      "head -1 does not exist in layer 1"),
    "head-2^63": (_steered('{"type": "heads", "mask": {"0": [9223372036854775808]}}'), "/v1/completions", 400,
                  "head 9223372036854775808 does not exist in layer 0"),
    "heads-layer-out-of-range": (_steered('{"type": "heads", "mask": {"4": [0]}}'), "/v1/completions", 400,
                                 "layer 4 is out of range; the model has layers 0..3"),
    "experts-ids-on-dense-model": (_steered('{"type": "experts", "disable": {"0": [-1, 99]}}'), "/v1/completions", 400,
                                   "has no Mixture-of-Experts layers"),
    "inline-vector-of-another-models-size": (_steered(_add(vector=[0.1] * 576)), "/v1/completions", 400,
                                             "inline vector has 576 values; the model's hidden size is 128"),
    "inline-vector-one-short": (_steered(_add(vector=[0.1] * (TINY_HIDDEN - 1))), "/v1/completions", 400,
                                "inline vector has 127 values"),
    "zero-width-vector-name": (_steered(_add(vector=ZERO_WIDTH)), "/v1/completions", 400,
                               "unknown vector 'tiny\\u200ba'"),
    "rtl-override-vector-name": (_steered(_add(vector=RTL)), "/v1/completions", 400, "unknown vector '\\u202etiny_a'"),
    "emoji-vector-name": (_steered(_add(vector=EMOJI)), "/v1/chat/completions", 400, "unknown vector 'tiny_a"),
    "nul-in-vector-name": (_steered(_add(vector="tiny_a\x00")), "/v1/completions", 400, "unknown vector 'tiny_a\\x00'"),
    "traversal-vector-name": (_steered(_add(vector="../tiny_a")), "/v1/completions", 400, "unknown vector '../tiny_a'"),
    "encoded-traversal-vector-name": (_steered(_add(vector="..%2Ftiny_a")), "/v1/completions", 400,
                                      "unknown vector '..%2Ftiny_a'"),
    "absolute-path-vector-name": (_steered(_add(vector="/etc/passwd")), "/v1/completions", 400,
                                  "unknown vector '/etc/passwd'"),
    "windows-path-vector-name": (_steered(_add(vector="C:\\vectors\\tiny_a")), "/v1/completions", 400,
                                 "unknown vector 'C:\\\\vectors\\\\tiny_a'"),
    "file-name-as-vector-name": (_steered(_add(vector="tiny_a.safetensors")), "/v1/completions", 400,
                                 "unknown vector 'tiny_a.safetensors'"),
    "rtl-preset-name": ('"steering": {"preset": "\\u202egloomy_light"}', "/v1/completions", 400,
                        "unknown preset '\\u202egloomy_light'"),
    "traversal-preset-name": ('"steering": {"preset": "../../etc/passwd"}', "/v1/completions", 400,
                              "unknown preset '../../etc/passwd'"),
    "overlong-preset-name": ('"steering": {"preset": "' + "p" * 5000 + '"}', "/v1/completions", 400,
                             "steering.preset: String should have at most 128 characters"),
}


@pytest.mark.parametrize("name", list(BODY_CASES))
def test_hostile_body_is_a_clear_4xx(tiny_eager_server, name: str) -> None:
    fields, path, status, fragment = BODY_CASES[name]
    if path == "/v1/chat/completions":
        fields = '"messages": [{"role": "user", "content": "Hi"}], ' + fields if '"messages"' not in fields else fields
    assert_error(_raw(tiny_eager_server, fields, path), status, fragment)
    assert_still_serving(tiny_eager_server)


def test_fifty_megabyte_body_is_413(tiny_eager_server) -> None:
    steering = json.dumps({"interventions": [{"type": "add", "vector": "tiny_a", "scale": 1.0}]})
    body = b'{"prompt": "' + b"a" * (50 * 1024 * 1024) + b'", "steering": ' + steering.encode() + b"}"
    response = tiny_eager_server.client.post("/v1/completions", content=body,
                                             headers={"content-type": "application/json"})
    assert_error(response, 413, f"request body exceeds {BODY_LIMIT} bytes")
    assert_still_serving(tiny_eager_server)


def test_denormal_scale_is_served_as_a_valid_number(tiny_eager_server) -> None:
    """1e-320 is finite and within the limit: not an error, it simply steers by (almost) nothing."""
    response = _raw(tiny_eager_server, _steered('{"type": "add", "vector": "tiny_a", "scale": 1e-320}'))
    assert response.status_code == 200, response.text
    assert response.headers["x-steer-serve-fingerprint"]


def test_admin_routes_are_closed_without_an_admin_key(tiny_eager_server) -> None:
    """This server has no admin key: every admin route is a 403 saying so, even with some bearer key."""
    for method, path, kwargs in ADMIN_ROUTES:
        for headers in ({}, {"Authorization": "Bearer anything"}):
            response = tiny_eager_server.client.request(method, path, headers=headers, **kwargs)
            assert_error(response, 403, "no admin key is configured")
    assert_still_serving(tiny_eager_server)


# ---- the guarded server: --api-key, admin key, presets, experiments -----------------------------
@pytest.fixture(scope="module")
def guarded(request, tiny_llama_dir, tiny_vector_dir, experiments_dir, log_dir, tmp_path_factory) -> Server:
    root = tmp_path_factory.mktemp("hostile")
    vectors, presets, experiments = root / "vectors", root / "presets", root / "experiments"
    shutil.copytree(tiny_vector_dir, vectors)  # uploads must never touch the shared fixtures
    copy_definitions(experiments_dir, experiments)
    presets.mkdir()
    server = Server(tiny_llama_dir, log_dir, vector_dir=vectors, eager=True, extra_args=[
        "--preset-dir", str(presets), "--experiments", str(experiments),
        "--admin-key", ADMIN_KEY, "--api-key", USER_KEY, ADMIN_KEY])  # one flag, several keys (nargs="+")
    request.addfinalizer(server.stop)
    server.vector_dir = vectors
    return server.wait_ready()


# Every admin route, with arguments that change nothing even when the admin key is accepted.
ADMIN_ROUTES: list[tuple[str, str, dict]] = [
    ("POST", "/v1/steering/vectors", {"files": {"file": ("v.safetensors", b"x")}, "data": {"name": "v"}}),
    ("DELETE", "/v1/steering/vectors/not_there", {}),
    ("POST", "/v1/steering/presets", {"json": {"name": "p", "interventions": [{"type": "add", "vector": "not_there"}]}}),
    ("DELETE", "/v1/steering/presets/not_there", {}),
    ("POST", "/v1/steering/experiments/reload", {}),
    ("POST", "/v1/steering/experiments/kill-switch", {"json": {"engaged": False}}),
    ("POST", "/v1/steering/experiments/tone/kill-switch", {"json": {"engaged": False}}),
]
READ_ROUTES = ["/v1/steering/vectors", "/v1/steering/vectors/tiny_a", "/v1/steering/vectors/tiny_a/export",
               "/v1/steering/presets", "/v1/steering/experiments", "/v1/steering/experiments/tone/results", "/v1/models"]


def _completion(server: Server, steering: dict | None, headers: dict, **fields) -> httpx.Response:
    body = {"model": server.model, "prompt": "Hi", "max_tokens": 2, **fields}
    if steering is not None:
        body["steering"] = steering
    return server.client.post("/v1/completions", json=body, headers=headers)


def test_api_key_guards_inference_before_validation(guarded) -> None:
    bad = {"interventions": [{"type": "add", "vector": "no_such_vector"}]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {USER_KEY}"}):
        for steering in (None, GOOD, bad):
            response = _completion(guarded, steering, headers)
            assert response.status_code == 401 and response.json() == {"error": "Unauthorized"}, response.text
        # unauthenticated callers learn nothing from our gateway: auth answers before it parses
        assert _raw(guarded, f'"steering": {_nested(DEEP)}', headers=headers).status_code == 401
    assert _completion(guarded, None, USER).status_code == 200
    assert_error(_completion(guarded, bad, USER), 400, "unknown vector 'no_such_vector'")
    assert_still_serving(guarded, USER)


def test_api_key_guards_steering_read_routes_but_not_health_or_metrics(guarded) -> None:
    for path in READ_ROUTES:
        assert guarded.client.get(path).status_code == 401, path
        assert guarded.client.get(path, headers=USER).status_code == 200, path
    feedback = {"request_id": "cmpl-unknown", "metric": "liked", "value": True}
    assert guarded.client.post("/v1/steering/feedback", json=feedback).status_code == 401
    assert guarded.client.post("/v1/steering/feedback", json=feedback, headers=USER).status_code == 200
    assert guarded.client.get("/health").status_code == 200
    assert guarded.client.get("/metrics").status_code == 200  # vLLM leaves /metrics open (see README "Metrics")


@pytest.mark.parametrize("method, path, kwargs", ADMIN_ROUTES, ids=[f"{m} {p}" for m, p, _ in ADMIN_ROUTES])
def test_admin_route_needs_the_admin_key(guarded, method: str, path: str, kwargs: dict) -> None:
    """No key: vLLM's 401 (it guards /v1 first). A valid user key is not the admin key: our 403."""
    no_key = guarded.client.request(method, path, **kwargs)
    assert no_key.status_code == 401 and no_key.json() == {"error": "Unauthorized"}
    assert_error(guarded.client.request(method, path, headers=USER, **kwargs), 403, "wrong admin key")
    with_admin = guarded.client.request(method, path, headers=ADMIN, **kwargs)
    assert with_admin.status_code in (200, 400, 404), with_admin.text  # past auth: the route's own answer


# ---- uploads --------------------------------------------------------------------------------------
def _vector(layers=(1, 2), dim: int = TINY_HIDDEN) -> SteeringVector:
    rng = np.random.default_rng(7)
    return SteeringVector({layer: rng.standard_normal(dim).astype(np.float32) for layer in layers}, {"model": "t"})


SAFETENSORS = vector_bytes(_vector(), ".safetensors")[0]
GGUF = vector_bytes(_vector(), ".gguf")[0]
HEADER_LENGTH = struct.unpack("<Q", SAFETENSORS[:8])[0]


def _with_header_length(declared: int) -> bytes:
    return struct.pack("<Q", declared) + SAFETENSORS[8:]


def _nan_vector() -> bytes:
    data = bytearray(SAFETENSORS)
    data[8 + HEADER_LENGTH: 8 + HEADER_LENGTH + 4] = struct.pack("<f", float("nan"))
    return bytes(data)


UPLOAD_CASES: dict[str, tuple[str | None, str, bytes, str]] = {
    # name: (form `name` or None, file name, content, message fragment); all 400
    "header-length-larger-than-file": ("x", "x.safetensors", _with_header_length(len(SAFETENSORS) * 10),
                                       "not a valid safetensors file (Error while deserializing header: invalid header length"),
    "header-length-2^64-1": ("x", "x.safetensors", _with_header_length(2**64 - 1), "header too large"),
    "header-json-truncated": ("x", "x.safetensors", struct.pack("<Q", HEADER_LENGTH // 2) + SAFETENSORS[8: 8 + HEADER_LENGTH // 2],
                              "invalid JSON in header"),
    "data-shorter-than-declared": ("x", "x.safetensors", SAFETENSORS[:-4], "not a valid safetensors file"),
    "nan-in-uploaded-tensor": ("x", "x.safetensors", _nan_vector(), "contains NaN or Inf"),
    "gguf-cut-in-half": ("x", "x.gguf", GGUF[: len(GGUF) // 2], "not a valid GGUF file"),
    "gguf-magic-only": ("x", "x.gguf", b"GGUF", "not a valid GGUF file"),
    "gguf-tensor-count-lies": ("x", "x.gguf", GGUF[:8] + struct.pack("<Q", 2**60) + GGUF[16:], "not a valid GGUF file"),
    "gguf-data-cut": ("x", "x.gguf", GGUF[:-8], "not a valid GGUF file"),
    "another-models-hidden-size": ("x", "x.safetensors", vector_bytes(_vector(dim=576), ".safetensors")[0],
                                   "hidden size 576 does not match"),
    "layer-out-of-range": ("x", "x.safetensors", vector_bytes(_vector(layers=(1, 40)), ".safetensors")[0],
                           "layers [40] are outside"),
    "filename-traversal": (None, "../../escape.safetensors", SAFETENSORS, "contains a directory"),
    "filename-absolute": (None, "/etc/passwd.safetensors", SAFETENSORS, "contains a directory"),
    "filename-windows-traversal": (None, "..\\..\\evil.safetensors", SAFETENSORS, "contains a directory"),
    "filename-encoded-traversal": (None, "..%2F..%2Fescape.safetensors", SAFETENSORS, "is not allowed"),
    "filename-zero-width": (None, "tiny\u200ba.safetensors", SAFETENSORS, "'tiny\\u200ba' is not allowed"),
    "filename-rtl-override": (None, "\u202eevil.safetensors", SAFETENSORS, "is not allowed"),
    "filename-emoji": (None, "v\U0001F600.safetensors", SAFETENSORS, "is not allowed"),
    "name-nul": ("tiny\x00a", "x.safetensors", SAFETENSORS, "'tiny\\x00a' is not allowed"),
    "name-dot-dot": ("..", "x.safetensors", SAFETENSORS, "is not allowed"),
    "name-absolute": ("/etc/passwd", "x.safetensors", SAFETENSORS, "'/etc/passwd' is not allowed"),
    "name-windows": ("C:\\x", "x.safetensors", SAFETENSORS, "is not allowed"),
    "name-encoded-traversal": ("..%2Fx", "x.safetensors", SAFETENSORS, "is not allowed"),
}


@pytest.mark.parametrize("case", list(UPLOAD_CASES))
def test_hostile_upload_is_a_clear_400(guarded, case: str) -> None:
    name, filename, content, fragment = UPLOAD_CASES[case]
    form = {} if name is None else {"name": name}
    response = guarded.client.post("/v1/steering/vectors", files={"file": (filename, content)}, data=form,
                                   headers=ADMIN)
    assert_error(response, 400, fragment)
    assert sorted(p.name for p in guarded.vector_dir.iterdir() if not p.name.startswith(".")) == ["tiny_a.safetensors"]
    assert_still_serving(guarded, USER)


def test_file_name_is_never_used_as_a_path_when_name_is_given(guarded) -> None:
    response = guarded.client.post("/v1/steering/vectors", files={"file": ("../../../tmp/evil.gguf", SAFETENSORS)},
                                   data={"name": "named_ok"}, headers=ADMIN)
    assert response.status_code == 201, response.text
    try:
        assert (guarded.vector_dir / "named_ok.safetensors").is_file()
        assert not list(guarded.vector_dir.parent.rglob("evil*"))
    finally:
        assert guarded.client.delete("/v1/steering/vectors/named_ok", headers=ADMIN).status_code == 200


def test_windows_absolute_file_name_is_cut_to_its_base_name_inside_the_library(guarded) -> None:
    """python-multipart (IE compatibility) reduces `C:\\...\\evil.safetensors` to `evil.safetensors`
    before we see it: the upload lands as `evil` inside the vector dir, never anywhere else."""
    response = guarded.client.post("/v1/steering/vectors", headers=ADMIN,
                                   files={"file": ("C:\\Users\\x\\evil.safetensors", SAFETENSORS)})
    assert response.status_code == 201 and response.json()["name"] == "evil", response.text
    try:
        assert (guarded.vector_dir / "evil.safetensors").is_file()
        assert {p.parent for p in guarded.vector_dir.parent.parent.rglob("evil*")} == {guarded.vector_dir}
    finally:
        assert guarded.client.delete("/v1/steering/vectors/evil", headers=ADMIN).status_code == 200


def test_oversized_upload_is_413(guarded) -> None:
    response = guarded.client.post("/v1/steering/vectors", files={"file": ("big.safetensors", b"\0" * (17 << 20))},
                                   data={"name": "big"}, headers=ADMIN)
    assert_error(response, 413, f"vector file exceeds {16 << 20} bytes")
    assert_still_serving(guarded, USER)


@pytest.mark.parametrize("path, status", [("/v1/steering/vectors/..%2F..%2Fetc%2Fpasswd", 404),
                                          ("/v1/steering/vectors/%2E%2E", 400),
                                          ("/v1/steering/presets/%2E%2E", 400),
                                          ("/v1/steering/presets/C:%5Cx", 400)])
def test_traversal_in_delete_paths(guarded, path: str, status: int) -> None:
    response = guarded.client.delete(path, headers=ADMIN)
    assert response.status_code == status, response.text
    if status == 400:
        assert "is not allowed" in response.json()["error"]["message"]
    assert (guarded.vector_dir / "tiny_a.safetensors").is_file()


@pytest.mark.parametrize("name", ["../p", "p\u200b", "\u202ep", "p\U0001F600", "p\x00", "C:\\p", "/abs", ""])
def test_hostile_preset_names(guarded, name: str) -> None:
    body = {"name": name, "interventions": [{"type": "add", "vector": "tiny_a", "scale": 0.5}]}
    response = guarded.client.post("/v1/steering/presets", json=body, headers=ADMIN)
    assert_error(response, 400, f"preset name {name!r} is not allowed")
    assert guarded.client.get("/v1/steering/presets", headers=USER).json()["data"] == []


@pytest.mark.parametrize("interventions, fragment", [
    ([{"type": "add", "vector": "tiny_a", "scale": 1e308}], "exceeds the limit"),
    ([{"type": "add", "vector": [0.1] * 576, "layers": [1]}], "hidden size is 128"),
    ([{"type": "heads", "mask": {"1": [7]}}], "head 7 does not exist"),
])
def test_hostile_preset_interventions(guarded, interventions: list, fragment: str) -> None:
    response = guarded.client.post("/v1/steering/presets", json={"name": "bad", "interventions": interventions},
                                   headers=ADMIN)
    assert_error(response, 400, fragment)


def test_deeply_nested_admin_body_is_400(guarded) -> None:
    response = guarded.client.post("/v1/steering/presets", content=f'{{"name": {_nested(DEEP)}}}'.encode(),
                                   headers={**ADMIN, "content-type": "application/json"})
    assert_error(response, 400, "request body is nested too deeply")
    assert_still_serving(guarded, USER)


# ---- /metrics carries no user data ----------------------------------------------------------------
SECRET_USER, SECRET_SESSION = "user-secret-7f3a9", "session-secret-c41d"
SECRET_VECTOR, SECRET_PRESET = "zq_private_vec", "zq_private_preset"
SECRET_VALUE = 0.0123456789


def test_metrics_carry_no_user_ids_names_values_or_keys(guarded) -> None:
    upload = guarded.client.post("/v1/steering/vectors", files={"file": ("f.safetensors", SAFETENSORS)},
                                 data={"name": SECRET_VECTOR}, headers=ADMIN)
    assert upload.status_code == 201, upload.text
    preset = {"name": SECRET_PRESET, "interventions": [{"type": "add", "vector": SECRET_VECTOR, "scale": 0.5}]}
    assert guarded.client.post("/v1/steering/presets", json=preset, headers=ADMIN).status_code == 201
    try:
        experiment = _completion(guarded, None, {**USER, "x-session-id": SECRET_SESSION}, user=SECRET_USER)
        assert experiment.status_code == 200 and experiment.headers["x-steer-serve-experiment"]
        inline = {"interventions": [{"type": "add", "vector": [SECRET_VALUE] * TINY_HIDDEN, "layers": [1]}]}
        for steering in ({"preset": SECRET_PRESET}, inline,
                         {"interventions": [{"type": "add", "vector": SECRET_VECTOR, "layers": [3]}]}):
            assert _completion(guarded, steering, USER, user=SECRET_USER).status_code in (200, 400)
        text = guarded.client.get("/metrics").text
    finally:
        guarded.client.delete(f"/v1/steering/presets/{SECRET_PRESET}", headers=ADMIN)
        guarded.client.delete(f"/v1/steering/vectors/{SECRET_VECTOR}", headers=ADMIN)
    assert 'steer_serve:requests_total{' in text and 'experiment="' in text  # the traffic was counted
    assert 'steer_serve:validation_rejections_total{reason="layers"}' in text  # SECRET_VECTOR has no layer 3
    for secret in (SECRET_USER, SECRET_SESSION, SECRET_VECTOR, SECRET_PRESET, str(SECRET_VALUE), USER_KEY, ADMIN_KEY):
        assert secret not in text, secret
