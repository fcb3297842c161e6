#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Every figure and measurement page that README.md and bench/README.md show, made again by one
# command, each through `nlsr bench` or a thin script around it (bench/README.md lists which
# script writes which file). Results go to bench/results/; each script removes its scratch data.
#
#   bench/figures.sh SCRATCH [--quick] [--nlsr PATH] [--only LIST]
#
#   SCRATCH   a folder with room for the largest step (realign: ~35 GB; the rest 8-25 GB each)
#   --quick   fewer reps and budgets, the same models (for a first look; the pages say which
#             command made them)
#   --only    a comma-separated subset of: agreement inplace amplify realign memscale scorer split
#
# Steps and what they write (bench/results/):
#   agreement  bench-llama8b-8l.{csv,json,svg,md}, bench-llama8b-8l-hand.csv  (README figure)
#   inplace    inplace-budget.{csv,json,svg}, inplace.md                      (README figure)
#   amplify    amplify.{csv,json,svg}, amplify-warm.*, amplify-layers.csv, amplify-read.log
#   realign    realign{,-patchfile,-70b}.{csv,json,svg}, realign-numpy.csv
#   memscale   memscale.csv, memscale.md (a section appended per run)
#   scorer     scorer.md, scorer.log
#   split      split.txt (README "Scale-out": measured overhead), split-figures.txt
# Root makes the runs cold through drop_caches (scorer.sh needs it); without root nlsr bench
# drops each file's pages with posix_fadvise. Timings are the machine's: run it on a quiet one.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
NLSR=${NLSR:-$here/../build/nlsr}
QUICK=0
ONLY=agreement,inplace,amplify,realign,memscale,scorer,split
[ $# -ge 1 ] && [ "${1#--}" = "$1" ] || { sed -n 3,23p "$0" >&2; exit 2; }
S=$1
shift
while [ $# -gt 0 ]; do
    case $1 in
    --quick) QUICK=1; shift ;;
    --nlsr) NLSR=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ -x "$NLSR" ] || { echo "no nlsr at $NLSR (build first or pass --nlsr)" >&2; exit 2; }
NLSR=$(cd "$(dirname "$NLSR")" && pwd)/$(basename "$NLSR")
export NLSR
RES=$here/results
DROP=()
[ -w /proc/sys/vm/drop_caches ] && DROP=(--drop-caches)
mkdir -p "$S" "$RES"
want() { case ",$ONLY," in *",$1,"*) return 0 ;; esac; return 1; }
step() { echo "== figures: $1 (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2; }

if want agreement; then
    step agreement
    if [ $QUICK = 1 ]; then r=1; else r=3; fi
    bash "$here/agreement.sh" "$S/agreement" --layers 8 --reps $r "${DROP[@]}"
fi
if want inplace; then
    step inplace
    if [ $QUICK = 1 ]; then set -- --budgets 512M,4G --reps 1; else set -- --reps 2; fi
    bash "$here/inplace.sh" "$S/inplace" --layers 8 "$@" "${DROP[@]}"
fi
if want amplify; then
    step amplify
    if [ $QUICK = 1 ]; then set -- --budgets "512M 4G" --backends "uring pread" --reps 1 --layers "1 2"
    else set -- --reps 3; fi
    bash "$here/amplify.sh" --nlsr "$NLSR" --data "$S/amplify" "$@"
fi
if want realign; then
    step realign
    LAYERS=8 bash "$here/realign.sh" "$S/realign"
fi
if want memscale; then
    step memscale
    if [ $QUICK = 1 ]; then set -- dir small70; else set --; fi
    bash "$here/memscale.sh" "$S/memscale" "$@"
fi
if want scorer; then
    step scorer
    if [ $QUICK = 1 ]; then set -- --runs "magnitude lowrank"; else set --; fi
    bash "$here/scorer.sh" --nlsr "$NLSR" --data "$S/scorer" "$@"
fi
if want split; then
    step split
    if [ $QUICK = 1 ]; then l=128; else l=512; fi
    { echo "# bench/split.sh SCRATCH nlsr $l 8 (bench/figures.sh$([ $QUICK = 1 ] && echo ' --quick')), $(date -u +%Y-%m-%dT%H:%MZ)"
      bash "$here/split.sh" "$S/split" "$NLSR" $l 8; } > "$RES/split.txt"
    rm -rf "$S/split"
    python3 "$here/split_figures.py" > "$RES/split-figures.txt"
fi
echo "figures: done; see bench/results/" >&2
