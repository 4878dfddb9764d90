"""restart_time's bookkeeping: the schedule alternates variants, a log's stamps become phases, and
no start is begun that the longest like it so far would push past the hold's budget."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from loadtests.restart_time import cache_states, estimate, milestones, phases, schedule

LOG = """(APIServer pid=1) INFO 11-28 09:17:46 [api_utils.py:286] non-default args: {'port': 1}
(EngineCore pid=2) INFO 11-28 09:18:12 [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: x
(Worker pid=3) INFO 11-28 09:18:25 [cpu_model_runner.py:68] Starting to load model /m...
(Worker pid=3) INFO 11-28 09:18:26 [default_loader.py:501] Loading weights took 0.43 seconds
(Worker pid=3) INFO 11-28 09:18:28 [cpu_model_runner.py:87] Warming up model for the compilation...
(Worker pid=3) INFO 11-28 09:21:25 [decorators.py:743] [backbone] saved AOT compiled function to /x
(EngineCore pid=2) INFO 11-28 09:21:34 [core.py:402] init engine (profile, create kv cache, warmup model) took 185.93 s
(APIServer pid=1) INFO 11-28 09:21:36 [entry.py:140] Starting vLLM server on http://127.0.0.1:1
"""


def test_a_log_becomes_the_phases_of_a_start() -> None:
    began = datetime(2026, 11, 28, 9, 17, 40, tzinfo=timezone.utc).timestamp()
    steps = phases(milestones(LOG, began, began + 243.6))
    assert steps["torch.compile (dynamo trace, AOT save)"] == 177.0
    assert steps["config, engine core process"] == 26.0 and steps["first healthy /health"] == 7.6
    assert sum(steps.values()) == pytest.approx(243.6)  # the phases tile the start


def test_warm_rounds_alternate_the_order() -> None:
    assert schedule(2) == [("cold", "plain"), ("cold", "steer-serve"), ("warm", "steer-serve"), ("warm", "plain"),
                           ("warm", "plain"), ("warm", "steer-serve")]


def test_the_next_start_is_estimated_from_the_longest_like_it() -> None:
    done = [{"variant": "plain", "phase": "cold", "seconds": 200.0},
            {"variant": "steer-serve", "phase": "cold", "seconds": 300.0},
            {"variant": "steer-serve", "phase": "warm", "seconds": 150.0}]
    assert estimate(done, "warm", "steer-serve") == 1.2 * 150 + 20
    assert estimate(done, "warm", "plain") == 200 + 20  # no warm plain yet: its cold start
    assert estimate(done[:1], "cold", "steer-serve") == 1.5 * 200 + 20


def test_a_start_is_warm_only_on_a_key_its_variant_wrote_before() -> None:
    starts = [{"variant": "plain", "aot_keys": ["a"]}, {"variant": "steer-serve", "aot_keys": ["b"]},
              {"variant": "steer-serve", "aot_keys": ["b"]}, {"variant": "plain", "aot_keys": ["c"]},
              {"variant": "plain", "aot_keys": ["c"]}]
    assert cache_states(starts) == ["cold", "cold", "warm", "cold", "warm"]  # start 4: a new environment, a new key
