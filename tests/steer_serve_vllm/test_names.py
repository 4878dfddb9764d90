"""The plugin names are spelt once (names.py); pyproject's entry points and the CLI agree with it."""

from __future__ import annotations

import tomllib
from pathlib import Path

from steer_serve.cli import build_parser, serve_environment
from steer_serve_vllm.api.plugin import SteerServeEndpointPlugin
from steer_serve_vllm.names import ENDPOINT_PLUGIN, ENGINE_PLUGIN

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_entry_points_use_the_names() -> None:
    entry_points = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"]
    assert entry_points["vllm.general_plugins"] == {ENGINE_PLUGIN: "steer_serve_vllm:register_engine_plugin"}
    assert entry_points["vllm.endpoint_plugins"] == {ENDPOINT_PLUGIN: "steer_serve_vllm:make_endpoint_plugin"}


def test_serve_allow_lists_both_and_the_plugin_calls_itself_by_its_name() -> None:
    args, _ = build_parser().parse_known_args(["serve"])
    assert serve_environment(args)["VLLM_PLUGINS"].split(",") == [ENGINE_PLUGIN, ENDPOINT_PLUGIN]
    assert SteerServeEndpointPlugin.name == ENDPOINT_PLUGIN
