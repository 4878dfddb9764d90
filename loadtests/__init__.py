"""Load tests: steer-serve against plain vLLM in the same run (servers and tiny models from `harness`)."""
