"""CPU seconds per process (API server, EngineCore, worker) for the same load (128 requests of 64 prompt and
128 output tokens, 32 concurrent, after a 32-request warm-up) on plain vLLM and steer-serve unsteered, both
compiled, default model; alternated rounds. `profile`: py-spy (raw, 100 Hz; `pip install py-spy` into
/tmp/spy) of the Worker process of each variant under the same load, plain first. Run from the
repository root with its venv:

    .venv/bin/python loadtests/reports/idle-before-dispatcher/server-profiles/cpu_ab.py cpu ROUNDS
    .venv/bin/python loadtests/reports/idle-before-dispatcher/server-profiles/cpu_ab.py profile OUT_DIR
    .venv/bin/python loadtests/reports/idle-before-dispatcher/server-profiles/cpu_ab.py halves ROUNDS

`halves`: served throughput of plain vLLM, of vLLM's own API server over steer-serve's engine half
(hooks installed in the workers; the endpoint plugin kept out by switching off its guard in the API
process, for this measurement only) and of steer-serve whole, alternated.

The blocking profile (`plugin-blocking.txt.gz`) is the same for steer-serve alone, without --nonblocking.
"""
import asyncio, contextlib, io, json, signal, subprocess, sys, time
from pathlib import Path
import numpy as np, psutil
from harness.servers import Server
from steer_serve.default_model import default_model_dir
from vllm.benchmarks.datasets.datasets import SampleRequest
from vllm.benchmarks.serve import TaskType, benchmark
from vllm.tokenizers import get_tokenizer

model = default_model_dir()
tok = get_tokenizer(str(model))
logs = Path("/tmp/cpu_ab_logs"); logs.mkdir(exist_ok=True)


def load(url, n, seed):
    rng = np.random.default_rng(seed)
    samples = [SampleRequest(prompt=[int(t) for t in rng.integers(100, 30000, 64)], prompt_len=64,
                             expected_output_len=128) for _ in range(n)]
    call = benchmark(task_type=TaskType.GENERATION, endpoint_type="openai", api_url=f"{url}/v1/completions",
        base_url=url, model_id=str(model), model_name=str(model), tokenizer=tok,
        input_requests=samples, logprobs=None, request_rate=float("inf"), burstiness=1.0, disable_tqdm=True,
        num_warmups=0, profile=False, selected_percentile_metrics=["ttft", "tpot"], selected_percentiles=[50.0],
        ignore_eos=True, goodput_config_dict={}, max_concurrency=32, lora_modules=None, extra_headers=None,
        extra_body={"temperature": 0.0})
    with contextlib.redirect_stdout(io.StringIO()):
        return asyncio.run(call)


def cpu(proc):
    out = {}
    for p in [proc] + proc.children(recursive=True):
        try:
            t = p.cpu_times(); name = p.name() if "VLLM" in p.name() else "api"
            out[name] = out.get(name, 0.0) + t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return out



# vLLM's own API server; our general plugin hooks the workers, its endpoint half stays out
ENGINE_HALF = ("import runpy, sys; import steer_serve_vllm.api.endpoint_guard as guard; "
               "guard.guard_endpoint_plugin_loading = lambda: None; sys.argv[0] = 'api_server'; "
               "runpy.run_module('vllm.entrypoints.openai.api_server', run_name='__main__')")


def started(plugin):
    s = Server(model, logs, plugin=plugin, eager=False, kv_cache_bytes=2**30)
    s.wait_ready()
    load(s.url, 32, 99)  # warm-up
    return s


def cpu_rounds(rounds):
    for rnd in range(rounds):
        for plugin in ((False, True) if rnd % 2 == 0 else (True, False)):
            s = started(plugin)
            proc = psutil.Process(s.process.pid)
            before = cpu(proc); t = time.perf_counter()
            r = load(s.url, 128, rnd)
            wall = time.perf_counter() - t; after = cpu(proc)
            used = {k: round(after[k] - before.get(k, 0.0), 2) for k in after}
            print(json.dumps({"round": rnd, "variant": "plugin" if plugin else "plain", "wall_s": round(wall, 2),
                              "tok_s": round(r["output_throughput"], 1), "tpot_p50": round(float(r["median_tpot_ms"]), 1),
                              "cpu_s": used}), flush=True)
            s.stop()


def profiles(out):
    out.mkdir(exist_ok=True)
    for plugin in (False, True):
        s = started(plugin)
        worker = next(p for p in psutil.Process(s.process.pid).children(recursive=True) if p.name() == "VLLM::Worker")
        name = out / f"{'plugin' if plugin else 'plain'}.txt"
        spy = subprocess.Popen(["/tmp/spy/bin/py-spy", "record", "--pid", str(worker.pid), "--format", "raw",
                                "--rate", "100", "--nonblocking", "-o", str(name)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2)
        t = time.perf_counter(); r = load(s.url, 128, 0); wall = time.perf_counter() - t
        spy.send_signal(signal.SIGINT); spy.wait()
        print(json.dumps({"variant": name.stem, "wall_s": round(wall, 2), "tok_s": round(r["output_throughput"], 1),
                          "tpot_p50": round(float(r["median_tpot_ms"]), 1)}), flush=True)
        s.stop()


class EngineHalfServer:
    """vLLM's own OpenAI server (`python -c ENGINE_HALF`) with the test servers' arguments."""

    def __init__(self):
        import os
        from harness.servers import REPO_ROOT, free_port
        from loadtests.scenario_pair import wait_ready
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["--model", str(model), "--port", str(self.port), "--host", "127.0.0.1", "--dtype", "float32",
                "--max-model-len", "1024", "--max-num-seqs", "32", "--seed", "0", "--kv-cache-memory-bytes",
                str(2**30)]
        env = {k: v for k, v in os.environ.items() if k not in ("VLLM_PLUGINS", "VLLM_CPU_KVCACHE_SPACE")}
        env |= {"HF_HUB_OFFLINE": "1", "VLLM_USE_V2_MODEL_RUNNER": "0"}
        log = logs / f"engine-half-{self.port}.log"
        self.log = open(log, "w")
        self.process = subprocess.Popen([sys.executable, "-c", ENGINE_HALF, *args], stdout=self.log,
                                        stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
        wait_ready(self.process, self.url, log, timeout_s=600)
        load(self.url, 32, 99)  # warm-up

    def stop(self):
        self.process.terminate()
        self.process.wait(60)


def halves(rounds):
    variants = [("plain", lambda: started(False)), ("engine-half", EngineHalfServer),
                ("steer-serve", lambda: started(True))]
    for rnd in range(rounds):
        for name, start in (variants if rnd % 2 == 0 else variants[::-1]):
            s = start()
            t = time.perf_counter(); r = load(s.url, 128, rnd); wall = time.perf_counter() - t
            print(json.dumps({"round": rnd, "variant": name, "wall_s": round(wall, 2),
                              "tok_s": round(r["output_throughput"], 1),
                              "tpot_p50": round(float(r["median_tpot_ms"]), 1)}), flush=True)
            s.stop()


if __name__ == "__main__":
    mode, arg = sys.argv[1], sys.argv[2]
    cpu_rounds(int(arg)) if mode == "cpu" else halves(int(arg)) if mode == "halves" else profiles(Path(arg))
