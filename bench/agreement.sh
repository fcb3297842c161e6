#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Does `nlsr bench` measure what a user timing the same commands by hand measures? Runs the
# README's bench (llama-8b shapes, 8 layers, 1G and 4G, uring and pread; --reps 3) and, after
# each of its timed runs, the same run timed by hand: the `nlsr` command line the bench reports
# for that run (its JSON's "command", handed over in NLSR_BENCH_COMMAND by --after-each), made
# cold by the bench the same way as its own run (posix_fadvise of every input and output file,
# or drop_caches for both with --drop-caches as root), run under /usr/bin/time -v (wall clock,
# peak RSS). Bench run and hand run alternate per configuration and rep, so both see the same
# machine. Writes, in bench/results (or --out):
#   NAME.csv / .json / .svg   the bench's own results (the README's figure)
#   NAME-hand.csv             every hand-timed run, beside the bench run it follows
#   NAME-hand.csv.meta        the command, date and load (for --report)
#   NAME.md                   per configuration: medians, ratios to the minimal I/O time,
#                             their difference and the verdict (within 10%), and every pair
# NAME is bench-<preset without '-'>-<layers>l (bench-llama8b-8l).
#
#   bench/agreement.sh SCRATCH [--nlsr PATH] [--preset llama-8b] [--layers 8] [--reps 3]
#                      [--budgets 1G,4G] [--io uring,pread] [--out DIR] [--drop-caches]
#   bench/agreement.sh --report DIR/NAME     the .md again from NAME.json and NAME-hand.csv
#
# SCRATCH needs room for the synthetic triple and one output (llama-8b, 8 layers: ~17 GB).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

# --after-each: one hand-timed run (the bench calls this script back between its runs).
if [ "${1:-}" = --hand ]; then
    log=$2 nlsr=$3 t=$2.time.$$
    eval "set -- $NLSR_BENCH_COMMAND" # the bench's words, quoted for sh
    shift                             # "nlsr": this build's program instead
    load=$(cut -d' ' -f1 /proc/loadavg)
    st=0
    /usr/bin/time -v -o "$t" "$nlsr" "$@" || st=$?
    wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$t" |
        awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; printf "%.3f", s }')
    rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$t")
    rm -f "$t"
    printf '%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,"%s"\n' "$NLSR_BENCH_JOB" "$NLSR_BENCH_BUDGET" \
        "$NLSR_BENCH_IO" "$NLSR_BENCH_REP" "$NLSR_BENCH_CACHE" "$NLSR_BENCH_WALL_S" "$wall" \
        "$rss" "$st" "$load" "${NLSR_BENCH_COMMAND//\"/\"\"}" >> "$log"
    exit 0
fi

