"""Exit non-zero when the engine dies, so that a supervisor restarts the server.

vLLM 0.32 notices a dead EngineCore within a second (`/health` answers 503) and its watchdog
stops the API server within ~5 s, but the process then exits with status 0 (verified: SIGKILL
of EngineCore -> API server exit 0). systemd `Restart=on-failure` and similar policies treat 0
as a deliberate stop and would leave the service down. At interpreter exit we look at the
engine processes vLLM started: if one ended with a non-zero status (killed by a signal, crashed,
OOM-killed), the API server exits with ENGINE_DIED_EXIT_CODE instead of 0. On a normal stop the
engine processes exit 0 (or are still being reaped), and nothing changes.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from typing import Any

logger = logging.getLogger(f"vllm.{__name__}")  # vLLM configures handlers for "vllm.*" only

ENGINE_DIED_EXIT_CODE = 70  # EX_SOFTWARE (sysexits.h): an internal component failed


def _engine_processes(engine_client: Any) -> list[Any]:
    """The EngineCore processes this API server launched; [] when another process owns them
    (e.g. --api-server-count > 1, where the launcher process holds the engine manager)."""
    resources = getattr(getattr(engine_client, "engine_core", None), "resources", None)
    return list(getattr(getattr(resources, "engine_manager", None), "processes", None) or [])


def exit_nonzero_on_engine_death(engine_client: Any) -> None:
    processes = _engine_processes(engine_client)
    if not processes:
        logger.warning("steer-serve: no engine processes visible from this API server; "
                       "an engine death will not change its exit status")
        return

    def check_at_exit() -> None:
        failed = [(p.name, p.exitcode) for p in processes if p.exitcode not in (None, 0)]
        if not failed:
            return
        logger.error("steer-serve: engine process(es) died %s; exiting with status %d so that a supervisor "
                     "restarts the server", failed, ENGINE_DIED_EXIT_CODE)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(ENGINE_DIED_EXIT_CODE)  # the only way to change the status from an atexit handler

    atexit.register(check_at_exit)
