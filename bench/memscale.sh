#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Memory at any model size, and the auto budget. Writes bench/results/memscale.csv and
# appends a run section (machine load, figures) to bench/results/memscale.md.
#
#   bench/memscale.sh SCRATCH [STAGE...]      stages: dir small70 sparse70 sparse405 (default all)
#
#  dir       the patch file's directory alone at full scale (tests/test_patchdir --scale: every
#            target module of every layer in 65,536-element blocks, 1.04 million blocks at 70B,
#            6.1 million at 405B), written and read back: peak RSS (VmHWM) of each phase.
#  small70   llama-70b --layers 2, real synth data (~8 GB per checkpoint, ~23 GB in all; df is
#            checked first and the triple removed after unless KEEP_DATA=1): `run` at the
#            default budget (auto) against --mem-budget 4G, cold cache, same script run: the
#            auto budget must take the single pass and be within 1.15x of the 4G time.
#  sparse70  Llama-70B shapes, all 80 layers, SPARSE checkpoints (bench/sparse_ckpt.py: real
#            headers, data left as holes: 141 GB each on a few MB of disk) at 512M: `prepare`,
#            `apply --in-place --select none` and `run --in-place --select none` (they write
#            nothing into the holes).
#  sparse405 the same at 405B shapes (126 layers, hidden 16384, intermediate 53248).
#  SPARSE_LAYERS=N makes the sparse checkpoints of the first N layers only (default: all);
#  SPARSE_JOBS="prepare apply run" (default) picks the measured commands.
# Every measured command: peak RSS (GNU time %M) at most budget + 64 MiB.
# The machine is shared: `uptime` is recorded before and after each stage; compare ratios
# within one run. TIMEOUT (seconds, default 7200) bounds each command; a command that runs
# out of time is recorded as such (its peak RSS so far still counts).
set -uo pipefail
cd "$(dirname "$0")/.."
NLSR=${NLSR:-build/nlsr}
S=${1:-}
if [ -z "$S" ]; then
  echo "usage: bench/memscale.sh SCRATCH [dir|small70|sparse70|sparse405 ...]" >&2
  exit 2
fi
shift
STAGES=${*:-dir small70 sparse70 sparse405}
PATCHDIR=${PATCHDIR:-build/tests/test_patchdir}
TIMEOUT=${TIMEOUT:-7200}
RES=bench/results
CSV=$RES/memscale.csv
MD=$RES/memscale.md
mkdir -p "$RES" "$S"
[ -f "$CSV" ] || echo "date,stage,job,budget,seconds,peak_rss_mib,limit_mib,ok,plan,note" >"$CSV"
fails=0
drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }

# measure STAGE JOB BUDGET_BYTES CMD...: GNU time's peak RSS against budget + 64 MiB.
measure() {
  local stage=$1 job=$2 budget=$3
  shift 3
  local t=$S/time.txt log=$S/$stage-$job.log
  # GNU time outside timeout: wait4's peak RSS covers the waited-for descendants, so a job
  # stopped by timeout (SIGTERM: nlsr cleans up and exits 143) still has its figure.
  rm -f "$t"
  /usr/bin/time -f "%e %M" -o "$t" timeout "$TIMEOUT" "$@" >"$log" 2>&1
  local rc=$? secs rss
  secs=$(awk 'END { print $1 }' "$t" 2>/dev/null)
  rss=$(awk 'END { printf "%.0f", $2 / 1024 }' "$t" 2>/dev/null)
  local lim=$(($(mib "$budget") + 64)) ok=yes note=""
  [ "$rc" = 124 ] && note="stopped by timeout after ${TIMEOUT}s (partial: peak RSS so far)"
  [ "$rc" != 0 ] && [ "$rc" != 124 ] && { note="exit $rc: $(grep -v '^Command' "$log" | tail -1 | tr ',' ';')"; ok=no; }
  [ -n "$rss" ] && [ "$rss" -gt "$lim" ] && ok=no
  local plan
  plan=$(grep -o 'plan: [a-z +]*' "$log" | head -1 | sed 's/plan: //')
  echo "$(date -u +%FT%TZ),$stage,$job,$(mib "$budget")M,$secs,$rss,$lim,$ok,$plan,$note" >>"$CSV"
  printf '| %s | %s | %s MiB | %s s | %s MiB | %s MiB | %s | %s %s |\n' "$stage" "$job" \
    "$(mib "$budget")" "$secs" "$rss" "$lim" "$ok" "$plan" "$note" >>"$MD"
  [ "$ok" = yes ] || fails=$((fails + 1))
  LAST_SECS=$secs
}

header() {
  {
    echo
    echo "## $1 ($(date -u +%F\ %TZ))"
    echo
    echo "load before: $(uptime | sed 's/.*load average/load average/')"
    echo
    echo "| stage | job | budget | seconds | peak RSS | limit | within | plan / note |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
  } >>"$MD"
}
footer() { echo -e "\nload after: $(uptime | sed 's/.*load average/load average/')" >>"$MD"; }

