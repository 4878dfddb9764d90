"""The worker patches add the stats method that the API side calls by name.

That every patched symbol exists and is wrapped once is tests/steer_serve_vllm/test_ledger.py.
"""

from __future__ import annotations

from steer_serve_vllm.engine.worker_patches import apply_worker_patches
from steer_serve_vllm.ledger import LEDGER


def test_stats_method_is_added_to_the_worker_class() -> None:
    """collective_rpc("steer_serve_stats") finds it by name on vLLM's Worker (CPUWorker inherits)."""
    from vllm.v1.worker.cpu_worker import CPUWorker
    from vllm.v1.worker.gpu_worker import Worker

    from steer_serve_vllm.engine.worker_patches import worker_stats
    from steer_serve_vllm.names import STATS_METHOD

    apply_worker_patches()
    assert vars(Worker)[STATS_METHOD] is worker_stats
    assert getattr(CPUWorker, STATS_METHOD) is worker_stats
    assert any(r.how == "add" and r.target.path.endswith(STATS_METHOD) for r in LEDGER)


def test_capabilities_method_is_added_to_the_worker_class() -> None:
    """The capability handshake: collective_rpc("steer_serve_capabilities") finds it by name."""
    from vllm.v1.worker.cpu_worker import CPUWorker

    from steer_serve_vllm.engine.worker_patches import worker_capabilities
    from steer_serve_vllm.names import CAPABILITIES_METHOD

    apply_worker_patches()
    assert getattr(CPUWorker, CAPABILITIES_METHOD) is worker_capabilities
