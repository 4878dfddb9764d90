"""The patch ledger matches the installed vLLM: every symbol exists and is wrapped once.

This is the test to run first after a vLLM upgrade.
"""

from __future__ import annotations

import importlib

import pytest

from steer_serve_vllm.engine.worker_patches import apply_worker_patches
from steer_serve_vllm.ledger import LEDGER


def _resolve(symbol: str):
    module_path, cls_name, attr = symbol.rsplit(".", 2)
    return getattr(importlib.import_module(module_path), cls_name), attr


@pytest.mark.parametrize("record", [r for r in LEDGER if "(" not in r.symbol], ids=lambda r: r.symbol)
def test_ledger_symbol_is_patched(record) -> None:
    apply_worker_patches()
    apply_worker_patches()  # idempotent: vLLM loads general plugins more than once
    cls, attr = _resolve(record.symbol)
    method = vars(cls)[attr]
    assert getattr(method, "steer_serve_wrapper", False), f"{record.symbol} is not wrapped"
    assert not getattr(method.__wrapped__, "steer_serve_wrapper", False), f"{record.symbol} is wrapped twice"


def test_stats_method_is_added_to_the_worker_class() -> None:
    """collective_rpc("steer_serve_stats") finds it by name on vLLM's Worker (CPUWorker inherits)."""
    from vllm.v1.worker.cpu_worker import CPUWorker
    from vllm.v1.worker.gpu_worker import Worker

    from steer_serve_vllm.engine.worker_patches import worker_stats
    from steer_serve_vllm.names import STATS_METHOD

    apply_worker_patches()
    assert vars(Worker)[STATS_METHOD] is worker_stats
    assert getattr(CPUWorker, STATS_METHOD) is worker_stats
    assert any(STATS_METHOD in r.symbol for r in LEDGER)
