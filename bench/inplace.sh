#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# run --in-place against run --out and against the disk, across memory budgets: a thin caller
# of `nlsr bench --jobs run,run-in-place` on a synthetic triple (cold: every input and output
# file's pages dropped before each run, posix_fadvise, or drop_caches as root with
# --drop-caches; run-in-place works on a fresh copy of the fine-tune each run, not timed).
# Writes, in bench/results (or --out):
#   inplace-budget.csv / .json / .svg   the bench's runs; the plot: time and peak RSS against
#                                       the budget for both jobs, each job's minimal I/O time
#                                       as a dashed line
#   inplace.md                          per budget, medians over the reps: in place / --out,
#                                       each against its minimal I/O time, bytes written,
#                                       peak RSS; load before and after
#
#   bench/inplace.sh SCRATCH [--nlsr PATH] [--preset llama-8b] [--layers 8]
#                    [--budgets 512M,1G,2G,4G] [--io uring] [--reps 2] [--out DIR] [--drop-caches]
#
# SCRATCH holds the triple (made here with `nlsr synth`, seed 1, so that its target bytes can be
# counted), one output and the in-place copy (llama-8b, 8 layers: ~22 GB); all removed at the
# end. That in place and --out give the same bytes is the test suite's
# (tests/test_inplace_cli.sh), not a benchmark's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
NLSR=${NLSR:-$here/../build/nlsr}
PRESET=llama-8b
LAYERS=8
BUDGETS=512M,1G,2G,4G
IO=uring
REPS=2
OUT=$here/results
DROP=""
NOTE=${NOTE:-}
[ $# -ge 1 ] && [ "${1#--}" = "$1" ] || { sed -n 3,20p "$0" >&2; exit 2; }
SCRATCH=$1
shift
while [ $# -gt 0 ]; do
    case $1 in
    --nlsr) NLSR=$2; shift 2 ;;
    --preset) PRESET=$2; shift 2 ;;
    --layers) LAYERS=$2; shift 2 ;;
    --budgets) BUDGETS=$2; shift 2 ;;
    --io) IO=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --drop-caches) DROP=--drop-caches; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ -x "$NLSR" ] || { echo "no nlsr at $NLSR (build first or pass --nlsr)" >&2; exit 2; }
mkdir -p "$SCRATCH" "$OUT"
R=$OUT/inplace-budget
# The triple is made here rather than by the bench's --synth (same command, same seed) so that
# its target bytes can be counted: the minimal in-place I/O time is the three checkpoints'
# target-tensor bytes at the direct read rate plus the bytes the run writes at the write rate.
T=$SCRATCH/triple
for role in base aligned finetuned; do
    [ -d "$T/$role" ] || "$NLSR" synth --preset "$PRESET" --layers "$LAYERS" --role "$role" \
        --seed 1 --out "$T/$role" -q
done
# Target tensors: the rule of src/plan/targets.c (2-D ".weight" tensors named by a target module).
target_bytes() {
    "$NLSR" inspect "$1" --json | python3 -c '
import json, sys
names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
d = json.load(sys.stdin)
print(sum(t["nbytes"] for t in d["tensors"]
          if len(t["shape"]) == 2 and t["name"].endswith(".weight")
          and any(n in t["name"] for n in names)))'
}
T3=0
for role in base aligned finetuned; do T3=$((T3 + $(target_bytes "$T/$role"))); done
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
"$NLSR" bench --base "$T/base" --aligned "$T/aligned" --finetuned "$T/finetuned" \
    --jobs run,run-in-place --budgets "$BUDGETS" \
    --io "$IO" --reps "$REPS" $DROP --scratch "$SCRATCH" --csv "$R.csv" --json "$R.json" --plot "$R.svg"
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
rm -rf "$T"

CMD="bench/inplace.sh SCRATCH --preset $PRESET --layers $LAYERS --budgets $BUDGETS --io $IO --reps $REPS${DROP:+ $DROP}"

python3 - "$R.json" "$OUT/inplace.md" "$CMD" "$load_before" "$load_after" "$NOTE" "$T3" "$PRESET" "$LAYERS" <<'PY'
import json, statistics as st, sys
src, dst, cmd, l0, l1, note, t3, preset, layers = sys.argv[1:]
t3 = int(t3)
doc = json.load(open(src))
runs = [r for r in doc["runs"] if r["status"] == 0]
failed = [r for r in doc["runs"] if r["status"] != 0]
m, inp = doc["machine"], doc["inputs"]
def med(job, budget, io, k):
    xs = [r[k] for r in runs if (r["job"], r["budget"], r["io"]) == (job, budget, io)]
    return st.median(xs) if xs else None
