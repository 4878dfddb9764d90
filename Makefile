# Two commands on a fresh machine: `make serve` (the server on the default model) and `make test`.
# Both install everything first (scripts/setup.sh, idempotent).
.PHONY: setup serve test test-fast loadtest loadtest-compare

PORT ?= 8000
export HF_HUB_OFFLINE := 1

setup:
	@scripts/setup.sh

serve: setup
	.venv/bin/steer-serve serve --port $(PORT) $(ARGS)

# Two pytest-xdist workers, one per core (tests/conftest.py: one worker per module, OpenMP binding per worker).
# A crashed worker ends the run at once (its servers are gone; a replacement would restart them all).
test: setup
	.venv/bin/python -m pytest tests -q -n 2 --max-worker-restart=0 $(ARGS)

test-fast: setup
	.venv/bin/python -m pytest tests -q -m "not slow" $(ARGS)

# The standard comparison: one scenario through `steer-serve loadtest` on plain vLLM, then on steer-serve gated
# against it (steer-serve/plain ratios in summary.md), then the same load half steered (~6 min on 2 cores).
loadtest: setup
	.venv/bin/python -m loadtests.scenario_pair --out loadtests/reports/$(or $(REPORT),loadtest-default) \
		--pair configs/loadtests/plain-vllm.yaml --steered configs/loadtests/mixed-batch.yaml $(ARGS)

# The detailed harness behind docs/performance.md: interleaved repeats, open-loop sweeps, MoE and
# overhead-bound tiny models, the HF-hook baseline (~25 min on 2 cores); see loadtests/compare.py.
loadtest-compare: setup
	.venv/bin/python -m loadtests.compare --out loadtests/reports/$(or $(REPORT),cpu-default) $(ARGS)