# --report DIR/NAME: the comparison, from the two files alone (a reader can run it again).
report() {
    python3 - "$1" <<'PY'
import csv, json, statistics as st, sys
base = sys.argv[1]
doc = json.load(open(base + ".json"))
hand = list(csv.DictReader(open(base + "-hand.csv")))
meta = {}
for line in open(base + "-hand.csv.meta"):
    k, _, v = line.rstrip("\n").partition("=")
    meta[k] = v
runs = doc["runs"]
key = lambda r: (r["job"], r["budget"], r["io"])
configs = []
for r in runs:
    if key(r) not in configs:
        configs.append(key(r))
def med(xs):
    return st.median(xs) if xs else float("nan")
out = []
w = out.append
m = doc["machine"]
inp = doc["inputs"]
what = f"synthetic {inp.get('synth', '?')}, {inp.get('layers', '?')} layer{'' if inp.get('layers') == 1 else 's'}"
w(f"# `nlsr bench` and the same runs timed by hand: {what}")
w("")
w(f"Made by `{meta['script']}` on {meta['date']} (nlsr {doc['nlsr_version']}). Machine: "
  f"{m['cpu']} x {m['cpus']}, {m['memory_bytes'] / 2**30:.0f} GiB, Linux {m['kernel'].split()[1] if len(m['kernel'].split()) > 1 else m['kernel']}, "
  f"euid {m['euid']}. Load average (1, 5, 15 min): {meta['load_before']} before, "
  f"{meta['load_after']} after{'; ' + meta['note'] if meta.get('note') else ''}.")
w("")
w("The bench:")
w("")
w("```sh")
w(meta["bench"])
w("```")
w("")
w("After each of its timed runs the bench calls this script back (`--after-each`): it takes the")
w("run's command line from the bench (`NLSR_BENCH_COMMAND`, the same string as the run's")
w("`command` in the JSON), which the bench has set up again (the previous output removed, for")
w("run-in-place a fresh copy) and made cold the same way as its own run (the `cache` column),")
w("and times it with `/usr/bin/time -v` (wall clock, peak RSS). So every bench run is followed")
w("at once by its hand-timed twin, both cold, on the same files.")
w("")
w("Ratio = time / the run's minimal I/O time (`min_io_s` in the JSON: the planned bytes at the")
w("disk rates the bench measured in the same session). A hand run is divided by the minimal I/O")
w("time of the bench run it follows, so the two ratios differ exactly as the times do.")
w("Difference = (hand ratio - bench ratio) / bench ratio, on the medians over the reps.")
w("")
w("| job | budget | io | cache | reps | bench median (s) | bench ratio | hand median (s) | hand ratio | difference | within 10% |")
w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
verdicts = []
pairs = []
for c in configs:
    b = [r for r in runs if key(r) == c]
    h = [x for x in hand if (x["job"], x["budget"], x["io"]) == c]
    bt = med([r["wall_s"] for r in b if r["status"] == 0])
    mi = med([r["min_io_s"] for r in b if r["status"] == 0])
    ht = med([float(x["hand_wall_s"]) for x in h if x["hand_status"] == "0"])
    ok_runs = all(r["status"] == 0 for r in b) and all(x["hand_status"] == "0" for x in h) and len(h) == len(b)
    br, hr = bt / mi if mi > 0 else float("nan"), ht / mi if mi > 0 else float("nan")
    d = (hr - br) / br * 100 if br > 0 else float("nan")
    ok = ok_runs and abs(d) <= 10
    verdicts.append(ok)
    w(f"| {c[0]} | {c[1]} | {c[2]} | {b[0]['cache']} | {len(b)} | {bt:.2f} | {br:.2f} | {ht:.2f} | {hr:.2f} | "
      f"{d:+.1f}% | {'yes' if ok else 'NO' + ('' if ok_runs else ' (a run failed or is missing)')} |")
    for r in b:
        x = next((x for x in h if x["rep"] == str(r["rep"])), None)
        pairs.append((c, r, x))
w("")
n_ok = sum(verdicts)
w(f"**{n_ok} of {len(verdicts)} configurations agree within 10%.**")
w("")
w("Every pair (the bench run, then its hand-timed twin):")
w("")
w("| job | budget | io | rep | bench (s) | hand (s) | difference | min I/O (s) | bench peak RSS (MiB) | hand peak RSS (MiB) | load (1 min) at the hand run |")
w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for c, r, x in pairs:
    if x is None:
        w(f"| {c[0]} | {c[1]} | {c[2]} | {r['rep']} | {r['wall_s']:.2f} | - | - | {r['min_io_s']:.2f} | "
          f"{r['peak_rss_bytes'] / 2**20:.0f} | - | - |")
        continue
    hw = float(x["hand_wall_s"])
    d = (hw - r["wall_s"]) / r["wall_s"] * 100 if r["wall_s"] > 0 else float("nan")
    w(f"| {c[0]} | {c[1]} | {c[2]} | {r['rep']} | {r['wall_s']:.2f} | {hw:.2f}{'' if x['hand_status'] == '0' else ' (exit ' + x['hand_status'] + ')'} | "
      f"{d:+.1f}% | {r['min_io_s']:.2f} | {r['peak_rss_bytes'] / 2**20:.0f} | "
      f"{int(x['hand_peak_rss_kib']) / 1024:.0f} | {x['load1']} |")
w("")
w("Disks, measured by the bench in the same session:")
w("")
for f in doc["filesystems"]:
    rate = f"direct read {f['direct_read_bps'] / 1e6:.0f} MB/s, buffered read {f['buffered_read_bps'] / 1e6:.0f} MB/s"
    if f["write_fsync_bps"]:
        rate += f", write+fsync {f['write_fsync_bps'] / 1e6:.0f} MB/s"
    w(f"- {f['role']}: {f['fstype']} on {f['device']}: {rate}")
w("")
w("To check this page: the bench's times and minimal I/O times are the `wall_s` and `min_io_s`")
w(f"of `runs` in [{base.split('/')[-1]}.json]({base.split('/')[-1]}.json), the hand times the")
w(f"`hand_wall_s` of [{base.split('/')[-1]}-hand.csv]({base.split('/')[-1]}-hand.csv) (one row per")
w("hand run, with the command line it ran and the bench's time of the run before it);")
w(f"`bench/agreement.sh --report bench/results/{base.split('/')[-1]}` makes this page again from")
w("those two files alone.")
open(base + ".md", "w").write("\n".join(out) + "\n")
print(f"{base}.md: {n_ok} of {len(verdicts)} configurations within 10%")
PY
}
if [ "${1:-}" = --report ]; then
    report "$2"
    exit 0
