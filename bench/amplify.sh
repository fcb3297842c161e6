#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Throughput and peak memory of `nlsr amplify` on synthetic Llama-70B checkpoints, measured by
# `nlsr bench --jobs amplify` (cold: every input and output file's pages dropped before each
# run; and warm), against the disks' own rates measured in the same run. Writes, into --out
# (bench/results by default): amplify.csv / .json / .svg (budgets x backends at --full-layers,
# cold), amplify-warm.csv / .json, amplify-layers.csv (uring at 512M per layer count), and
# amplify-read.log: the plan's reads alone per backend (`nlsr plan --measure-read`), an extra
# that nlsr bench does not measure.
#
#   bench/amplify.sh [--nlsr PATH] [--data DIR] [--out DIR] [--layers "1 2 4"] [--full-layers 2]
#                [--budgets "256M 512M 1G 4G"] [--backends "uring pread mmap"] [--reps 2]
#                [--preset llama-70b]
# Root is needed only for drop_caches (--drop-caches); without it nlsr bench uses posix_fadvise.
# About 3 x 11 GB of disk at --layers 4, removed at the end.
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
    --preset) PRESET=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ -x "$NLSR" ] || { echo "no nlsr at $NLSR (build first or pass --nlsr)" >&2; exit 2; }
mkdir -p "$DATA" "$OUT"
DROP=""
[ "$(id -u)" = 0 ] && DROP=--drop-caches
comma() { echo "$1" | tr ' ' ','; }

# Budgets x backends at --full-layers, cold and warm: the plot.
"$NLSR" bench --synth "$PRESET" --layers "$FULL" --jobs amplify --budgets "$(comma "$BUDGETS")" \
    --io "$(comma "$BACKENDS")" --reps "$REPS" $DROP --scratch "$DATA" \
    --csv "$OUT/amplify.csv" --json "$OUT/amplify.json" --plot "$OUT/amplify.svg"
"$NLSR" bench --synth "$PRESET" --layers "$FULL" --jobs amplify --budgets 512M \
    --io "$(comma "$BACKENDS")" --reps "$REPS" --warm --scratch "$DATA" \
    --csv "$OUT/amplify-warm.csv" --json "$OUT/amplify-warm.json"
# Scaling with the layer count: io_uring at 512M.
first=1
for L in $LAYERS; do
    "$NLSR" bench --synth "$PRESET" --layers "$L" --jobs amplify --budgets 512M --io uring \
        --reps "$REPS" $DROP --scratch "$DATA" --csv "$DATA/l.csv" -q > /dev/null
    [ $first = 1 ] && head -1 "$DATA/l.csv" | sed 's/^/layers,/'
    tail -n +2 "$DATA/l.csv" | sed "s/^/$L,/"
    first=0
    rm -f "$DATA/l.csv"
done > "$OUT/amplify-layers.csv"
# The extra: the plan's reads alone per backend (no compute, no writes).
: > "$OUT/amplify-read.log"
for r in base aligned; do
    "$NLSR" synth --preset "$PRESET" --layers "$FULL" --role $r --seed 1 --out "$DATA/$r" --force -q
done
for b in $BACKENDS; do
    [ -w /proc/sys/vm/drop_caches ] && { sync; echo 3 > /proc/sys/vm/drop_caches; }
    "$NLSR" plan --base "$DATA/base" --aligned "$DATA/aligned" --measure-read --io "$b" \
        --mem-budget 512M -q --json >> "$OUT/amplify-read.log"
done
rm -rf "$DATA/base" "$DATA/aligned"
echo "wrote $OUT/amplify.csv amplify.json amplify.svg amplify-warm.csv amplify-layers.csv amplify-read.log"
