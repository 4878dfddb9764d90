"""Offline tools on a Hugging Face model, run from the CLI: activations, vector extraction,
effect reports, MoE expert discovery. Never imported by the server."""
