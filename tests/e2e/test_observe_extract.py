"""`steer-serve extract --server` on the real engine capture equals the HF extraction of the same dataset.

Runs on the shared session tiny server (no server of its own): a few one-token completions with
`observe.capture`, against `extract` on the same HF directory (hooks on `model.model.layers[L]`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from steer_serve.cli import main
from steer_serve.library.vector_formats import read_vector
from steer_serve.tools.activations import ContrastivePair
from steer_serve.tools.extraction import ExtractionSpec, extract, extract_to_file
from steer_serve.tools.observe_client import ObserveClient
from steer_serve.tools.server_extraction import extract_via_server

pytestmark = pytest.mark.slow

LAYERS = [0, 1, 3]  # the tiny model's 4 layers, the last included (the HF hooks read it before the final norm too)
PAIRS = [
    ContrastivePair(positive="What a lovely sunny day!", negative="What a dreary grey day."),
    ContrastivePair(positive="I adore this song.", negative="This song makes me cry, it is so sad and slow."),
    ContrastivePair(
        positive_messages=[{"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Great!"}],
        negative_messages=[{"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Awful."}],
    ),
]


def test_extract_through_the_server_equals_hf_extraction(tiny_eager_server, tiny_llama_dir: Path,
                                                          tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(p.model_dump_json(exclude_none=True) for p in PAIRS) + "\n")
    served_file = tmp_path / "served.safetensors"
    # as a user: the CLI, its tokenizer taken from the directory the server loaded (a local path here)
    assert main(["extract", "--server", tiny_eager_server.url, "--pairs", str(pairs), "--layers", "0,1,3",
                 "--out", str(served_file)]) == 0
    local = extract_to_file(tiny_llama_dir, pairs, LAYERS, tmp_path / "hf.safetensors")
    served = read_vector(served_file)
    assert served.metadata == local.metadata
    for layer in LAYERS:
        assert np.linalg.norm(local.directions[layer]) > 1e-3
        np.testing.assert_allclose(served.directions[layer], local.directions[layer], atol=1e-4, rtol=0)
    # every prompt token's capture (position mean) and the PCA statistic
    spec = ExtractionSpec(PAIRS, LAYERS, "mean", method="pca")
    with ObserveClient(tiny_eager_server.url, concurrency=4) as client:
        pca = extract_via_server(client, tiny_llama_dir, spec)
    reference = extract(tiny_llama_dir, spec)
    for layer in LAYERS:
        np.testing.assert_allclose(pca.directions[layer], reference.directions[layer], atol=1e-4, rtol=0)
