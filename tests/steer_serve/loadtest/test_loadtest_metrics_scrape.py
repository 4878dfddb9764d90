"""/metrics deltas: counters summed over labels, queue time as a per-request mean, statuses."""

from __future__ import annotations

from steer_serve.loadtest.metrics_scrape import parse, server_deltas

BEFORE = """# TYPE vllm:request_success counter
vllm:request_success_total{finished_reason="length",model_name="m"} 5.0
vllm:request_success_total{finished_reason="stop",model_name="m"} 1.0
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{model_name="m"} 60.0
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{model_name="m"} 100.0
# TYPE vllm:request_queue_time_seconds histogram
vllm:request_queue_time_seconds_sum{model_name="m"} 1.0
vllm:request_queue_time_seconds_count{model_name="m"} 6.0
# TYPE steer_serve:requests counter
steer_serve:requests_total{arm="none",experiment="none",model="m",status="200"} 6.0
"""
AFTER = BEFORE.replace('"length",model_name="m"} 5.0', '"length",model_name="m"} 9.0') \
    .replace("60.0", "100.0").replace("} 100.0\n# TYPE vllm:request_queue", "} 180.0\n# TYPE vllm:request_queue") \
    .replace("_sum{model_name=\"m\"} 1.0", "_sum{model_name=\"m\"} 3.0") \
    .replace("_count{model_name=\"m\"} 6.0", "_count{model_name=\"m\"} 10.0") \
    .replace('status="200"} 6.0', 'status="200"} 10.0\nsteer_serve:requests_total{arm="none",experiment="none",'
                                   'model="m",status="400"} 2.0')


def test_deltas() -> None:
    deltas = server_deltas(parse(BEFORE), parse(AFTER))
    assert deltas["requests_finished"] == 4 and deltas["generation_tokens"] == 40 and deltas["prompt_tokens"] == 80
    assert deltas["mean_queue_time_ms"] == 500.0  # 2 s more queue time over 4 more requests
    assert deltas["steer_serve_requests_by_status"] == {"200": 4.0, "400": 2.0}


def test_plain_vllm_has_no_steer_serve_figures() -> None:
    plain = BEFORE.split("# TYPE steer_serve")[0]
    deltas = server_deltas(parse(plain), parse(plain))
    assert deltas["requests_finished"] == 0 and "steer_serve_requests_by_status" not in deltas