fi

NLSR=${NLSR:-$here/../build/nlsr}
PRESET=llama-8b
LAYERS=8
REPS=3
BUDGETS=1G,4G
IO=uring,pread
OUT=$here/results
DROP=""
NOTE=${NOTE:-}
[ $# -ge 1 ] && [ "${1#--}" = "$1" ] || { sed -n 3,22p "$0" >&2; exit 2; }
SCRATCH=$1
shift
while [ $# -gt 0 ]; do
    case $1 in
    --nlsr) NLSR=$2; shift 2 ;;
    --preset) PRESET=$2; shift 2 ;;
    --layers) LAYERS=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --budgets) BUDGETS=$2; shift 2 ;;
    --io) IO=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --drop-caches) DROP=--drop-caches; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ -x "$NLSR" ] || { echo "no nlsr at $NLSR (build first or pass --nlsr)" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "needs GNU time at /usr/bin/time" >&2; exit 2; }
NLSR=$(cd "$(dirname "$NLSR")" && pwd)/$(basename "$NLSR")
mkdir -p "$SCRATCH" "$OUT"
NAME=$OUT/bench-${PRESET//-/}-${LAYERS}l
HAND=$NAME-hand.csv
echo "job,budget,io,rep,cache,bench_wall_s,hand_wall_s,hand_peak_rss_kib,hand_status,load1,command" > "$HAND"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
set -- "$NLSR" bench --synth "$PRESET" --layers "$LAYERS" --budgets "$BUDGETS" --io "$IO" \
    --reps "$REPS" $DROP --scratch "$SCRATCH" --csv "$NAME.csv" --json "$NAME.json" --plot "$NAME.svg"
"$@" --after-each "bash '$here/agreement.sh' --hand '$HAND' '$NLSR'"
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
{
    echo "script=bench/agreement.sh SCRATCH --preset $PRESET --layers $LAYERS --reps $REPS --budgets $BUDGETS --io $IO${DROP:+ $DROP}"
    echo "date=$(date -u +%Y-%m-%dT%H:%MZ)"
    echo "load_before=$load_before"
    echo "load_after=$load_after"
    echo "note=$NOTE"
    shift
    echo "bench=nlsr $* --after-each \"bash bench/agreement.sh --hand $(basename "$HAND") nlsr\"" |
        sed "s#$OUT/#bench/results/#g; s#$SCRATCH#SCRATCH#g"
} > "$HAND.meta"
report "$NAME"
