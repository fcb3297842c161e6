#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Bench of `nlsr run`, cold cache. Writes bench/results/realign.csv and realign.md.
#  1. llama-8b --layers ${LAYERS:-8} triple: wall time, bytes, peak RSS of `nlsr run` (single
#     pass at 4G and 1G; the prepare + apply plan forced at 4G as the previous baseline) against
#     the minimal I/O time (every input byte read once at the bandwidth `cat` gets on the same
#     files + the bytes written at the write speed `dd` gets with fsync), all measured here.
#  2. llama-8b --layers 2 triple: nlsr against bench/baseline_numpy.py (a plain numpy
#     implementation that loads whole checkpoints): time, peak RSS, identical output bytes.
#  3. llama-70b --layers 2 triple at --mem-budget 512M: peak RSS (target <= 576 MiB).
# Needs root (drop_caches), python3-numpy and GNU time; ~35 GB free disk at the peak.
# KEEP_DATA=1 keeps the synthetic triples for the next run.
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
CSV=$RES/realign.csv
echo "case,preset,layers,tool,budget,seconds,peak_rss_mib,bytes_read,bytes_written,note" >"$CSV"

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
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
du_b() { du -cb "$@" | tail -n 1 | cut -f1; }

# ---- 1. llama-8b, minimal I/O ratio -----------------------------------------------------
D=$DATA/8b-$LAYERS
synth_triple llama-8b "$LAYERS" "$D"
IN_BYTES=$(du_b "$D"/base/*.safetensors "$D"/aligned/*.safetensors "$D"/finetuned/*.safetensors)
drop
time_v "$DATA/t" cat "$D"/base/*.safetensors "$D"/aligned/*.safetensors "$D"/finetuned/*.safetensors >/dev/null
read CAT_S _ <"$DATA/t"
W_BYTES=$((2 << 30))
drop
time_v "$DATA/t" dd if=/dev/zero of="$DATA/ddtest" bs=16M count=$((W_BYTES >> 24)) conv=fsync status=none
read DD_S _ <"$DATA/t"
rm -f "$DATA/ddtest"
echo "1,llama-8b,$LAYERS,cat,-,$CAT_S,,$IN_BYTES,0,read bandwidth baseline" >>"$CSV"
echo "1,llama-8b,$LAYERS,dd,-,$DD_S,,0,$W_BYTES,write bandwidth baseline (fsync)" >>"$CSV"
# nlsr run: the single pass at 4G (every patch kept) and 1G (some kept, the rest recomputed),
# and the prepare + apply plan forced at 4G (what run did before the single pass), each cold.
run_case() { # tag budget plan(-|patch-file)
  rm -rf "$D/out"
  drop
  if [ "$3" = - ]; then
    time_v "$DATA/t" $NLSR run --base "$D/base" --aligned "$D/aligned" --finetuned "$D/finetuned" \
      --out "$D/out" --mem-budget "$2" --report "$DATA/report-$1.json" -q
  else
    NLSR_RUN_PLAN=$3 time_v "$DATA/t" $NLSR run --base "$D/base" --aligned "$D/aligned" \
      --finetuned "$D/finetuned" --out "$D/out" --mem-budget "$2" --report "$DATA/report-$1.json" -q
  fi
  read S RSS <"$DATA/t"
  NOTE=$(python3 -c "import json;s=json.load(open('$DATA/report-$1.json'))['summary'];ph=s.get('phase_seconds',{});print(s['bytes_read'],s['bytes_written'],s.get('plan'),s.get('patches_in_memory','-'),ph.get('similarities','-'),ph.get('output','-'),sep=',')")
  IFS=, read BR BW PLAN KEPT PA PB <<<"$NOTE"
  echo "1,llama-8b,$LAYERS,nlsr run,$2,$S,$((RSS / 1024)),$BR,$BW,plan=$PLAN kept=$KEPT phaseA=$PA phaseB=$PB" >>"$CSV"
  python3 -c "print('  $1: %.2f s, ratio to minimal I/O %.2f' % ($S, $S / ($CAT_S + $BW / ($W_BYTES / $DD_S))))"
}
run_case single-4G 4G -
run_case single-1G 1G -
run_case patchfile-4G 4G patch-file
rm -rf "$D/out"

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
[ -n "${KEEP_DATA:-}" ] || rm -rf "$D2" "$D"

# ---- 3. llama-70b --layers 2 at 512M ------------------------------------------------------
D3=$DATA/70b-2
synth_triple llama-70b 2 "$D3"
rm -rf "$D3/out"
drop
time_v "$DATA/t" $NLSR run --base "$D3/base" --aligned "$D3/aligned" --finetuned "$D3/finetuned" \
  --out "$D3/out" --mem-budget 512M --report "$DATA/report-70b.json" -q
read S RSS <"$DATA/t"
echo "3,llama-70b,2,nlsr run,512M,$S,$((RSS / 1024)),,," >>"$CSV"
# The same triple at 4G (the single pass: two whole 8192 x 28672 modules of the three
# checkpoints fit), against its own minimal I/O time.
drop
time_v "$DATA/t" cat "$D3"/base/*.safetensors "$D3"/aligned/*.safetensors "$D3"/finetuned/*.safetensors >/dev/null
read CAT3 _ <"$DATA/t"
echo "3,llama-70b,2,cat,-,$CAT3,,$(du_b "$D3"/base/*.safetensors "$D3"/aligned/*.safetensors "$D3"/finetuned/*.safetensors),0,read bandwidth baseline" >>"$CSV"
rm -rf "$D3/out"
drop
time_v "$DATA/t" $NLSR run --base "$D3/base" --aligned "$D3/aligned" --finetuned "$D3/finetuned" \
  --out "$D3/out" --mem-budget 4G --report "$DATA/report-70b-4G.json" -q
read S RSS <"$DATA/t"
NOTE=$(python3 -c "import json;s=json.load(open('$DATA/report-70b-4G.json'))['summary'];print(s['bytes_read'],s['bytes_written'],s.get('plan'),s.get('patches_in_memory','-'),sep=',')")
IFS=, read BR BW PLAN KEPT <<<"$NOTE"
echo "3,llama-70b,2,nlsr run,4G,$S,$((RSS / 1024)),$BR,$BW,plan=$PLAN kept=$KEPT" >>"$CSV"
python3 -c "print('  70b 4G: %.2f s, ratio to minimal I/O %.2f' % ($S, $S / ($CAT3 + $BW / ($W_BYTES / $DD_S))))"
[ -n "${KEEP_DATA:-}" ] || rm -rf "$D3"
echo "wrote $CSV"
cat "$CSV"
