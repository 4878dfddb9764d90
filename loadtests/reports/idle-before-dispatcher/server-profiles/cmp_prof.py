"""Samples of the Worker by what they run: the compiled graph, or the vLLM function under execute_model /
sample_tokens (STEER: a steer-serve frame other than the wrapper calling vLLM).

    cmp_prof.py PLAIN.txt PLUGIN.txt
"""
import collections, re, sys
def cats(path):
    c = collections.Counter(); tot = 0
    for raw in open(path):
        stack, n = raw.rstrip("\n").rsplit(" ", 1); n = int(n); tot += n
        frames = stack.split(";")
        g = [f for f in frames if re.search(r"\(c[a-z0-9]{50,}\.py:\d+\)", f)]
        if g:
            c["graph"] += n; continue
        # the vLLM function two levels under execute_model / the loop, by name
        names = [f.split(" (")[0] + " " + f.split("/")[-1].split(":")[0] for f in frames]
        key = "other"
        for i, nm in enumerate(names):
            if "execute_model" in nm or "sample_tokens" in nm:
                key = " > ".join(x.split(" ")[0] for x in names[i:i + 2]); 
        if "steer_serve" in stack and not any("wrapper" in x for x in names[-3:]): key = "STEER " + key
        c[key] += n
    return tot, c
a, b = sys.argv[1], sys.argv[2]
ta, ca = cats(a); tb, cb = cats(b)
print(f"total {ta} vs {tb}")
for k in sorted(set(ca) | set(cb), key=lambda k: -(ca[k] + cb[k]))[:25]:
    print(f"{ca[k]:6d} {cb[k]:6d}  {k}")
