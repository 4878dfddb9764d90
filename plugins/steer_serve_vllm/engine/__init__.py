"""The worker (engine) process: model-runner patches, decoder-layer hooks, the per-request
steering runtime, its tables and slots."""
