#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The plain numpy implementation of METHOD.md's full-weight NLSR a user would otherwise write:
load the three checkpoints whole, compute the reference, masks, similarities, the adaptive
selection and the transplant, and write the realigned checkpoint. It is the baseline that
bench/run_bench.sh compares `nlsr run` against (time, peak memory, identical output bytes).

usage: baseline_numpy.py BASE ALIGNED FINETUNED OUT [--beta 0.9 --sparsity 0.8 --seed 42]
Handles BF16/F16/F32 checkpoints (single file or sharded with an index)."""
import argparse
import json
import os
import shutil
import struct

import numpy as np

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NP = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def shards(path):
    idx = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    return ["model.safetensors"]


def load(path):
    """name -> (dtype, shape, numpy array of raw elements, shard, absolute offset)."""
    out = {}
    for sh in shards(path):
        with open(os.path.join(path, sh), "rb") as f:
            blob = f.read()
        n = struct.unpack("<Q", blob[:8])[0]
        hdr = json.loads(blob[8:8 + n])
        for name, t in hdr.items():
            if name == "__metadata__":
                continue
            b, e = t["data_offsets"]
            dt = NP.get(t["dtype"], np.uint8)
            arr = np.frombuffer(blob, dtype=dt, count=(e - b) // np.dtype(dt).itemsize,
                                offset=8 + n + b)
            out[name] = (t["dtype"], t["shape"], arr, sh, 8 + n + b)
    return out


def to_f32(dtype, arr):
    if dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32)


def f32_to_bf16(x):
    u = x.view(np.uint32)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return r


def from_f32(dtype, x):
    if dtype == "BF16":
        return f32_to_bf16(x)
    return x.astype(NP[dtype])


def splitmix(state):
    state = (state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return state, z ^ (z >> 31)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("aligned")
    ap.add_argument("finetuned")
    ap.add_argument("out")
    ap.add_argument("--beta", type=float, default=0.9)
    ap.add_argument("--sparsity", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--prune-rate", type=float, default=0.5)
    ap.add_argument("--epsilon", type=float, default=0.2)
    a = ap.parse_args()

    B, A, T = load(a.base), load(a.aligned), load(a.finetuned)
    names = sorted(n for n, v in T.items() if len(v[1]) == 2 and n.endswith(".weight")
                   and any(k in n for k in TARGETS))
    beta = np.float32(a.beta)
    sims, masks, refs = [], {}, {}
    for n in names:
        b = to_f32(B[n][0], B[n][2])
        al = to_f32(A[n][0], A[n][2])
        e = al + beta * (al - b)
        es = to_f32(A[n][0], from_f32(A[n][0], e))
        s = np.abs(es - b)
        k = int(s.size * a.sparsity)
        if k >= s.size:
            m = np.zeros(s.size, dtype=bool)
        else:
            thr = np.partition(s, k)[k]
            m = s > thr
        t = to_f32(T[n][0], T[n][2])
        x = (t[m] - b[m]).astype(np.float64)
        y = (es[m] - b[m]).astype(np.float64)
        nx, ny = float(np.dot(x, x)), float(np.dot(y, y))
        sims.append(0.0 if nx == 0 or ny == 0 else float(np.dot(x, y)) / (np.sqrt(nx) * np.sqrt(ny)))
        masks[n], refs[n] = m, es
    N = len(names)
    order = sorted(range(N), key=lambda i: (-sims[i], i))
    prob = [0.0] * N
    for pos, i in enumerate(order):
        norm = 0.5 if N == 1 else (N - 1 - pos) / (N - 1)
        norm = 1.0 - norm
        prob[i] = min(1.0, max(0.0, (a.prune_rate - a.epsilon) + 2.0 * a.epsilon * norm))
    state, patched = a.seed, []
    for i in range(N):
        state, z = splitmix(state)
        if (z >> 11) * 2.0 ** -53 < prob[i]:
            patched.append(names[i])

    os.makedirs(a.out)
    for f in os.listdir(a.finetuned):
        if not f.endswith(".safetensors"):
            shutil.copy(os.path.join(a.finetuned, f), a.out)
    for sh in shards(a.finetuned):
        with open(os.path.join(a.finetuned, sh), "rb") as f:
            blob = bytearray(f.read())
        for n in patched:
            dt, _, arr, tsh, off = T[n]
            if tsh != sh:
                continue
            new = np.where(masks[n], from_f32(dt, refs[n]), arr)
            raw = new.astype(arr.dtype).tobytes()
            blob[off:off + len(raw)] = raw
        with open(os.path.join(a.out, sh), "wb") as f:
            f.write(blob)
    print(f"patched {len(patched)} of {N} modules")


if __name__ == "__main__":
    main()
