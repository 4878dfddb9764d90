"""Test harness shared by tests/ and loadtests/: tiny models, server processes, the HF reference,
HTTP clients and case builders. An installed package (`pip install -e .`), so neither side edits
sys.path to import it."""