keys = []
for r in doc["runs"]:
    if (r["budget"], r["io"]) not in keys:
        keys.append((r["budget"], r["io"]))
o = []
w = o.append
w(f"# run --in-place against run --out and the disk: synthetic {preset}, {layers} layer{'' if layers == '1' else 's'}")
w("")
w(f"Made by `{cmd}` (`nlsr bench --jobs run,run-in-place`, nlsr {doc['nlsr_version']}) on "
  f"{m['cpu']} x {m['cpus']}, {m['memory_bytes'] / 2**30:.0f} GiB. Load average (1, 5, 15 min): "
  f"{l0} before, {l1} after{'; ' + note if note else ''}. Cache: {doc['runs'][0]['cache']} before every run; "
  "run-in-place works on a fresh copy of the fine-tune each run (the copy is not timed).")
w("")
w("Minimal I/O time (the bench's `min_io_s`): the job's planned bytes read at the direct read rate")
w("and its bytes written at the write+fsync rate, both measured by the bench in the same run.")
rbps = max(fs["direct_read_bps"] for fs in doc["filesystems"])
wbps = max(fs["write_fsync_bps"] for fs in doc["filesystems"])
w(f"Minimal in-place I/O time: the three checkpoints' target-tensor bytes ({t3 / 1e9:.2f} GB) at the")
w(f"direct read rate ({rbps / 1e6:.0f} MB/s) plus the bytes the in-place run wrote (its data and")
w(f"journal) at the write+fsync rate ({wbps / 1e6:.0f} MB/s): what in place cannot do without.")
w("Targets: in place at most 0.75 x run --out, and at most 1.3 x the minimal in-place I/O time.")
w("Medians over the reps; every run in [inplace-budget.csv](inplace-budget.csv), the plot in")
w("[inplace-budget.svg](inplace-budget.svg).")
w("")
w("| budget | io | run --out (s) | run --in-place (s) | in place / --out | --out / its minimal I/O | in place / its minimal I/O | in place / minimal in-place I/O | written by --out (GB) | written in place (GB) | --out / in place bytes | peak RSS --out / in place (MiB) |")
w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
def f(v, fmt):
    return "-" if v is None else fmt % v
for b, io in keys:
    to, ti = med("run", b, io, "wall_s"), med("run-in-place", b, io, "wall_s")
    mo, mi = med("run", b, io, "min_io_s"), med("run-in-place", b, io, "min_io_s")
    wo, wi = med("run", b, io, "bytes_written"), med("run-in-place", b, io, "bytes_written")
    ro, ri = med("run", b, io, "peak_rss_bytes"), med("run-in-place", b, io, "peak_rss_bytes")
    w(f"| {b} | {io} | {f(to, '%.2f')} | {f(ti, '%.2f')} | {f(ti / to if to and ti else None, '%.2f')} | "
      f"{f(to / mo if to and mo else None, '%.2f')} | {f(ti / mi if ti and mi else None, '%.2f')} | "
      f"{f(ti / (t3 / rbps + wi / wbps) if ti and wi and rbps and wbps else None, '%.2f')} | "
      f"{f(wo / 1e9 if wo is not None else None, '%.2f')} | {f(wi / 1e9 if wi is not None else None, '%.2f')} | "
      f"{f(wo / wi if wo and wi else None, '%.1f')} | {f(ro / 2**20 if ro else None, '%.0f')} / {f(ri / 2**20 if ri else None, '%.0f')} |")
if failed:
    w("")
    w("Runs that failed: " + "; ".join(f"{r['job']} {r['budget']} {r['io']} rep {r['rep']}: {r.get('error', '')}" for r in failed))
w("")
for fs in doc["filesystems"]:
    rate = f"direct read {fs['direct_read_bps'] / 1e6:.0f} MB/s"
    if fs["write_fsync_bps"]:
        rate += f", write+fsync {fs['write_fsync_bps'] / 1e6:.0f} MB/s"
    w(f"- {fs['role']}: {fs['fstype']} on {fs['device']}: {rate}")
open(dst, "w").write("\n".join(o) + "\n")
print("wrote", dst)
PY
