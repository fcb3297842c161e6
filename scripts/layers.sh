#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The layering check (docs/DESIGN.md "Layers"): fails when a file under src/ includes a header of
# a layer it may not use, or when the files of src/ include each other in a cycle (a.c and a.h
# are one module; a module depends on every module whose header it includes). Run it from
# anywhere; CI runs it as the ctest test `layers`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 - "$@" <<'PY'
import os, re, sys

# Which layers each layer may include (besides itself). The CLI and bench see include/ only.
ALLOWED = {
    "common": {"common"},
    "io": {"common", "io"},
    "compute": {"common", "compute"},
    "plan": {"common", "io", "compute", "plan"},
    "jobs": {"common", "io", "compute", "plan", "jobs"},
    "cli": {"cli"},
}
INC = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
problems = []
mods = {}    # module (path without extension) -> set of modules it includes
for layer in ALLOWED:
    d = os.path.join("src", layer)
    if not os.path.isdir(d):
        continue
    for name in sorted(os.listdir(d)):
        if not name.endswith((".c", ".h")):
            continue
        path = os.path.join(d, name)
        mod = os.path.splitext(path)[0]
        deps = mods.setdefault(mod, set())
        for inc in INC.findall(open(path, encoding="utf-8").read()):
            target = os.path.normpath(os.path.join(d, inc))
            if inc == "nlsr.h" or target == os.path.join("include", "nlsr.h"):
                continue  # the public header: every layer may see it
            parts = target.split(os.sep)
            if len(parts) < 3 or parts[0] != "src":
                problems.append(f"{path}: includes {inc}, which is outside src/ and include/")
                continue
            tl = parts[1]
            if tl not in ALLOWED.get(layer, set()):
                problems.append(f"{path}: includes {inc}: layer {layer}/ may not use {tl}/")
            tmod = os.path.splitext(target)[0]
            if tmod != mod:
                deps.add(tmod)

# Cycles: strongly connected components of more than one module (Tarjan).
index, low, on, stack, sccs, counter = {}, {}, set(), [], [], [0]
sys.setrecursionlimit(10000)
def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in sorted(mods.get(v, ())):
        if w not in mods:
            continue
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(sorted(comp))
for v in sorted(mods):
    if v not in index:
        visit(v)
for comp in sccs:
    problems.append("include cycle: " + " <-> ".join(comp))

for p in problems:
    print("layers: " + p)
if problems:
    sys.exit(1)
print(f"layers: {len(mods)} modules, no layer violation, no include cycle")
PY
