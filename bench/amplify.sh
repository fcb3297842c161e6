#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Throughput and peak memory of `nlsr amplify` on synthetic Llama-70B checkpoints, against
# `cat` of the same input files as the baseline, cold cache (caches dropped before every run)
# and warm. Writes amplify.csv, amplify.svg (plot), amplify-summary.md (tables),
# amplify-machine.txt and amplify.log into --out (bench/results by default).
#
#   bench/amplify.sh [--nlsr PATH] [--data DIR] [--out DIR] [--layers "1 2 4"] [--full-layers 2]
#                [--budgets "256M 512M 1G 4G"] [--backends "uring pread mmap"] [--reps 2]
#                [--keep] [--preset llama-70b]
#
# For every layer count: synth base and aligned (llama-70b, seed 1), then
#   cold: cat of the inputs, amplify --io uring --mem-budget 512M     (every layer count)
#         amplify per backend at 512M and per budget with io_uring    (--full-layers only)
#         the plan's reads alone per backend (nlsr plan --measure-read) (--full-layers only)
#   warm: the same after reading the inputs once                       (--full-layers only)
# Needs root (drop_caches) and about 3 x 11 GB of disk at --layers 4; the checkpoints are
# deleted afterwards unless --keep.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
NLSR=${NLSR:-$here/../build/nlsr}
DATA=/tmp/nlsr-bench
OUT=$here/results
LAYERS="1 2 4"
FULL="2"
BUDGETS="256M 512M 1G 4G"
BACKENDS="uring pread mmap"
REPS=2
KEEP=0
PRESET=llama-70b
while [ $# -gt 0 ]; do
    case $1 in
    --nlsr) NLSR=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --layers) LAYERS=$2; shift 2 ;;
    --full-layers) FULL=$2; shift 2 ;;
    --budgets) BUDGETS=$2; shift 2 ;;
    --backends) BACKENDS=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --preset) PRESET=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ -x "$NLSR" ] || { echo "no nlsr at $NLSR (build first or pass --nlsr)" >&2; exit 2; }
