"""Does a C++ kernel make an idle hook site cheaper than our Python kernel? One CPU thread.

Two in-place ops with our sites' schema, `(Tensor(a!) x, Tensor? base, int layer) -> ()`: one with a
Python kernel (as engine/opaque_sites.py registers them), one with a C++ kernel that returns at once
unless a global flag is set (then it would hand over to the Python kernel through the dispatcher).
Timed per call from Python (how inductor's wrapper calls them), next to an aten in-place op, and
inside a compiled 30-layer stand-in stack ([B, 576] matmul + tanh per layer, one site per layer).

    .venv/bin/python loadtests/reports/idle-sites/kernel_language.py   # builds the C++ op (~30 s, g++)
"""
import statistics
import time

import torch
from torch.utils.cpp_extension import load_inline

CPP = r"""
#include <torch/library.h>
static bool active = false;
void set_active(bool value) { active = value; }
void layer_output_cpp(at::Tensor& x, const std::optional<at::Tensor>& base, int64_t layer) {
  if (!active) return;
  static auto python = c10::Dispatcher::singleton().findSchemaOrThrow("site_py::layer_output", "")
      .typed<void(at::Tensor&, const std::optional<at::Tensor>&, int64_t)>();
  python.call(x, base, layer);
}
TORCH_LIBRARY(site_cpp, m) { m.def("layer_output(Tensor(a!) x, Tensor? base, int layer) -> ()"); }
TORCH_LIBRARY_IMPL(site_cpp, CompositeExplicitAutograd, m) { m.impl("layer_output", layer_output_cpp); }
"""
EDITS: dict[int, torch.Tensor] = {}
LIBRARY = torch.library.Library("site_py", "DEF")
LIBRARY.define("layer_output(Tensor(a!) x, Tensor? base, int layer) -> ()")


def python_kernel(x: torch.Tensor, base: torch.Tensor | None, layer: int) -> None:
    edit = EDITS.get(layer)
    if edit is not None:
        x.add_(edit)


LIBRARY.impl("layer_output", python_kernel, "CompositeExplicitAutograd")
torch.library.register_fake("site_py::layer_output", lambda x, base, layer: None, lib=LIBRARY)
extension = load_inline("site_cpp_ext", cpp_sources=CPP + "\nvoid set_active(bool value);", functions=["set_active"])
torch.library.register_fake("site_cpp::layer_output", lambda x, base, layer: None)
LAYERS, D = 30, 576


def per_call_us(call, repeats: int = 15, n: int = 20000) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            call()
        times.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(times)


def stack(site, weight: torch.Tensor):
    def step(x: torch.Tensor) -> torch.Tensor:  # x: [B, D]
        for layer in range(LAYERS):
            x = x @ weight
            if site is not None:
                site(x, None, layer)
            x = torch.tanh(x)
        return x
    return torch.compile(step, fullgraph=True)


def main() -> None:
    torch.set_num_threads(1)
    sites = {"python kernel": torch.ops.site_py.layer_output.default, "C++ kernel": torch.ops.site_cpp.layer_output.default}
    x = torch.randn(1, D)
    weight = torch.randn(D, D) / D**0.5
    with torch.inference_mode():
        print("called from Python, idle, us per call:")
        print(f"  aten relu_ (C++, for scale): {per_call_us(lambda: torch.ops.aten.relu_.default(x)):.2f}")
        for name, op in sites.items():
            print(f"  {name}: {per_call_us(lambda: op(x, None, 0)):.2f}")
        steps = {"no sites": stack(None, weight)} | {name: stack(op, weight) for name, op in sites.items()}
        outputs = {name: fn(x.clone()) for name, fn in steps.items()}
        assert all(torch.equal(out, outputs["no sites"]) for out in outputs.values())
        EDITS[3] = torch.ones(D)
        extension.set_active(True)
        assert torch.equal(steps["python kernel"](x.clone()), steps["C++ kernel"](x.clone()))  # the hand-over works
        EDITS.clear()
        extension.set_active(False)
        timed = {name: per_call_us(lambda fn=fn: fn(x), repeats=30, n=200) for name, fn in steps.items()}
    print(f"compiled {LAYERS}-layer stack, B = 1, us per step: " + ", ".join(f"{k} {v:.1f}" for k, v in timed.items()))
    for name in sites:
        print(f"  {name}: {(timed[name] - timed['no sites']) / LAYERS:.2f} us per site call")


if __name__ == "__main__":
    main()
