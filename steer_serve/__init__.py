"""steer-serve: per-request steering inside vLLM's forward pass.

This package is the product's own domain (request spec, vector library, extraction, CLI);
it never imports vLLM internals. Those live in the `steer_serve_vllm` plugin package.
"""

__version__ = "0.1.0"
