"""Engine-only A/B: compiled in-process vLLM engine (no HTTP, no API process), 64 requests of
64 random prompt tokens + N output tokens, steered (32 distinct vectors on 10 layers) vs unsteered,
alternated; prints generate() wall time per run. Run with the repo's venv (its packages are installed)."""
import json, sys, tempfile, time
from pathlib import Path
import numpy as np
import harness.in_process_engine as ipe
ipe.KV_CACHE_BYTES = 2**30
from harness.completions import completion_body
from loadtests import workloads as wl
from steer_serve.default_model import default_model_dir

tag, reps, out_len = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = default_model_dir()
eng = ipe.InProcessEngine(model, Path(tempfile.mkdtemp()), compile_backend="inductor")
from vllm import SamplingParams
steer = wl.distinct_vectors(wl.ModelSpec("default", 576, 30), 32, 10)
rng = np.random.default_rng(0)

def batch(steered, n=64):
    prompts, params = [], []
    for i in range(n):
        ids = rng.integers(100, 40000, 64).tolist()
        body = completion_body(eng.model, ids, out_len, steer(i) if steered else None)
        v = eng.gateway.prepare(ipe.PATH, json.dumps(body).encode())
        sent = body if v.body is None else json.loads(v.body)
        p = {"prompt_token_ids": sent["prompt"]}
        if sent.get("cache_salt"): p["cache_salt"] = sent["cache_salt"]
        prompts.append(p)
        params.append(SamplingParams(temperature=0.0, max_tokens=out_len, ignore_eos=True, extra_args=sent.get("vllm_xargs")))
    return prompts, params

def timed(steered):
    prompts, params = batch(steered)
    t = time.perf_counter(); eng.llm.generate(prompts, params, use_tqdm=False); return time.perf_counter() - t

timed(False); timed(True)  # warm
res = {"unsteered": [], "steered": []}
for r in range(reps):
    order = (False, True) if r % 2 == 0 else (True, False)
    for s in order:
        d = timed(s); res["steered" if s else "unsteered"].append(d)
        print(tag, "steered" if s else "unsteered", round(d, 3), flush=True)
u, s = np.array(res["unsteered"]), np.array(res["steered"])
print(tag, "ratio steered/unsteered time (median of pairs)", round(float(np.median(s / u)), 4), "pairs", np.round(s / u, 3).tolist(), flush=True)
eng.close()
