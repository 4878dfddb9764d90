"""`steer-serve loadtest`: load a running server (steer-serve or plain vLLM) with a described
traffic mix and report latency, goodput and SLOs. The requests are sent and timed by a benchmark
engine loaded by entry point (vLLM's serving benchmark, in the plugin package): this package never
imports vLLM."""
