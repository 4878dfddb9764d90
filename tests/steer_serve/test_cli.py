"""The CLI builds the right vLLM command line and environment."""

from __future__ import annotations

import pytest

from steer_serve.cli import build_parser, parse_layers, serve_command, serve_environment, take_positional_model


def _serve_args(*argv: str):
    return build_parser().parse_known_args(["serve", *argv])


def test_unknown_flags_pass_through_to_vllm() -> None:
    args, passthrough = _serve_args("--model", "/m", "--port", "9000", "--dtype", "float32", "--enforce-eager")
    command = serve_command(args, passthrough)
    assert command[command.index("--model") + 1] == "/m"
    assert command[command.index("--port") + 1] == "9000"
    assert command[-3:] == ["--dtype", "float32", "--enforce-eager"]


def test_vllm_flags_are_not_abbreviation_matched() -> None:
    args, passthrough = _serve_args("--model", "/m", "--model-impl", "vllm")
    assert args.model == "/m" and passthrough == ["--model-impl", "vllm"]


def test_environment_enables_both_plugins_and_v1_runner(tmp_path) -> None:
    args, _ = _serve_args("--vector-dir", str(tmp_path))
    env = serve_environment(args)
    assert env["VLLM_PLUGINS"] == "steer_serve,steer_serve_api"
    assert env["VLLM_USE_V2_MODEL_RUNNER"] == "0"
    assert env["STEER_SERVE_VECTOR_DIR"] == str(tmp_path.resolve())


def test_an_explicit_kv_cache_size_is_not_overridden_by_the_cpu_default(monkeypatch) -> None:
    """vLLM's CPU platform lets VLLM_CPU_KVCACHE_SPACE override --kv-cache-memory-bytes: our default
    for that variable must not be set when the user sized the cache with the flag."""
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    args, passthrough = _serve_args("--kv-cache-memory-bytes", "268435456")
    assert "VLLM_CPU_KVCACHE_SPACE" not in serve_environment(args, passthrough)
    args, passthrough = _serve_args("--kv-cache-memory-bytes=1G")
    assert "VLLM_CPU_KVCACHE_SPACE" not in serve_environment(args, passthrough)
    args, passthrough = _serve_args("--max-num-seqs", "8")
    assert serve_environment(args, passthrough)["VLLM_CPU_KVCACHE_SPACE"] == "4"


def test_parse_layers() -> None:
    assert parse_layers("6-9,12") == [6, 7, 8, 9, 12]


def test_several_api_servers_use_vllms_serve_path_and_the_store_url_is_passed_on() -> None:
    one = serve_command(*_serve_args("--model", "/m"))
    two = serve_command(*_serve_args("--model", "/m", "--api-server-count", "2"))
    three = serve_command(*_serve_args("--model", "/m", "--api-server-count=3"))
    assert one[2] == "vllm.entrypoints.launchers.api_server.entry"
    assert two[2] == three[2] == "steer_serve_vllm.api.multi_api_entry" and two[-2:] == ["--api-server-count", "2"]
    args, _ = _serve_args("--experiments-db", "postgresql://u@h/d")
    assert serve_environment(args)["STEER_SERVE_EXPERIMENTS_DB"] == "postgresql://u@h/d"


def test_steering_memory_flags_reach_the_engine_settings(monkeypatch) -> None:
    from steer_serve.settings import Settings

    args, passthrough = _serve_args("--steering-memory", "8", "--steering-slots", "16", "--steering-projections", "8",
                                    "--max-num-seqs", "64")
    env = serve_environment(args)
    assert passthrough == ["--max-num-seqs", "64"]
    for name in ("STEER_SERVE_STEERING_MEMORY", "STEER_SERVE_STEERING_SLOTS", "STEER_SERVE_STEERING_PROJECTIONS"):
        monkeypatch.setenv(name, env[name])
    settings = Settings()
    assert (settings.steering_memory, settings.steering_slots, settings.steering_projections) == (8.0, 16, 8)
    args, _ = _serve_args("--topk-clamp-saes", "a", "b")
    monkeypatch.setenv("STEER_SERVE_TOPK_CLAMP_SAES", serve_environment(args)["STEER_SERVE_TOPK_CLAMP_SAES"])
    assert Settings().topk_clamp_saes == ["a", "b"]
    with pytest.raises(SystemExit):  # argparse: K in 1..16
        _serve_args("--steering-projections", "17")
    monkeypatch.setenv("STEER_SERVE_STEERING_PROJECTIONS", "17")
    with pytest.raises(ValueError, match="steering_projections"):
        Settings()


def test_site_switches_reach_the_engine_settings(monkeypatch) -> None:
    from steer_serve.settings import Settings

    for name in ("STEER_SERVE_HEAD_SITES", "STEER_SERVE_EXPERT_SITES"):
        monkeypatch.delenv(name, raising=False)
    args, _ = _serve_args()
    assert "STEER_SERVE_HEAD_SITES" not in serve_environment(args)
    assert (Settings().head_sites, Settings().expert_sites) == (True, True)  # installed unless switched off
    args, passthrough = _serve_args("--no-head-sites", "--no-expert-sites", "--enforce-eager")
    env = serve_environment(args)
    assert passthrough == ["--enforce-eager"]
    for name in ("STEER_SERVE_HEAD_SITES", "STEER_SERVE_EXPERT_SITES"):
        monkeypatch.setenv(name, env[name])
    assert (Settings().head_sites, Settings().expert_sites) == (False, False)


def test_a_leading_model_is_the_model_as_in_vllm_serve() -> None:
    """`steer-serve serve MODEL ...`: passed on, vLLM's launcher ignored the word and served the
    default model. Flag values (`--dtype float32`) are never taken for it."""
    args, passthrough = _serve_args("/models/tiny", "--dtype", "float32", "--enforce-eager")
    passthrough = take_positional_model(args, passthrough)
    command = serve_command(args, passthrough)
    assert command[command.index("--model") + 1] == "/models/tiny"
    assert "/models/tiny" not in command[command.index("--model") + 2:] and "--served-model-name" not in command
    assert command[-3:] == ["--dtype", "float32", "--enforce-eager"]
    args, passthrough = _serve_args("--dtype", "float32")
    assert take_positional_model(args, passthrough) == ["--dtype", "float32"] and args.model is None
    args, passthrough = _serve_args("--model", "/a", "/b")
    with pytest.raises(ValueError, match="given twice"):
        take_positional_model(args, passthrough)


def test_a_model_given_twice_fails_before_vllm_starts(capsys) -> None:
    from steer_serve.cli import main

    assert main(["serve", "--model", "/a", "/b"]) == 2
    assert "given twice" in capsys.readouterr().err
