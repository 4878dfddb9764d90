"""The trace command's probe syntax and its PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from steer_serve.cli import main
from steer_serve.library.steering_vector import SteeringVector
from steer_serve.library.vector_formats import write_vector
from steer_serve.tools.observation import parse_observation
from steer_serve.tools.probe_trace import parse_probe, plot_trace


def _response(num_prompt: int = 6, generated: int = 5) -> dict:
    positions = list(range(num_prompt + generated - 1))
    gloom = [math.sin(p / 2) for p in positions]
    observe = {"num_prompt_tokens": num_prompt, "positions": positions,
               "probes": [{"name": "gloom", "layer": 3, "projection": gloom, "cosine": [g / 10 for g in gloom]},
                          {"name": "joy", "layer": 5, "projection": [0.1 * p for p in positions]}]}
    return {"id": "cmpl-1", "choices": [{"text": "..."}], "steer_serve": {"observe": observe}}


def test_parse_probe_library_name_and_local_file(tmp_path: Path) -> None:
    assert parse_probe("gloom:gloomy:12") == {"name": "gloom", "vector": "gloomy", "layer": 12}
    direction = np.arange(4, dtype=np.float32)
    path = tmp_path / "v.safetensors"
    write_vector(SteeringVector({2: direction}, {}), path)
    assert parse_probe(f"mine:{path}:2") == {"name": "mine", "vector": [0.0, 1.0, 2.0, 3.0], "layer": 2}
    with pytest.raises(ValueError, match=r"has no direction at layer 3 \(has \[2\]\)"):
        parse_probe(f"mine:{path}:3")
    for bad in ("gloom", "gloom:gloomy", "gloom:gloomy:x", ":gloomy:1"):
        with pytest.raises(ValueError, match="NAME:VECTOR:LAYER"):
            parse_probe(bad)


def test_plot_is_a_png_with_one_panel_per_probe(tmp_path: Path) -> None:
    from PIL import Image

    observation = parse_observation(_response())
    tokens = ["<|im_start|>", "user", "\n", "Hi", "<|im_end|>", "\n", "Hello", "!", " How", " are"]
    out = plot_trace(observation, tmp_path / "trace.png", tokens, title="test")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 600
    with pytest.raises(ValueError, match="no probes"):
        plot_trace(parse_observation({"steer_serve": {"observe": {"num_prompt_tokens": 1}}}), tmp_path / "x.png")


def test_trace_command_draws_a_saved_response(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    saved = tmp_path / "response.json"
    saved.write_text(json.dumps(_response()))
    out = tmp_path / "trace.png"
    assert main(["observe", "trace", "--response", str(saved), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "gloom (layer 3): 10 positions" in capsys.readouterr().out
    saved.write_text(json.dumps({"choices": []}))
    assert main(["observe", "trace", "--response", str(saved), "--out", str(out)]) == 2
    assert "no steer_serve.observe" in capsys.readouterr().err
    assert main(["observe", "trace", "--out", str(out)]) == 2


def test_a_far_outlier_is_drawn_at_the_edge_with_its_value() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from steer_serve.tools.probe_trace import _draw_probe

    values = [-168.8] + [-20.0 + (p % 5) for p in range(1, 40)]  # an attention-sink first token
    figure, axis = plt.subplots()
    _draw_probe(axis, list(range(40)), values, 30)
    bottom, top = axis.get_ylim()
    assert bottom > -60 and top < 0  # the trace keeps its scale
    assert [t.get_text() for t in axis.texts] == ["-168.8"]
    plt.close(figure)
