#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Time and peak memory of `nlsr prepare --scorer lowrank` against `--scorer magnitude` (the
# default) on a synthetic Llama-8B pair (base, aligned), cold cache (page cache dropped before
# every run). Writes bench/results/scorer.md (figures, passes, commands, machine) and a log.
#
#   bench/scorer.sh [--nlsr PATH] [--data DIR] [--out DIR] [--layers 4] [--threads 1]
#                   [--budget 1G] [--runs "magnitude lowrank lowrank-r128-generic"] [--keep]
#
# Runs (each one prepare of base + aligned into a patch file):
#   magnitude              --scorer magnitude
#   lowrank                --scorer lowrank with the defaults (rank fraction 1, paper reading:
#                          r = 0.2 min(out, in) at sparsity 0.8), OPENBLAS_CORETYPE=SkylakeX
#   lowrank-r128           --scorer lowrank --rank 128 --rank-reading direct, SkylakeX kernels
#   lowrank-r128-generic   the same with the OpenBLAS kernels its DYNAMIC_ARCH picks by itself
# OpenBLAS 0.3.21 as packaged picks its "Prescott" (SSE3) kernels on this VM's CPU, whose
# model it does not know; OPENBLAS_CORETYPE=SkylakeX selects the AVX-512 ones (the CPU has
# them), about 5x faster sgemm here. Needs root (drop_caches) and about 8 GB of disk; the
# checkpoints are deleted afterwards unless --keep.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
NLSR=${NLSR:-$here/../build/nlsr}
DATA=/tmp/nlsr-bench-scorer
OUT=$here/results
LAYERS=4
THREADS=1
BUDGET=1G
RUNS="magnitude lowrank lowrank-r128 lowrank-r128-generic"
KEEP=0
while [ $# -gt 0 ]; do
    case $1 in
    --nlsr) NLSR=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --layers) LAYERS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ -x "$NLSR" ] || { echo "no nlsr at $NLSR (build first or pass --nlsr)" >&2; exit 2; }
[ -w /proc/sys/vm/drop_caches ] || { echo "needs root to drop caches" >&2; exit 2; }
if [ ! -x /usr/bin/time ]; then apt-get install -y time > /dev/null; fi
mkdir -p "$DATA" "$OUT"
LOG=$OUT/scorer.log
MD=$OUT/scorer.md
: > "$LOG"

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
jnum() { sed -n "s/.*\"$1\":[[:space:]]*\([0-9.e+-]*\).*/\1/p" <<< "$2" | head -1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }

echo "synth llama-8b, $LAYERS layers, into $DATA" | tee -a "$LOG"
for role in base aligned; do
    [ -d "$DATA/$role" ] || "$NLSR" synth --preset llama-8b --layers "$LAYERS" --role "$role" \
        --out "$DATA/$role" -q
