"""Where the compiled graph's time goes, from py-spy raw profiles of the in-process engine.

    graph_share.py PROFILE.txt [...]

Per profile: the share of the compiled graph's samples on lines calling each of our ops
(torch.ops.steer_serve.layer_output, and the row sites: head_scale / router_bias, one
row_edit op before 29 Nov), then per kind of wrapper line (our ops, vLLM's
ops, inductor's fused C++ kernels, allocations, `del`, ...) its samples, how many such lines the
graph's source holds, and samples per line: every line runs once per forward, so samples per line
compares what one call of each kind costs inside the engine. Reads the graph's source from vLLM's
compile cache (run on the machine that made the profile).
"""
import collections, glob, re, sys

KINDS = [("steer_serve.layer_output", r"torch\.ops\.steer_serve\.layer_output"),
         ("steer_serve row sites", r"torch\.ops\.steer_serve\.(row_edit|head_scale|router_bias)"),
         ("vllm op", r"torch\.ops\.(vllm|_C)"), ("extern mm", r"extern_kernels\."), ("cpp_fused", r"cpp_fused"),
         ("empty_strided", r"empty_strided"), ("aten op", r"aten\."), ("reinterpret", r"reinterpret_tensor"),
         ("del", r"^\s*del ")]
_sources: dict[str, list[str]] = {}


def source(name: str) -> list[str]:
    if name not in _sources:
        found = glob.glob(f"/root/.cache/vllm/torch_compile_cache/**/{name}", recursive=True)
        _sources[name] = open(found[0]).read().splitlines() if found else []
    return _sources[name]


def kind(line: str) -> str:
    return next((name for name, pattern in KINDS if re.search(pattern, line)), "other")


def graph_line(stack: str) -> tuple[str, int] | None:
    """The innermost frame in a compiled graph's wrapper (cXXXX.py), or None outside the graph."""
    frames = re.findall(r"\((c[a-z0-9]{50,}\.py):(\d+)\)", stack)
    return (frames[-1][0], int(frames[-1][1])) if frames else None


def summarise(path: str) -> None:
    samples, files = collections.Counter(), set()
    for raw in open(path):
        stack, count = raw.rstrip("\n").rsplit(" ", 1)
        where = graph_line(stack)
        if where is None:
            continue
        files.add(where[0])
        lines = source(where[0])
        samples[kind(lines[where[1] - 1] if where[1] <= len(lines) else "")] += int(count)
    occurrences = collections.Counter(kind(line) for name in files for line in source(name)
                                      if line.startswith("        ") and not line.strip().startswith("#"))
    total = sum(samples.values())
    ours = sum(n for k, n in samples.items() if k.startswith("steer_serve"))
    print(f"{path}: graph samples {total}, on our op lines {ours} = {ours / max(total, 1):.2%}")
    for name in sorted(samples, key=lambda k: -samples[k]):
        print(f"  {name:26s} {samples[name]:6d} samples ({samples[name] / total:6.2%})  {occurrences[name]:4d} lines  "
              f"{samples[name] / max(occurrences[name], 1):6.2f} per line")


for profile in sys.argv[1:]:
    summarise(profile)
