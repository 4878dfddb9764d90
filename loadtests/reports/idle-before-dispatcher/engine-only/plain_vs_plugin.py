"""The compiled default model as an in-process vLLM engine (no HTTP, no EngineCore process polling on
the other core), plain vLLM (`plain`: VLLM_PLUGINS="" loads no plugin) or with steer-serve's hooks
installed and nobody steering (`plugin`). Prints the wall time of each timed generate() of 64 requests
of 64 random prompt tokens and 128 greedy output tokens, after one warm-up batch. Run each variant in
its own process, alternated, from the repository root:

    .venv/bin/python loadtests/reports/idle-before-dispatcher/engine-only/plain_vs_plugin.py plain|plugin BATCHES
"""
import os, sys, time
import numpy as np

variant, batches = sys.argv[1], int(sys.argv[2])
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
if variant == "plain":
    os.environ["VLLM_PLUGINS"] = ""
from vllm import LLM, SamplingParams
from steer_serve.default_model import default_model_dir

if __name__ == "__main__":
    llm = LLM(model=str(default_model_dir()), dtype="float32", max_model_len=1024, max_num_seqs=32, seed=0,
              kv_cache_memory_bytes=2**30, compilation_config={"backend": "inductor"})
    rng = np.random.default_rng(0)
    params = SamplingParams(temperature=0.0, max_tokens=128, ignore_eos=True)
    for i in range(batches + 1):
        prompts = [{"prompt_token_ids": rng.integers(100, 30000, 64).tolist()} for _ in range(64)]
        t = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        if i:
            print(variant, round(time.perf_counter() - t, 3), flush=True)
