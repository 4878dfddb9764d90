"""Measurement only: switch off one piece of steer-serve's engine half in every process of a server
(`cpu_ab.py pieces` starts vLLM with this directory on PYTHONPATH and STEER_SERVE_PIECE_OFF set;
spawned EngineCore and worker processes import it at start-up too).

- `admission`: the scheduler's admission wrapper is not installed (EngineCore);
- `sites`: no hook site is placed, so the compiled graph has none of our ops (worker);
- `step`: the per-step bookkeeping (_update_states, _prepare_inputs, request removal wrappers) does
  nothing, and every step is declared idle once (worker);
- `load`: the wrapper after vLLM's load_model does nothing: no tables, pool, observer buffers or
  hooks; the per-step wrappers then return at their first line (worker);
- `patches`: nothing is patched (no worker, admission or compile-key wrappers); the plugin is still
  imported and registered in every process.
"""
import os
import sys

_piece = os.environ.get("STEER_SERVE_PIECE_OFF")
if _piece:
    from steer_serve_vllm.engine import admission, opaque_sites, worker_patches

    def _nothing(*args, **kwargs):
        return None

    if _piece == "admission":
        admission.apply_admission_patches = _nothing
    elif _piece == "sites":
        worker_patches.install_hooks = _nothing
        worker_patches.install_observer_hooks = _nothing
    elif _piece == "step":
        worker_patches._after_update_states = _nothing
        worker_patches._after_prepare_inputs = _nothing
        worker_patches._after_request_removed = _nothing
        opaque_sites.set_step_idle(True)
    elif _piece == "load":
        worker_patches._after_load_model = _nothing
    elif _piece == "patches":
        import steer_serve_vllm.engine.compile_cache_key as compile_cache_key

        admission.apply_admission_patches = _nothing
        worker_patches.apply_worker_patches = _nothing
        compile_cache_key.salt_compile_cache_key = _nothing
    else:
        raise ValueError(f"STEER_SERVE_PIECE_OFF={_piece!r}: admission, sites, step, load or patches")
    print(f"steer-serve measurement: {_piece} switched off in pid {os.getpid()}", file=sys.stderr, flush=True)


_pad = os.environ.get("STEER_SERVE_FRAME_PAD")
if _pad is not None:
    # Measurement only: run the worker's execute_model inside one more Python frame with this many
    # (never assigned) locals. 0 shifts the frames above by one small frame; 4200 (~33 KiB) makes
    # CPython put that frame at the start of a fresh 64 KiB stack chunk, so everything above it has
    # ~31 KiB of headroom in one chunk.
    from vllm.v1.worker import gpu_model_runner

    _names = " = ".join(f"_{i}" for i in range(int(_pad))) or "_"
    _namespace = {}
    exec(f"def padded(execute, *args, **kwargs):\n    if False:\n        {_names} = None\n"
         f"    return execute(*args, **kwargs)\n", _namespace)
    _execute = gpu_model_runner.GPUModelRunner.execute_model

    def _execute_model(self, *args, **kwargs):
        return _namespace["padded"](_execute, self, *args, **kwargs)

    gpu_model_runner.GPUModelRunner.execute_model = _execute_model
    print(f"steer-serve measurement: execute_model in a frame of {_pad} locals in pid {os.getpid()}",
          file=sys.stderr, flush=True)
