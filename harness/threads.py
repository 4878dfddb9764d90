"""Run HF forwards on one torch thread: on a shared 2-core machine two OpenMP threads that
spin against other processes make a tiny model's forward hundreds of times slower."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def single_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
