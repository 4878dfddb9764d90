"""CPU seconds per process (API server, EngineCore, worker) for the same load (128 requests of 64 prompt and
128 output tokens, 32 concurrent, after a 32-request warm-up) on plain vLLM and steer-serve unsteered, both
compiled, default model; alternated rounds. `profile`: py-spy (raw, 100 Hz; `pip install py-spy` into
/tmp/spy) of the Worker process of each variant under the same load, plain first. Run from the
repository root with its venv:

    .venv/bin/python loadtests/reports/idle-before-dispatcher/server-profiles/cpu_ab.py cpu ROUNDS
    .venv/bin/python loadtests/reports/idle-before-dispatcher/server-profiles/cpu_ab.py profile OUT_DIR
    .venv/bin/python loadtests/reports/idle-before-dispatcher/server-profiles/cpu_ab.py halves ROUNDS
    .venv/bin/python loadtests/reports/idle-before-dispatcher/server-profiles/cpu_ab.py pinned ROUNDS
    .venv/bin/python loadtests/reports/idle-before-dispatcher/server-profiles/cpu_ab.py pieces ROUNDS [PIECE,...]
    .venv/bin/python loadtests/reports/idle-before-dispatcher/server-profiles/cpu_ab.py faults OUT_DIR [PIECE,...]
    .venv/bin/python loadtests/reports/idle-before-dispatcher/server-profiles/cpu_ab.py frames ROUNDS

`halves`: served throughput of plain vLLM, of vLLM's own API server over steer-serve's engine half
(hooks installed in the workers; the endpoint plugin kept out by switching off its guard in the API
process, for this measurement only) and of steer-serve whole, alternated.

`pinned`: plain vLLM and steer-serve unsteered, alternated, with every thread of the API server and
EngineCore, and the load client, moved to core 1 once the server is up, so that the worker (bound by
vLLM to core 0) has its core to itself.

`pieces`: plain vLLM, the engine half whole, and the engine half with one piece switched off in
every process by `pieces/sitecustomize.py` (by default the hook sites, the per-step bookkeeping and the
scheduler's admission wrapper, one at a time; that file lists the others), alternated.

`faults` and `frames` measure the worker's page faults (loadtests/reports/frame-stack-headroom/NOTE.md).

The blocking profile (`plugin-blocking.txt.gz`) is the same for steer-serve alone, without --nonblocking.
"""
import asyncio, contextlib, io, json, os, signal, subprocess, sys, time
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
        worker = _worker(s)
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

    def __init__(self, piece_off=None, frame_pad=None):
        from harness.servers import REPO_ROOT, free_port
        from loadtests.scenario_pair import wait_ready
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["--model", str(model), "--port", str(self.port), "--host", "127.0.0.1", "--dtype", "float32",
                "--max-model-len", "1024", "--max-num-seqs", "32", "--seed", "0", "--kv-cache-memory-bytes",
                str(2**30)]
        env = {k: v for k, v in os.environ.items() if k not in ("VLLM_PLUGINS", "VLLM_CPU_KVCACHE_SPACE")}
        env |= {"HF_HUB_OFFLINE": "1", "VLLM_USE_V2_MODEL_RUNNER": "0"}
        if piece_off:  # pieces/sitecustomize.py switches it off in every process
            env |= {"STEER_SERVE_PIECE_OFF": piece_off, "PYTHONPATH": str(Path(__file__).parent / "pieces")}
        if frame_pad is not None:  # pieces/sitecustomize.py: execute_model in one more, padded, frame
            env |= {"STEER_SERVE_FRAME_PAD": str(frame_pad), "PYTHONPATH": str(Path(__file__).parent / "pieces")}
        log = logs / f"engine-half-{piece_off or 'whole'}-{self.port}.log"
        self.log = open(log, "w")
        self.process = subprocess.Popen([sys.executable, "-c", ENGINE_HALF, *args], stdout=self.log,
                                        stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
        wait_ready(self.process, self.url, log, timeout_s=600)
        load(self.url, 32, 99)  # warm-up

    def stop(self):
        self.process.terminate()
        self.process.wait(60)


def alternated(variants, rounds, measure=None):
    """Each round starts every (name, start) variant in turn, reversed on odd rounds, and prints the
    load's wall time, throughput and TPOT, plus `measure(server, wall_s)` when given."""
    for rnd in range(rounds):
        for name, start in (variants if rnd % 2 == 0 else variants[::-1]):
            s = start()
            taken = measure(s) if measure else None
            t = time.perf_counter(); r = load(s.url, 128, rnd); wall = time.perf_counter() - t
            print(json.dumps({"round": rnd, "variant": name, "wall_s": round(wall, 2),
                              "tok_s": round(r["output_throughput"], 1),
                              "tpot_p50": round(float(r["median_tpot_ms"]), 1)} | (taken(wall) if taken else {})),
                  flush=True)
            s.stop()


def halves(rounds):
    alternated([("plain", lambda: started(False)), ("engine-half", EngineHalfServer),
                ("steer-serve", lambda: started(True))], rounds)


def pieces(rounds, off=("sites", "step", "admission")):
    variants = [("plain", lambda: started(False)), ("engine-half", EngineHalfServer)]
    variants += [(f"engine-half without {piece}", lambda piece=piece: EngineHalfServer(piece)) for piece in off]
    alternated(variants, rounds)


def page_faults(out, off=("sites",)):
    """The worker's minor page faults under the load (from /proc) and `perf record -e page-faults`
    call graphs saved to OUT/<variant>.perf.data for `perf report`; plain, the engine half and the
    engine half without each piece in `off`."""
    out.mkdir(exist_ok=True)
    variants = [("plain", lambda: started(False)), ("engine-half", EngineHalfServer)]
    variants += [(f"engine-half-without-{piece}", lambda piece=piece: EngineHalfServer(piece)) for piece in off]
    for name, start in variants:
        s = start()
        worker = _worker(s)
        perf = subprocess.Popen(["perf", "record", "-q", "-e", "page-faults", "-g", "-p", str(worker.pid), "-o",
                                 str(out / f"{name}.perf.data")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = psutil.Process(worker.pid).cpu_times(); faults = _minor_faults(worker.pid)
        t = time.perf_counter(); r = load(s.url, 128, 0); wall = time.perf_counter() - t
        after = psutil.Process(worker.pid).cpu_times()
        print(json.dumps({"variant": name, "wall_s": round(wall, 2), "tok_s": round(r["output_throughput"], 1),
                          "worker_minor_faults": _minor_faults(worker.pid) - faults,
                          "worker_user_s": round(after.user - before.user, 2),
                          "worker_system_s": round(after.system - before.system, 2)}), flush=True)
        perf.send_signal(signal.SIGINT); perf.wait()
        s.stop()


def _minor_faults(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def frames(rounds, pads=(0, 4200)):
    """The worker's minor page faults a second and system time under the load, with throughput, for
    plain vLLM, the engine half, and the engine half with execute_model inside one more frame of each
    size in `pads`."""
    variants = [("plain", lambda: started(False)), ("engine-half", EngineHalfServer)]
    variants += [(f"engine-half, frame of {pad} locals", lambda pad=pad: EngineHalfServer(frame_pad=pad)) for pad in pads]
    alternated(variants, rounds, measure=_worker_faults)


def _worker_faults(server):
    worker = _worker(server)
    before = worker.cpu_times(); faults = _minor_faults(worker.pid)

    def taken(wall):
        return {"worker_minor_faults_per_s": round((_minor_faults(worker.pid) - faults) / wall),
                "worker_system_s": round(worker.cpu_times().system - before.system, 2)}
    return taken


def _worker(server):
    return next(p for p in psutil.Process(server.process.pid).children(recursive=True) if p.name() == "VLLM::Worker")


def pin_off_worker_core(server):
    """Every thread of the API server and EngineCore, and this load client, onto core 1: the worker
    (which vLLM binds to core 0) then has its core to itself, as on a machine with cores to spare."""
    os.sched_setaffinity(0, {1})
    for proc in [psutil.Process(server.process.pid)] + psutil.Process(server.process.pid).children(recursive=True):
        if proc.name() != "VLLM::Worker":
            for thread in proc.threads():
                os.sched_setaffinity(thread.id, {1})
    return {p.name(): sorted(p.cpu_affinity()) for p in psutil.Process(server.process.pid).children(recursive=True)}


def pinned_rounds(rounds):
    for rnd in range(rounds):
        for plugin in ((False, True) if rnd % 2 == 0 else (True, False)):
            os.sched_setaffinity(0, {0, 1})
            s = started(plugin)
            affinity = pin_off_worker_core(s)
            load(s.url, 32, 98)  # settle after pinning
            t = time.perf_counter(); r = load(s.url, 128, rnd); wall = time.perf_counter() - t
            print(json.dumps({"round": rnd, "variant": "plugin" if plugin else "plain", "wall_s": round(wall, 2),
                              "tok_s": round(r["output_throughput"], 1),
                              "tpot_p50": round(float(r["median_tpot_ms"]), 1), "affinity": affinity}), flush=True)
            s.stop()


if __name__ == "__main__":
    mode, arg = sys.argv[1], sys.argv[2]
    run = {"cpu": cpu_rounds, "halves": halves, "pinned": pinned_rounds, "pieces": pieces}.get(mode)
    if mode == "pieces" and len(sys.argv) > 3:
        pieces(int(arg), sys.argv[3].split(","))
    elif mode == "frames":
        frames(int(arg))
    elif mode == "faults":
        page_faults(Path(arg), sys.argv[3].split(",") if len(sys.argv) > 3 else ("sites",))
    else:
        run(int(arg)) if run else profiles(Path(arg))
