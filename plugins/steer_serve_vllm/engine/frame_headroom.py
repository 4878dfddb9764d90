"""Run a call with ~30 KiB of free CPython frame stack above it, so that the frames it pushes do not
cross a stack-chunk boundary on every call.

Why: CPython 3.11+ keeps Python frames in chunks of 16 KiB (larger for a larger frame). A frame that
does not fit in the rest of the current chunk gets a new chunk from mmap, and when that frame returns
the chunk is unmapped. A caller whose frame ends just short of its chunk's end therefore maps, faults
in and unmaps a chunk on every call it makes. A compiled vLLM step on CPU has such a caller: inductor's
Python wrapper, one large frame whose size the graph sets, calls hundreds of ops a step through
`OpOverload.__call__`. Where that frame lands depends on the graph and on every frame below it, so
plain vLLM pays this too, by luck. Served, the default model's graph with our sites landed badly:
the worker took ~3,300 minor page faults a second, all in `_PyThreadState_BumpFramePointerSlow`,
against ~800 for plain vLLM, and ran 2-3% slower. One more small frame below the step took it to 40
a second, but only by moving the boundary; this padded frame to ~180, and both ran faster than plain
vLLM (loadtests/reports/frame-stack-headroom).

`call_with_headroom`'s frame is just over 32 KiB (its locals are never assigned: they only size the
frame). It does not fit in what is left of the chunk below it, so CPython gives it a new 64 KiB chunk,
leaving ~30 KiB for the step's frames above it. That costs one mapping a step instead of one a call.
"""

from __future__ import annotations

from typing import Any, Callable

PAD_SLOTS = 4200  # 8 bytes each: ~33 KiB of frame, placed at the start of a fresh 64 KiB chunk


def _padded_caller() -> Callable[..., Any]:
    names = " = ".join(f"_{i}" for i in range(PAD_SLOTS))
    source = ("def call_with_headroom(call, /, *args, **kwargs):\n"
              f"    if False:\n        {names} = None\n"
              "    return call(*args, **kwargs)\n")
    namespace: dict[str, Any] = {}
    exec(compile(source, __file__, "exec"), namespace)  # noqa: S102 - generated source, no input
    return namespace["call_with_headroom"]


call_with_headroom: Callable[..., Any] = _padded_caller()
