"""Extraction through a server's capture, checked against the HF path without starting vLLM.

The server side here is a contract-level stand-in: it runs the HF model with
`output_hidden_states=True` (hidden_states[L + 1] = output of decoder layer L) on the token ids it
receives and encodes the requested rows as contract v1 says. That pins everything on the client
side (rendering, token ids, request plan, base64 decoding, reduction, the shared statistics) to the
HF extraction; tests/e2e/test_observe_extract.py does the same against the real engine capture.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from transformers import AutoModelForCausalLM

from harness.threads import single_thread
from steer_serve.cli import main
from steer_serve.library.vector_formats import read_vector
from steer_serve.tools.activations import ContrastivePair, TextExample
from steer_serve.tools.extraction import ExtractionSpec, extract, extract_to_file
from steer_serve.tools.observe_client import ObserveClient
from steer_serve.request.observe_spec import CAPTURE_CAP, MAX_CAPTURE_LAYERS
from steer_serve.tools.server_extraction import capture_requests, extract_via_server

LAYERS = [0, 1, 2]  # the tiny model has 4; the last layer's hidden_states entry is post-norm
PAIRS = [
    ContrastivePair(positive="What a lovely sunny day!", negative="What a dreary grey day."),
    ContrastivePair(positive="I adore this song.", negative="This song makes me cry, it is so sad and slow."),
    ContrastivePair(
        positive_messages=[{"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Great!"}],
        negative_messages=[{"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Awful."}],
    ),
]
NEUTRAL = [TextExample(text="The train leaves at nine."),
           TextExample(messages=[{"role": "user", "content": "Capital of France?"}])]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def hf_capture_transport(model_dir: Path, requests: list[dict]) -> httpx.MockTransport:
    """/v1/models and /v1/completions answered from the HF model's hidden states (contract v1 encoding)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "tiny", "root": str(model_dir)}]})
        body = json.loads(request.content)
        requests.append(body)
        capture = body["observe"]["capture"]
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([body["prompt"]]), output_hidden_states=True).hidden_states
        blocks = []
        for layer in capture["layers"]:
            rows = hidden[layer + 1][0, capture["positions"]].numpy().astype("<f4")
            blocks.append({"layer": layer, "positions": capture["positions"], "shape": list(rows.shape),
                           "dtype": "float32", "data": base64.b64encode(rows.tobytes()).decode(), "truncated": False})
        observe = {"num_prompt_tokens": len(body["prompt"]), "positions": list(range(len(body["prompt"]))),
                   "probes": [], "capture": blocks}
        return httpx.Response(200, json={"choices": [{"text": "x"}], "steer_serve": {"observe": observe}})

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(("method", "position"), [("diff_means", "last"), ("diff_means", "mean"),
                                                  ("mean_centred", "mean"), ("pca", "last")])
def test_server_path_equals_hf_path(tiny_llama_dir: Path, method: str, position: str) -> None:
    neutral = NEUTRAL if method == "mean_centred" else None
    sent: list[dict] = []
    with ObserveClient("http://server", transport=hf_capture_transport(tiny_llama_dir, sent), concurrency=2) as client:
        spec = ExtractionSpec(PAIRS, LAYERS, position, method=method, neutral=neutral)
        served = extract_via_server(client, tiny_llama_dir, spec)
    local = extract(tiny_llama_dir, spec)
    assert served.metadata == local.metadata
    for layer in LAYERS:
        assert np.linalg.norm(local.directions[layer]) > 1e-3
        np.testing.assert_allclose(served.directions[layer], local.directions[layer], atol=1e-5, rtol=0)
    # the chat pair went as the template's ids, the open assistant turn last
    assert len({tuple(body["prompt"]) for body in sent}) == (len(PAIRS) + len(NEUTRAL) if neutral else 2 * len(PAIRS))


def test_extract_command_with_server_writes_the_hf_file(tiny_llama_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(p.model_dump_json(exclude_none=True) for p in PAIRS) + "\n")
    transport = hf_capture_transport(tiny_llama_dir, [])
    monkeypatch.setattr("steer_serve.tools.observe_client.httpx.Client.__init__",
                        _with_transport(httpx.Client.__init__, transport))
    out = tmp_path / "served.safetensors"
    common = ["--pairs", str(pairs), "--layers", "0-2", "--position", "last"]
    assert main(["extract", "--server", "http://server", "--out", str(out), *common]) == 0  # model = server root
    reference = extract_to_file(tiny_llama_dir, pairs, LAYERS, tmp_path / "hf.safetensors")
    served = read_vector(out)
    assert served.metadata == reference.metadata
    for layer in LAYERS:
        np.testing.assert_allclose(served.directions[layer], reference.directions[layer], atol=1e-5, rtol=0)
    assert main(["extract", "--server", "http://server", "--out", str(out), *common[:3], "9"]) == 2


def _with_transport(init, transport):
    def patched(self, *args, **kwargs):
        kwargs["transport"] = transport
        init(self, *args, **kwargs)
    return patched


@given(num_tokens=st.integers(1, 3000), num_layers=st.integers(1, 20), position=st.sampled_from(["last", "mean"]))
def test_capture_plan_covers_every_wanted_vector_once_within_the_caps(num_tokens: int, num_layers: int,
                                                                     position: str) -> None:
    layers = list(range(0, 2 * num_layers, 2))
    plan = capture_requests(num_tokens, layers, position)
    wanted = [num_tokens - 1] if position == "last" else list(range(num_tokens))
    covered = [(layer, p) for group, positions in plan for layer in group for p in positions]
    assert sorted(covered) == sorted((layer, p) for layer in layers for p in wanted)
    for group, positions in plan:
        assert 1 <= len(group) <= MAX_CAPTURE_LAYERS and len(group) * len(positions) <= CAPTURE_CAP
        assert positions == sorted(positions)