sparse_stage() { # stage preset
  local st=$1 preset=$2 d=$S/$1 b=$((512 << 20)) layers=${SPARSE_LAYERS:-0} what="every layer"
  local jobs=${SPARSE_JOBS:-prepare apply run}
  [ "$layers" = 0 ] || what="the first $layers layers"
  rm -rf "$d"
  for r in base aligned ft; do
    python3 bench/sparse_ckpt.py --preset "$preset" --layers "$layers" --out "$d/$r" >/dev/null
  done
  header "$st: $preset, $what, sparse checkpoints, --mem-budget 512M ($(git describe --always --dirty 2>/dev/null))"
  drop
  case " $jobs " in *" prepare "*)
  measure "$st" prepare $b $NLSR prepare --base "$d/base" --aligned "$d/aligned" --out "$d/p.nlsrp" \
    --mem-budget 512M ;;
  esac
  if [ -f "$d/p.nlsrp" ]; then
    echo "patch file: $(stat -c %s "$d/p.nlsrp") bytes" >>"$S/$st-prepare.log"
    drop
    measure "$st" "apply --in-place --select none" $b $NLSR apply --patches "$d/p.nlsrp" \
      --in-place "$d/ft" --select none --mem-budget 512M
  fi
  case " $jobs " in *" run "*) ;; *) footer; rm -rf "$d"; return ;; esac
  # A fresh fine-tune: the apply above recorded its realignment in the folder's state, and run
  # in place with the same key would find it done and do nothing.
  rm -rf "$d/ft"
  python3 bench/sparse_ckpt.py --preset "$preset" --layers "$layers" --out "$d/ft" >/dev/null
  drop
  measure "$st" "run --in-place --select none" $b $NLSR run --base "$d/base" --aligned "$d/aligned" \
    --finetuned "$d/ft" --in-place --select none --mem-budget 512M
  footer
  rm -rf "$d"
}

small_stage() {
  local d=$S/small70 avail
  avail=$(df -B1 --output=avail "$S" | tail -1)
  if [ ! -d "$d/finetuned" ] && [ "$avail" -lt $((26 << 30)) ]; then
    echo "small70: $(mib "$avail") MiB free in $S, 26 GiB needed; skipped" | tee -a "$MD"
    return
  fi
  mkdir -p "$d"
  for r in base aligned finetuned; do
    [ -d "$d/$r" ] || $NLSR synth --preset llama-70b --layers 2 --role $r --seed 1 --out "$d/$r" -q
  done
  # The auto budget as the program derives it (a run's JSON summary), then the table.
  local auto
  auto=$($NLSR run --base "$d/base" --aligned "$d/aligned" --finetuned "$d/finetuned" \
    --out "$d/o0" --json -q --force | python3 -c \
    'import json,sys; s=json.load(sys.stdin)["summary"]; print(s["mem_budget_bytes"]); print(s.get("mem_budget_reason",""), file=sys.stderr)' \
    2>"$S/auto-reason.txt")
  rm -rf "$d/o0"
  header "small70: llama-70b --layers 2 (synth data), run at auto ($(mib "$auto") MiB: $(cat "$S/auto-reason.txt")) and 4G"
  # Outputs are summed (md5) and removed at once: three checkpoints plus one output fit a
  # shared disk, two outputs may not.
  local t4="" ta="" sums=""
  for rep in 1 2; do
    for which in 4G auto; do
      drop
      if [ $which = 4G ]; then
        measure small70 "run --mem-budget 4G (#$rep)" $((4 << 30)) $NLSR run --base "$d/base" \
          --aligned "$d/aligned" --finetuned "$d/finetuned" --out "$d/o" --force --mem-budget 4G
        t4="$t4 $LAST_SECS"
      else
        measure small70 "run (auto, #$rep)" "$auto" $NLSR run --base "$d/base" \
          --aligned "$d/aligned" --finetuned "$d/finetuned" --out "$d/o" --force
        ta="$ta $LAST_SECS"
      fi
      sums="$sums$(cat "$d"/o/*.safetensors 2>/dev/null | md5sum | cut -c1-32)\n"
      rm -rf "$d/o"
    done
  done
  [ "$(printf "$sums" | sort -u | wc -l)" = 1 ] || echo "note: outputs differ between runs" >>"$MD"
  local ratio
  ratio=$(awk -v a="$ta" -v b="$t4" 'BEGIN { n = split(a, x); split(b, y); sa = 0; sb = 0;
    for (i = 1; i <= n; i++) { sa += x[i]; sb += y[i] } printf "%.3f", sa / sb }')
  echo -e "\nauto / 4G time: $ratio (sum of $(echo $ta | wc -w) runs each, alternated)" >>"$MD"
  awk -v r="$ratio" 'BEGIN { exit !(r <= 1.15) }' || fails=$((fails + 1))
  footer
  [ "${KEEP_DATA:-0}" = 1 ] || rm -rf "$d"
}

dir_stage() {
  {
    echo
    echo "## dir: the patch directory alone, written and read back ($(date -u +%F\ %TZ))"
    echo
    echo "load before: $(uptime | sed 's/.*load average/load average/')"
    echo
    echo '```'
  } >>"$MD"
  for preset in llama-70b llama-405b; do
    /usr/bin/time -f "%e s wall" "$PATCHDIR" --scale $preset "$S" >>"$MD" 2>&1 || fails=$((fails + 1))
  done
  echo '```' >>"$MD"
  footer
}

for st in $STAGES; do
  case $st in
  dir) dir_stage ;;
  small70) small_stage ;;
  sparse70) sparse_stage sparse70 llama-70b ;;
  sparse405) sparse_stage sparse405 llama-405b ;;
  *) echo "unknown stage $st" >&2; exit 2 ;;
  esac
done
echo "memscale: $fails check(s) failed; $CSV, $MD"
[ "$fails" = 0 ]
