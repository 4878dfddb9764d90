"""Engine only: the compiled in-process vLLM engine (no HTTP, no API process) on 64 requests of 64
random prompt tokens, steered (32 distinct vectors on 10 layers) or not. Run with the repo's venv
(its packages are installed).

    inproc_ab.py TAG ab REPS OUT_LEN       steered and unsteered alternated REPS times; generate() wall
                                           time per run and the median steered / unsteered time ratio
    inproc_ab.py TAG profile PY_SPY OUT    py-spy (raw, 200 Hz) of two unsteered and two steered
                                           batches of 128 output tokens, alternated; the last of each
                                           kind stays in OUT/prof-TAG-{steered,unsteered}.txt
"""
import json, os, signal, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np
import harness.in_process_engine as ipe
ipe.KV_CACHE_BYTES = 2**30
from harness.completions import completion_body
from loadtests import workloads as wl
from steer_serve.default_model import default_model_dir

eng = ipe.InProcessEngine(default_model_dir(), Path(tempfile.mkdtemp()), compile_backend="inductor")
from vllm import SamplingParams
steer = wl.distinct_vectors(wl.ModelSpec("default", 576, 30), 32, 10)
rng = np.random.default_rng(0)


def batch(steered, n, out_len):
    """n requests as the API process would hand them to the engine: (prompts, sampling params)."""
    prompts, params = [], []
    for i in range(n):
        body = completion_body(eng.model, rng.integers(100, 40000, 64).tolist(), out_len, steer(i) if steered else None)
        v = eng.gateway.prepare(ipe.PATH, json.dumps(body).encode())
        sent = body if v.body is None else json.loads(v.body)
        p = {"prompt_token_ids": sent["prompt"]}
        if sent.get("cache_salt"): p["cache_salt"] = sent["cache_salt"]
        prompts.append(p)
        params.append(SamplingParams(temperature=0.0, max_tokens=out_len, ignore_eos=True, extra_args=sent.get("vllm_xargs")))
    return prompts, params


def generate_s(prompts, params):
    t = time.perf_counter(); eng.llm.generate(prompts, params, use_tqdm=False); return time.perf_counter() - t


def ab(tag, reps, out_len):
    generate_s(*batch(False, 64, out_len)); generate_s(*batch(True, 64, out_len))  # warm
    res = {"unsteered": [], "steered": []}
    for r in range(reps):
        for s in ((False, True) if r % 2 == 0 else (True, False)):
            d = generate_s(*batch(s, 64, out_len)); res["steered" if s else "unsteered"].append(d)
            print(tag, "steered" if s else "unsteered", round(d, 3), flush=True)
    u, s = np.array(res["unsteered"]), np.array(res["steered"])
    print(tag, "ratio steered/unsteered time (median of pairs)", round(float(np.median(s / u)), 4), "pairs", np.round(s / u, 3).tolist(), flush=True)


def profile(tag, py_spy, out):
    for s in (False, True):
        generate_s(*batch(s, 32, 16))  # warm
    for s in (False, True, False, True):
        prompts, params = batch(s, 64, 128)
        name = f"{out}/prof-{tag}-{'steered' if s else 'unsteered'}.txt"
        spy = subprocess.Popen([py_spy, "record", "--pid", str(os.getpid()), "--format", "raw", "--rate", "200",
                                "--nonblocking", "-o", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)
        d = generate_s(prompts, params)
        spy.send_signal(signal.SIGINT); spy.wait()
        print(tag, "steered" if s else "unsteered", round(d, 2), name, flush=True)


if sys.argv[2] == "ab":
    ab(sys.argv[1], int(sys.argv[3]), int(sys.argv[4]))
else:
    profile(sys.argv[1], sys.argv[3], sys.argv[4])
eng.close()
