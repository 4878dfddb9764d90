"""py-spy (raw) of one steered and one unsteered 64-request batch on the in-process compiled
engine, 128 output tokens; writes /tmp/s7/prof-<tag>-{steered,unsteered}.txt. Run with the repo's venv."""
import json, os, signal, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np
import harness.in_process_engine as ipe
ipe.KV_CACHE_BYTES = 2**30
from harness.completions import completion_body
from loadtests import workloads as wl
from steer_serve.default_model import default_model_dir

tag = sys.argv[1]
eng = ipe.InProcessEngine(default_model_dir(), Path(tempfile.mkdtemp()), compile_backend="inductor")
from vllm import SamplingParams
steer = wl.distinct_vectors(wl.ModelSpec("default", 576, 30), 32, 10)
rng = np.random.default_rng(0)

def batch(steered, n=64, out_len=128):
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

for s in (False, True):
    eng.llm.generate(*batch(s, 32, 16), use_tqdm=False)
for s in (False, True, False, True):
    prompts, params = batch(s)
    name = f"/tmp/s7/prof-{tag}-{'steered' if s else 'unsteered'}.txt"
    spy = subprocess.Popen(["/tmp/spy/bin/py-spy", "record", "--pid", str(os.getpid()), "--format", "raw",
                            "--rate", "200", "--nonblocking", "-o", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    t = time.perf_counter(); eng.llm.generate(prompts, params, use_tqdm=False); d = time.perf_counter() - t
    spy.send_signal(signal.SIGINT); spy.wait()
    print(tag, "steered" if s else "unsteered", round(d, 2), name, flush=True)
eng.close()
