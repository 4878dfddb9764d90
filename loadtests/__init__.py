"""Load tests: steer-serve against plain vLLM in the same run (run from the repo root)."""
