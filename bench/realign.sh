#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Bench of `nlsr run`, cold cache. Writes bench/results/realign*.{csv,json,svg}.
#  1. `nlsr bench` on a llama-8b --layers ${LAYERS:-8} triple: wall time, bytes, peak RSS,
#     phases of `nlsr run` at 4G and 1G against the minimal I/O time (each input byte read once
#     at the O_DIRECT rate `nlsr bench` measures on the same files, the bytes written at its
#     write+fsync rate), realign.{csv,json,svg}; the prepare + apply plan forced at 4G
#     (NLSR_RUN_PLAN=patch-file) the same way, realign-patchfile.{csv,json}.
#  2. (an extra nlsr bench cannot do) llama-8b --layers 2: nlsr against bench/baseline_numpy.py
#     (a plain numpy implementation that loads whole checkpoints): time, peak RSS, identical
#     output bytes; rows in realign-numpy.csv.
#  3. `nlsr bench` on a llama-70b --layers 2 triple at 512M and 4G: peak RSS (target <= 576 MiB
#     at 512M) and the ratio to the minimal I/O time, realign-70b.{csv,json,svg}.
# Needs python3-numpy and GNU time for 2; root only for drop_caches (without it nlsr bench drops
# each file's pages with posix_fadvise); ~35 GB free disk at the peak.
# KEEP_DATA=1 keeps the numpy case's triple for the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
NLSR=${NLSR:-build/nlsr}
# The scratch folder for the synthetic checkpoints: the first argument (or DATA).
DATA=${1:-${DATA:-}}
if [ -z "$DATA" ]; then
  echo "usage: bench/realign.sh DATA_DIR   (a scratch folder with ~35 GB free)" >&2
  exit 2
fi
RES=bench/results
LAYERS=${LAYERS:-8}
# The numpy baseline needs a python with numpy (Debian: apt-get install python3-numpy).
PY=${PY:-/usr/bin/python3}
mkdir -p "$RES" "$DATA"
DROP=""
[ "$(id -u)" = 0 ] && DROP=--drop-caches

# ---- 1. llama-8b, minimal I/O ratio -----------------------------------------------------
$NLSR bench --synth llama-8b --layers "$LAYERS" --budgets 4G,1G --io uring --jobs run $DROP \
  --scratch "$DATA" --csv $RES/realign.csv --json $RES/realign.json --plot $RES/realign.svg
NLSR_RUN_PLAN=patch-file $NLSR bench --synth llama-8b --layers "$LAYERS" --budgets 4G --io uring \
  --jobs run $DROP --scratch "$DATA" --csv $RES/realign-patchfile.csv --json $RES/realign-patchfile.json

CSV=$RES/realign-numpy.csv
echo "case,preset,layers,tool,budget,seconds,peak_rss_mib,bytes_read,bytes_written,note" >"$CSV"
# Cold only as root (drop_caches); otherwise these rows are warm.
drop() { sync; if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; fi; }
# time_v OUTFILE CMD...: runs CMD under GNU time, leaves "seconds rss_kib" in OUTFILE.
time_v() {
  local out=$1; shift
  /usr/bin/time -f "%e %M" -o "$out" "$@"
}
synth_triple() { # preset layers dir
  mkdir -p "$3"
  for r in base aligned finetuned; do
    [ -d "$3/$r" ] || $NLSR synth --preset "$1" --layers "$2" --role "$r" --seed 1 --out "$3/$r" -q
  done
}

# ---- 2. numpy baseline on llama-8b --layers 2 -------------------------------------------
D2=$DATA/8b-2
synth_triple llama-8b 2 "$D2"
for budget in 4G 1G; do
  rm -rf "$D2/out-nlsr"
  drop
  time_v "$DATA/t" $NLSR run --base "$D2/base" --aligned "$D2/aligned" --finetuned "$D2/finetuned" \
    --out "$D2/out-nlsr" --mem-budget $budget --report "$DATA/report-np.json" -q
  read S RSS <"$DATA/t"
  echo "2,llama-8b,2,nlsr run,$budget,$S,$((RSS / 1024)),,," >>"$CSV"
done
rm -rf "$D2/out-numpy"
drop
time_v "$DATA/t" $PY bench/baseline_numpy.py "$D2/base" "$D2/aligned" "$D2/finetuned" "$D2/out-numpy"
read S RSS <"$DATA/t"
SAME=identical
for f in "$D2"/out-nlsr/*; do cmp -s "$f" "$D2/out-numpy/$(basename "$f")" || SAME=DIFFERENT; done
echo "2,llama-8b,2,numpy baseline,-,$S,$((RSS / 1024)),,,output bytes $SAME to nlsr" >>"$CSV"
[ -n "${KEEP_DATA:-}" ] || rm -rf "$D2"

# ---- 3. llama-70b --layers 2 at 512M and 4G ---------------------------------------------
$NLSR bench --synth llama-70b --layers 2 --budgets 512M,4G --io uring --jobs run $DROP \
  --scratch "$DATA" --csv $RES/realign-70b.csv --json $RES/realign-70b.json --plot $RES/realign-70b.svg
echo "wrote $RES/realign*.csv"
