#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Checks `nlsr plan`'s predicted time (compute included) against real runs: `nlsr bench` on
# synthetic triples (llama-8b, 8 layers, budgets 1G and 4G; llama-70b, 2 layers, 4G), jobs
# run (--out) and run-in-place, cold, io_uring; prints each run's predicted and measured
# seconds and whether they agree within 25%. Timings on a loaded machine are noisy: run it on
# a quiet one. bench/README.md "Predicted time".
# usage: bench/predict.sh [NLSR [SCRATCH_DIR]]   (defaults: build/nlsr, the current folder)
# PREDICT_KEEP=DIR keeps each bench's table and CSV there (8b.txt, 8b.csv, 70b.txt, 70b.csv).
# Needs about 17 GB free in SCRATCH_DIR for the 8b triple (removed after), then 23 GB for the
# 70b one. Exit 0: every run within 25%; 1: some run outside; 2: a bench failed.
set -u
NLSR=${1:-build/nlsr}
SCRATCH=${2:-.}
TOL=${PREDICT_TOLERANCE:-0.25}
T=$(mktemp -d "${TMPDIR:-/tmp}/nlsr-predict-XXXXXX") || exit 2
trap 'rm -rf "$T"' EXIT

bench() { # name preset layers budgets
    "$NLSR" bench --synth "$2" --layers "$3" --budgets "$4" --jobs run,run-in-place --io uring \
        --scratch "$SCRATCH" --csv "$T/$1.csv" -q >"$T/$1.txt" 2>"$T/$1.err" || {
        echo "bench $1 failed: $(tail -n 1 "$T/$1.err")" >&2
        exit 2
    }
    if [ -n "${PREDICT_KEEP:-}" ]; then
        mkdir -p "$PREDICT_KEEP" && cp "$T/$1.csv" "$T/$1.txt" "$PREDICT_KEEP/"
    fi
}
bench 8b llama-8b 8 1G,4G
bench 70b llama-70b 2 4G

# Columns by name (bench/README.md "Columns"); one line per run.
awk -F, -v tol="$TOL" '
FNR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
{
    wall = $col["wall_s"]; pred = $col["predicted_s"]
    if (pred == "" || pred <= 0) { printf "%-10s %-13s %-5s %-20s no prediction\n", FILENAME ~ /70b/ ? "70b x2" : "8b x8", $col["job"], $col["budget"], $col["plan"]; bad++; next }
    d = wall / pred - 1; ok = (d <= tol && d >= -tol)
    printf "%-10s %-13s %-5s %-20s predicted %7.1f s  measured %7.1f s  measured/predicted %.2f  %s\n",
        FILENAME ~ /70b/ ? "70b x2" : "8b x8", $col["job"], $col["budget"], $col["plan"], pred, wall,
        wall / pred, ok ? "within" : "OUTSIDE"
    if (!ok) bad++
}
END { exit bad ? 1 : 0 }' "$T/8b.csv" "$T/70b.csv"
