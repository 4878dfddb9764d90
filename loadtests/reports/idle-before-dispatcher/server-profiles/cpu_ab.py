"""CPU seconds per process (API server, EngineCore, worker) for the same load (128 requests of 64 prompt and
128 output tokens, 32 concurrent, after a 32-request warm-up) on plain vLLM and steer-serve unsteered, both
compiled, default model; alternated rounds. `profile`: py-spy (raw, 100 Hz; `pip install py-spy` into
/tmp/spy) of the Worker process of each variant under the same load, plain first. Run from the
repository root with its venv:

    .venv/bin/python loadtests/reports/idle-before-dispatcher/server-profiles/cpu_ab.py cpu ROUNDS
    .venv/bin/python loadtests/reports/idle-before-dispatcher/server-profiles/cpu_ab.py profile OUT_DIR

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


if __name__ == "__main__":
    cpu_rounds(int(sys.argv[2])) if sys.argv[1] == "cpu" else profiles(Path(sys.argv[2]))