done
model_bytes=$(cat "$DATA"/base/*.safetensors | wc -c)

args_of() { # run -> scorer arguments
    case $1 in
    magnitude) echo "--scorer magnitude" ;;
    lowrank) echo "--scorer lowrank" ;;
    lowrank-r128 | lowrank-r128-generic) echo "--scorer lowrank --rank 128 --rank-reading direct" ;;
    *) echo "unknown run $1" >&2; exit 2 ;;
    esac
}
env_of() { case $1 in lowrank | lowrank-r128) echo "OPENBLAS_CORETYPE=SkylakeX" ;; *) echo "" ;; esac; }

rows=()
cmds=()
for run in $RUNS; do
    args=$(args_of "$run")
    envs=$(env_of "$run")
    rm -f "$DATA/patch.nlsrp"
    cmd="$NLSR prepare --base $DATA/base --aligned $DATA/aligned --out $DATA/patch.nlsrp $args --threads $THREADS --mem-budget $BUDGET -q --json"
    plan=$("$NLSR" plan --base "$DATA/base" --aligned "$DATA/aligned" --finetuned "$DATA/aligned" \
           $args --mem-budget "$BUDGET" --no-time 2>&1 | sed -n '/^scorer/,$p')
    # SVD passes over all modules (per module: 2 + 2 power iterations randomized, 1 exact).
    svd=$(awk '/SVD pass/ { n = $4; gsub(/[(x):]/, "", n); for (i = 1; i <= NF; i++) if ($i ~ /^SVD$/) s += n * $(i - 1) } END { print s + 0 }' <<< "$plan")
    drop
    load=$(cut -d' ' -f1 /proc/loadavg)
    # shellcheck disable=SC2086
    j=$(env $envs /usr/bin/time -v -o "$DATA/time.txt" $cmd)
    echo "== $run: ${envs:+$envs }$cmd" >> "$LOG"
    echo "$j" >> "$LOG"
    cat "$DATA/time.txt" >> "$LOG"
    [ -n "$plan" ] && echo "$plan" >> "$LOG"
    wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$DATA/time.txt" |
           awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; printf "%.1f", s }')
    rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$DATA/time.txt")
    cpu=$(sed -n 's/.*Percent of CPU this job got: //p' "$DATA/time.txt")
    s=$(jnum seconds "$j"); rd=$(jnum bytes_read "$j"); bp=$(jnum budget_peak_bytes "$j")
    mp=$(jnum module_passes "$j"); dp=$(jnum module_disk_passes "$j")
    el=$(jnum elements_patched "$j"); pb=$(jnum patch_bytes "$j")
    echo "$run: $wall s wall, peak RSS $((rss / 1024)) MiB, module passes $mp ($dp from disk)" |
        tee -a "$LOG"
    rows+=("$run|$wall|$s|$((rss / 1024))|$(mib "$bp")|$(mib "$rd")|$mp|$dp|$svd|$cpu|$load|$(mib "$pb")")
    cmds+=("${envs:+$envs }${cmd//$DATA/\$DATA}")
done

base_wall=""
for r in "${rows[@]}"; do
    IFS='|' read -r run wall _ rss _ <<< "$r"
    [ "$run" = magnitude ] && base_wall=$wall && base_rss=$rss
done
{
    echo "# prepare --scorer lowrank vs --scorer magnitude"
    echo
    echo "Synthetic llama-8b, $LAYERS layers (\`nlsr synth --preset llama-8b --layers $LAYERS\`,"
    echo "base and aligned, BF16, $(mib "$model_bytes") MiB each; 28 target modules per 4 layers),"
    echo "cold cache (\`echo 3 > /proc/sys/vm/drop_caches\` before every run), --threads $THREADS,"
    echo "--mem-budget $BUDGET. Wall time and peak RSS from \`/usr/bin/time -v\`; passes from the"
    echo "report's summary (module_passes: passes over a target module reading base + aligned, from"
    echo "disk or the module cache; module_disk_passes: of them from disk); SVD passes over all"
    echo "modules from \`nlsr plan\` (the first of each module's reads base + aligned, the others"
    echo "are fed from the W kept in memory). CPU: the share \`time\` saw; load: the 1-minute load"
    echo "average before the run (this 2-core machine is shared with other jobs)."
    echo
    echo "| run | wall s | ratio to magnitude | report s | peak RSS MiB | RSS ratio | budget peak MiB | read MiB | module passes | from disk | SVD passes | CPU | load before | patch MiB |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for r in "${rows[@]}"; do
        IFS='|' read -r run wall s rss bp rd mp dp svd cpu load pb <<< "$r"
        ratio=$(awk -v a="$wall" -v b="${base_wall:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
        rr=$(awk -v a="$rss" -v b="${base_rss:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
        printf '| %s | %s | %s | %.1f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
            "$run" "$wall" "$ratio" "$s" "$rss" "$rr" "$bp" "$rd" "$mp" "$dp" "$svd" "$cpu" \
            "$load" "$pb"
    done
    echo
    echo "Commands (\$DATA = $DATA):"
    echo
    echo '```'
    echo "nlsr synth --preset llama-8b --layers $LAYERS --role base --out \$DATA/base"
    echo "nlsr synth --preset llama-8b --layers $LAYERS --role aligned --out \$DATA/aligned"
    for c in "${cmds[@]}"; do echo "$c"; done
    echo '```'
    echo
    echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //') x $(nproc)," \
         "$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r)," \
         "$("$NLSR" version 2>/dev/null | head -1), $(date -u +%Y-%m-%dT%H:%M:%SZ)."
} > "$MD"
echo "wrote $MD"
if [ "$KEEP" = 0 ]; then rm -rf "$DATA"; fi
