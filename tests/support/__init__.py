"""Shared test helpers: tiny models, server processes, the HF reference, HTTP clients."""
