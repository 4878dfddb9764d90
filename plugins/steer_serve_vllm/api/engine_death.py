"""Exit non-zero when the engine dies, so that a supervisor restarts the server.

vLLM 0.32 notices a dead EngineCore within a second (`/health` answers 503) and its watchdog
stops the API server within ~5 s, but the process then exits with status 0 (verified: SIGKILL
of EngineCore -> API server exit 0). systemd `Restart=on-failure` and similar policies treat 0
as a deliberate stop and would leave the service down.

A daemon thread waits for any EngineCore process to end. If the engine client had not been
asked to shut down before that (vLLM's own SIGTERM/SIGINT path calls `engine_client.shutdown`
first, and may then SIGKILL the engine, so exit codes alone cannot tell), the engine died: at
interpreter exit the API server exits with ENGINE_DIED_EXIT_CODE instead of 0.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import sys
import threading
from multiprocessing.connection import wait
from typing import Any

logger = logging.getLogger(f"vllm.{__name__}")  # vLLM configures handlers for "vllm.*" only

ENGINE_DIED_EXIT_CODE = 70  # EX_SOFTWARE (sysexits.h): an internal component failed


def _engine_processes(engine_client: Any) -> list[Any]:
    """The EngineCore processes this API server launched; [] when another process owns them
    (e.g. --api-server-count > 1, where the launcher process holds the engine manager)."""
    resources = getattr(getattr(engine_client, "engine_core", None), "resources", None)
    return list(getattr(getattr(resources, "engine_manager", None), "processes", None) or [])


class EngineDeathWatch:
    """Tells a deliberate stop (shutdown requested, then engine ends) from an engine death."""

    def __init__(self, engine_client: Any, processes: list[Any]) -> None:
        self.processes = processes
        self.stopping = threading.Event()
        self.died: list[tuple[str, int | None]] = []  # (name, exit code) of engine processes that died
        original = engine_client.shutdown

        @functools.wraps(original)
        def shutdown(*args: Any, **kwargs: Any) -> Any:
            self.stopping.set()
            return original(*args, **kwargs)

        engine_client.shutdown = shutdown  # this instance only; see steer_serve_vllm/ledger.py
        threading.Thread(target=self._watch, name="steer-serve-engine-death", daemon=True).start()
        atexit.register(self._exit_if_died)

    def _watch(self) -> None:
        ready = wait([p.sentinel for p in self.processes])
        if not self.stopping.is_set():
            ended = [p for p in self.processes if p.sentinel in ready]
            for process in ended:
                process.join(timeout=5)  # the sentinel fires just before the child can be reaped
            self.died = [(p.name, p.exitcode) for p in ended]
            logger.error("steer-serve: engine process(es) died %s; the server will exit with status %d",
                         self.died, ENGINE_DIED_EXIT_CODE)

    def _exit_if_died(self) -> None:
        if not self.died:
            return
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(ENGINE_DIED_EXIT_CODE)  # the only way to change the status from an atexit handler


def exit_nonzero_on_engine_death(engine_client: Any) -> EngineDeathWatch | None:
    processes = _engine_processes(engine_client)
    if not processes:
        logger.warning("steer-serve: no engine processes visible from this API server; "
                       "an engine death will not change its exit status")
        return None
    return EngineDeathWatch(engine_client, processes)
