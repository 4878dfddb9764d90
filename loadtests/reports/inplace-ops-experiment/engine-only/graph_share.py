"""Share of the compiled graph's samples on lines that call torch.ops.steer_serve.* (py-spy raw)."""
import collections, glob, re, sys
src_cache = {}
def line(path, no):
    if path not in src_cache:
        found = glob.glob(f"/root/.cache/vllm/torch_compile_cache/**/{path}", recursive=True)
        src_cache[path] = open(found[0]).read().splitlines() if found else []
    s = src_cache[path]
    return s[no - 1] if no <= len(s) else ""
for name in sys.argv[1:]:
    graph = ours = 0
    for raw in open(name):
        stack, n = raw.rstrip("\n").rsplit(" ", 1); n = int(n)
        g = [f for f in stack.split(";") if re.search(r"\(c[a-z0-9]{50,}\.py:\d+\)$", f)]
        if not g: continue
        m = re.search(r"\((c[a-z0-9]{50,}\.py):(\d+)\)$", g[-1])
        graph += n
        if "steer_serve" in line(m.group(1), int(m.group(2))): ours += n
    print(f"{name}: graph samples {graph}, on our op lines {ours} = {ours / max(graph, 1):.2%}")
