"""The vLLM benchmark symbols `steer_serve_vllm.bench` relies on still exist with the arguments it
passes (the test to run after a vLLM upgrade, next to the ledger's)."""

from __future__ import annotations

import inspect


def test_benchmark_takes_what_bench_passes() -> None:
    from vllm.benchmarks.serve import benchmark, calculate_metrics

    wanted = {"task_type", "endpoint_type", "api_url", "base_url", "model_id", "model_name", "tokenizer",
              "input_requests", "logprobs", "request_rate", "burstiness", "disable_tqdm", "num_warmups", "profile",
              "selected_percentile_metrics", "selected_percentiles", "ignore_eos", "goodput_config_dict",
              "max_concurrency", "lora_modules", "extra_headers", "extra_body", "ready_check_timeout_sec"}
    assert wanted <= set(inspect.signature(benchmark).parameters)
    assert {"input_requests", "outputs", "dur_s", "tokenizer", "selected_percentiles",
            "goodput_config_dict"} <= set(inspect.signature(calculate_metrics).parameters)


def test_the_engine_is_found_by_entry_point() -> None:
    from steer_serve.loadtest.engine import load_engine
    from steer_serve_vllm.bench import run_bench

    assert load_engine() is run_bench
