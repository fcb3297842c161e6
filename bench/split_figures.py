#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Paper figures for split jobs (README "Scale-out"): computed, not measured, from the Llama
# shapes and the per-host rates and byte ratios measured on this project's build machine
# (bench/results/realign.md, llama-8b with 8 layers, cold cache, --mem-budget 4G). Every input is
# below; change them for your cluster. Usage: python3 bench/split_figures.py
GB = 1e9

# Measured (bench/results/realign.md): the patch-file plan (prepare + apply) moved
# 19.49e9 + 8.45e9 bytes in 84.18 s; the single pass 16.06e9 + 5.59e9 in 22.53 s; one checkpoint
# is F8 = 5.59e9 bytes, of which T8 = 3.49e9 are target tensors.
F8, T8 = 5.59e9, 8 * 218.1e6 * 2
PA_READ, PA_WRITTEN, PA_SECONDS = 19.49e9, 8.45e9, 84.18
SINGLE_SECONDS = 22.53
RATE = (PA_READ + PA_WRITTEN) / PA_SECONDS          # bytes moved per second per host
PATCH = (PA_WRITTEN - F8) / T8                      # patch file bytes per target byte
PREP_MOVED = 2 + PATCH                              # per target byte: base + aligned + patch
APPLY_MOVED = (PA_READ - 2 * T8 + F8) / F8          # per checkpoint byte: reads + the output
# Measured by bench/split.sh (tiny shapes): the reduce's CPU time per merged byte.
REDUCE_RATE = 35.4e6 / 1.03


def llama(layers, hidden, inter, kv, vocab=128256):
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter
    targets = layers * per_layer * 2                 # BF16 bytes
    total = targets + 2 * vocab * hidden * 2 + (2 * layers + 1) * hidden * 2
    return targets, total


def hms(s):
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min"


print(f"measured: {RATE / GB:.3f} GB/s moved per host (patch-file plan); patch file = "
      f"{PATCH:.2f} x target bytes; apply moves {APPLY_MOVED:.2f} x the checkpoint; prepare "
      f"{PREP_MOVED:.2f} x the target bytes; reduce {REDUCE_RATE / 1e6:.0f} MB/s (CPU, tiny shapes)")

# A store of 100 fine-tunes of a 70B model: one prepare, 100 independent applies.
T70, F70 = llama(80, 8192, 28672, 1024)
per_ft = APPLY_MOVED * F70
t_ft = per_ft / RATE
print(f"\n70B: checkpoint {F70 / GB:.1f} GB ({T70 / GB:.1f} GB targets); per fine-tune "
      f"{per_ft / GB:.0f} GB moved, {hms(t_ft)} on one host; prepare once {hms(PREP_MOVED * T70 / RATE)}")
print("hosts | per host | host-bound | FS 2 GB/s | FS 20 GB/s")
for h in (1, 10, 25, 50, 100):
    per_host = 100 / h * per_ft
    host = 100 / h * t_ft
    fs = [max(host, 100 * per_ft / b) for b in (2 * GB, 20 * GB)]
    print(f"{h:5d} | {per_host / 1e12:6.2f} TB | {hms(host):>8} | {hms(fs[0]):>8} | {hms(fs[1]):>8}")
for b in (2 * GB, 20 * GB):
    print(f"shared FS at {b / GB:.0f} GB/s is the limit from {b / RATE:.0f} hosts on")

# One 405B model on N hosts: prepare split in N parts, one reduce, one apply.
T405, F405 = llama(126, 16384, 53248, 1024)
single = F405 / F8 * SINGLE_SECONDS
plan = ((PREP_MOVED * T405) + APPLY_MOVED * F405) / RATE
reduce_s = PATCH * T405 / REDUCE_RATE
apply_s = APPLY_MOVED * F405 / RATE
print(f"\n405B: checkpoint {F405 / GB:.0f} GB ({T405 / GB:.0f} GB targets); one host: single "
      f"pass {hms(single)}, prepare + apply {hms(plan)}")
print(f"reduce (one host, {PATCH * T405 / GB:.0f} GB patch) {hms(reduce_s)}; apply (one host, "
      f"{APPLY_MOVED * F405 / GB:.0f} GB moved) {hms(apply_s)}")
print("N | map bytes per host | map | map + reduce + apply")
for n in (4, 8, 16, 32, 64):
    mb = PREP_MOVED * T405 / n
    print(f"{n:2d} | {mb / GB:6.0f} GB | {hms(mb / RATE):>7} | {hms(mb / RATE + reduce_s + apply_s)}")
for b in (2 * GB, 20 * GB):
    print(f"map on a {b / GB:.0f} GB/s FS: the FS is the limit from {b / RATE:.0f} hosts on")