[ -w /proc/sys/vm/drop_caches ] || { echo "needs root to drop caches" >&2; exit 2; }
mkdir -p "$DATA" "$OUT"
CSV=$OUT/amplify.csv
LOG=$OUT/amplify.log
: > "$LOG"
echo "preset,layers,cache,job,backend,budget,rep,seconds,bytes_read,bytes_written,read_mib_s,peak_rss_mib,budget_peak_mib,plan_bytes_read,plan_bytes_written" > "$CSV"

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
jnum() { sed -n "s/.*\"$1\":[[:space:]]*\([0-9.]*\).*/\1/p" <<< "$2" | head -1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# One cat of the inputs: a CSV row with its time and rate.
run_cat() { # layers cache rep
    local t0 t1 bytes secs
    bytes=$(cat "$DATA"/base/*.safetensors "$DATA"/aligned/*.safetensors | wc -c)
    [ "$2" = cold ] && drop
    t0=$(date +%s.%N)
    cat "$DATA"/base/*.safetensors "$DATA"/aligned/*.safetensors > /dev/null
    t1=$(date +%s.%N)
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    echo "$PRESET,$1,$2,cat,-,-,$3,$secs,$bytes,0,$(awk -v b="$bytes" -v s="$secs" 'BEGIN { printf "%.1f", b / 1048576 / s }'),,,," >> "$CSV"
    echo "cat $1 layers $2 rep $3: $secs s" | tee -a "$LOG"
}

# The plan's reads alone (nlsr plan --measure-read): the read side against cat.
run_read() { # layers cache backend budget rep
    local j rd s
    [ "$2" = cold ] && drop
    j=$("$NLSR" plan --base "$DATA/base" --aligned "$DATA/aligned" --measure-read --io "$3" \
        --mem-budget "$4" -q --json)
    echo "$j" >> "$LOG"
    rd=$(jnum bytes_read "$j"); s=$(jnum seconds "$j")
    echo "$PRESET,$1,$2,read,$3,$4,$5,$s,$rd,0,$(awk -v b="$rd" -v s="$s" 'BEGIN { printf "%.1f", b / 1048576 / s }'),$(mib "$(jnum peak_rss_bytes "$j")"),$(mib "$(jnum budget_peak_bytes "$j")"),," >> "$CSV"
    echo "read-only $1 layers $2 $3 $4 rep $5: $s s" | tee -a "$LOG"
}

# One amplify: a CSV row from its --json summary, and the plan's bytes beside it.
run_amp() { # layers cache backend budget rep
    local j plan
    rm -rf "$DATA/out"
    plan=$("$NLSR" plan --base "$DATA/base" --aligned "$DATA/aligned" --mem-budget "$4" \
           --no-time --json)
    [ "$2" = cold ] && drop
    j=$("$NLSR" amplify --base "$DATA/base" --aligned "$DATA/aligned" --out "$DATA/out" \
        --io "$3" --mem-budget "$4" -q --json)
    echo "$j" >> "$LOG"
    local rd wr s
    rd=$(jnum bytes_read "$j"); wr=$(jnum bytes_written "$j"); s=$(jnum seconds "$j")
    echo "$PRESET,$1,$2,amplify,$3,$4,$5,$s,$rd,$wr,$(awk -v b="$rd" -v s="$s" 'BEGIN { printf "%.1f", b / 1048576 / s }'),$(mib "$(jnum peak_rss_bytes "$j")"),$(mib "$(jnum budget_peak_bytes "$j")"),$(jnum bytes_read "$plan"),$(jnum bytes_written "$plan")" >> "$CSV"
    echo "amplify $1 layers $2 $3 $4 rep $5: $s s, peak RSS $(mib "$(jnum peak_rss_bytes "$j")") MiB" | tee -a "$LOG"
    rm -rf "$DATA/out"
}

{
    echo "# machine"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nlsr: $("$NLSR" version) ($(git -C "$here/.." rev-parse --short HEAD 2>/dev/null || echo '?'), uncommitted changes possible)"
    echo "kernel: $(uname -r)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') x $(nproc)"
    echo "memory: $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    dev=$(df --output=source "$DATA" | tail -1)
    echo "data: $DATA on $dev ($(df --output=fstype "$DATA" | tail -1)), read_ahead_kb $(cat /sys/block/"$(basename "$dev")"/queue/read_ahead_kb 2>/dev/null || echo '?')"
    echo "other processes at the start (the machine is shared; the device and cores with them):"
    ps -eo pcpu,etime,args --sort=-pcpu | head -6 | cut -c1-160
} > "$OUT/amplify-machine.txt"

for L in $LAYERS; do
    rm -rf "$DATA/base" "$DATA/aligned" "$DATA/out"
    for r in base aligned; do
        "$NLSR" synth --preset "$PRESET" --layers "$L" --role $r --seed 1 --out "$DATA/$r" \
            --mem-budget 512M -q --json >> "$LOG"
    done
    full=0
    for f in $FULL; do [ "$f" = "$L" ] && full=1; done
    for rep in $(seq 1 "$REPS"); do
        run_cat "$L" cold "$rep"
        run_amp "$L" cold uring 512M "$rep"
        [ $full = 1 ] || continue
        for b in $BACKENDS; do [ "$b" = uring ] || run_amp "$L" cold "$b" 512M "$rep"; done
        for b in $BACKENDS; do run_read "$L" cold "$b" 512M "$rep"; done
        for m in $BUDGETS; do [ "$m" = 512M ] || run_amp "$L" cold uring "$m" "$rep"; done
    done
    if [ $full = 1 ]; then
        cat "$DATA"/base/*.safetensors "$DATA"/aligned/*.safetensors > /dev/null
        for rep in $(seq 1 "$REPS"); do
            run_cat "$L" warm "$rep"
            for b in $BACKENDS; do run_amp "$L" warm "$b" 512M "$rep"; done
            for m in $BUDGETS; do [ "$m" = 512M ] || run_amp "$L" warm uring "$m" "$rep"; done
        done
    fi
done
{
    echo "other processes at the end:"
    ps -eo pcpu,etime,args --sort=-pcpu | head -6 | cut -c1-160
    echo "finished: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >> "$OUT/amplify-machine.txt"
[ $KEEP = 1 ] || rm -rf "$DATA/base" "$DATA/aligned" "$DATA/out"
python3 "$here/amplify_plot.py" "$CSV" "$OUT/amplify.svg" > "$OUT/amplify-summary.md"
cat "$OUT/amplify-summary.md"
