"""call_with_headroom: a caller whose frame ends just short of its CPython stack chunk maps and faults
in a new chunk on every call it makes; run inside call_with_headroom, the same caller does not."""

from __future__ import annotations

import resource
from typing import Any, Callable

from steer_serve_vllm.engine.frame_headroom import PAD_SLOTS, call_with_headroom

CALLS = 400


def _caller(slots: int) -> Callable[..., Any]:
    """A function with `slots` more frame slots that calls `callee` n times (each call pushes a frame)."""
    names = " = ".join(f"_{i}" for i in range(slots)) or "_"
    source = f"def caller(callee, n):\n    if False:\n        {names} = None\n    for _ in range(n):\n        callee()\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, "<caller>", "exec"), namespace)
    return namespace["caller"]


def _callee() -> None:
    return None


def _minor_faults(call: Callable[..., Any], *args: Any) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    call(*args)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_a_caller_at_a_chunk_end_faults_on_every_call_but_not_inside_the_headroom() -> None:
    callers = [_caller(slots) for slots in range(0, 4096, 4)]  # frame ends 32 bytes apart
    faults = [_minor_faults(caller, _callee, CALLS) for caller in callers]
    worst = max(range(len(callers)), key=faults.__getitem__)
    assert faults[worst] >= CALLS, "some frame size here ends just short of a chunk: a new chunk per call"
    assert _minor_faults(call_with_headroom, callers[worst], _callee, CALLS) < CALLS // 10


def test_call_with_headroom_passes_arguments_and_result_through() -> None:
    assert call_with_headroom(lambda a, /, b=0, *, c: (a, b, c), 1, c=3) == (1, 0, 3)
    assert call_with_headroom.__code__.co_nlocals >= PAD_SLOTS
