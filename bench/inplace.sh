#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# In place against --out on a synthetic triple (base, aligned, fine-tuned), cold cache: wall
# time, the bytes nlsr says it wrote, and the bytes the process caused to be written to storage
# (GNU time's %O: the kernel's per-task write accounting, in 512-byte units), for
#   apply --out      (copy every shard, rewrite the patched tensors in the copies)
#   apply --in-place (journal the patched tensors' bytes, then overwrite them)
#   rollback         (undo the in-place apply from its journal)
# which `nlsr bench` cannot measure (apply --in-place, rollback, the process's storage writes),
# and times run --out against run --in-place with `nlsr bench --jobs run,run-in-place`
# (results/inplace-bench.csv); checks that in place and --out give the same bytes. Writes
# bench/results/inplace.md.
#
#   bench/inplace.sh [--nlsr PATH] [--data DIR] [--preset llama-8b] [--layers 2] [--reps 2]
#                    [--keep]
# Each command runs --reps times (cold each time); the table shows the fastest and slowest.
#
# Needs root (drop_caches) and about 5 x the checkpoint's size of disk (llama-8b with 2
# layers: 3.4 GB each); everything under --data is deleted afterwards unless --keep.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
NLSR=${NLSR:-$here/../build/nlsr}
DATA=/tmp/nlsr-bench-inplace
PRESET=llama-8b
LAYERS=2
REPS=2
KEEP=0
while [ $# -gt 0 ]; do
    case $1 in
    --nlsr) NLSR=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --preset) PRESET=$2; shift 2 ;;
    --layers) LAYERS=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ -x "$NLSR" ] || { echo "no nlsr at $NLSR (build first or pass --nlsr)" >&2; exit 2; }
[ -w /proc/sys/vm/drop_caches ] || { echo "needs root to drop caches" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "needs GNU time (/usr/bin/time)" >&2; exit 2; }
mkdir -p "$DATA" "$here/results"
OUTMD=$here/results/inplace.md
cleanup() { [ "$KEEP" = 1 ] || rm -rf "$DATA"; }
trap cleanup EXIT

src=$(df --output=source "$DATA" | tail -1)
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
jnum() { sed -n "s/.*\"$1\":[[:space:]]*\([0-9.]*\).*/\1/p" <<< "$2" | head -1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

echo "synth $PRESET, $LAYERS layers, into $DATA" >&2
for role in base aligned finetuned; do
    [ -d "$DATA/$role" ] || "$NLSR" synth --preset "$PRESET" --layers "$LAYERS" --role "$role" \
        --seed 1 --out "$DATA/$role" -q
done
FT=$DATA/finetuned
"$NLSR" prepare --base "$DATA/base" --aligned "$DATA/aligned" --out "$DATA/p.nlsrp" --force -q
ckpt_bytes=$(cat "$FT"/*.safetensors | wc -c)
patch_bytes=$(stat -c %s "$DATA/p.nlsrp")

ROWS=""
# One command, REPS times, cold cache each time: seconds (min-max), nlsr's bytes written,
# the bytes the process wrote to storage.
timed() { # LABEL KIND(out|inplace|rollback) PREP COMMAND...: PREP runs before each rep
    local label=$1 kind=$2 prep=$3
    shift 3
    local tmin="" tmax="" nb=0 jb=- io=0
    for rep in $(seq "$REPS"); do
        eval "$prep"
        drop
        local out secs blk
        out=$(/usr/bin/time -f "%e %O" -o "$DATA/time.txt" "$@")
        secs=$(awk '{ print $1 }' "$DATA/time.txt")
        blk=$(awk '{ print $2 }' "$DATA/time.txt")
        io=$(( blk * 512 ))
        nb=$(jnum bytes_written "$out")
        if [ "$kind" = inplace ]; then
            local j
            j=$(jnum journal_bytes "$out")
            nb=$(( nb + j ))
            jb=$(mib "$j")
        fi
        tmin=$(awk -v a="${tmin:-$secs}" -v b="$secs" 'BEGIN { print (b < a ? b : a) }')
        tmax=$(awk -v a="${tmax:-$secs}" -v b="$secs" 'BEGIN { print (b > a ? b : a) }')
        echo "$label rep $rep: $secs s, nlsr wrote $(mib "${nb:-0}") MiB, process I/O $(mib "$io") MiB" >&2
    done
    ROWS="$ROWS| $label | $tmin - $tmax | $(mib "${nb:-0}") | $jb | $(mib "$io") |
"
}

same() { # DIR_A DIR_B: the checkpoint files are identical
    for f in "$1"/*; do cmp -s "$f" "$2/$(basename "$f")" || { echo "DIFFER: $f" >&2; return 1; }; done
}

# Every rep starts from the same state: no output folder, or a fresh copy to patch.
timed "apply --out" out 'rm -rf "$DATA/out"' \
    "$NLSR" apply --patches "$DATA/p.nlsrp" --finetuned "$FT" --out "$DATA/out" -q --json
timed "apply --in-place" inplace 'rm -rf "$DATA/ip"; cp -r "$FT" "$DATA/ip"' \
    "$NLSR" apply --patches "$DATA/p.nlsrp" --in-place "$DATA/ip" -q --json
same "$DATA/ip" "$DATA/out"
patched=$(jnum patched "$("$NLSR" apply --patches "$DATA/p.nlsrp" --in-place "$DATA/ip" --json 2>/dev/null)")
timed "rollback (undo the apply)" rollback \
    '"$NLSR" apply --patches "$DATA/p.nlsrp" --in-place "$DATA/ip" -q >/dev/null 2>&1' \
    "$NLSR" rollback "$DATA/ip" -q --json
same "$DATA/ip" "$FT"
# run --out against run --in-place: timed by `nlsr bench` (cold, a fresh copy of the fine-tune
# per in-place run, the copy not timed), rows in results/inplace-bench.csv; then once more,
# untimed, to check that both give the same bytes.
"$NLSR" bench --base "$DATA/base" --aligned "$DATA/aligned" --finetuned "$FT" \
    --jobs run,run-in-place --budgets 1G --io uring --reps "$REPS" --drop-caches --scratch "$DATA" \
    --csv "$here/results/inplace-bench.csv" --json "$here/results/inplace-bench.json" -q >&2
rm -rf "$DATA/out" "$DATA/ip"
"$NLSR" run --base "$DATA/base" --aligned "$DATA/aligned" --finetuned "$FT" --out "$DATA/out" -q
cp -r "$FT" "$DATA/ip"
"$NLSR" run --base "$DATA/base" --aligned "$DATA/aligned" --finetuned "$DATA/ip" --in-place -q >/dev/null
same "$DATA/ip" "$DATA/out"

{
    echo "# In place vs --out ($(date -u +%Y-%m-%d))"
    echo
    echo "Measured by \`bench/inplace.sh\` on a synthetic $PRESET triple with $LAYERS layers"
    echo "(\`nlsr synth\`, BF16, seed 1): $(mib "$ckpt_bytes") MiB of shards per checkpoint, patch file"
    echo "$(mib "$patch_bytes") MiB, $patched of the target modules patched (adaptive, seed 42)."
    echo "Cold cache (page cache dropped before each command). Machine: $(nproc) cores,"
    echo "$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, $(stat -f -c %T "$DATA") on $src, shared with other jobs."
    echo
    echo "| command | seconds ($REPS cold runs, min - max) | nlsr bytes written (MiB) | of which journal (MiB) | process storage writes (MiB) |"
    echo "| --- | --- | --- | --- | --- |"
    printf '%s' "$ROWS"
    echo
    echo "nlsr's figure counts what the job wrote (--out: the shard copies, side files and"
    echo "rewritten tensors; in place: the patched tensors' bytes plus the journal; run --in-place"
    echo "also writes its temporary patch file). run --out and run --in-place are timed by"
    echo "\`nlsr bench\` (results/inplace-bench.csv, .json; the in-place copy is not timed). The process"
    echo "column is GNU time's %O (the kernel's per-task storage write accounting) x 512. In place"
    echo "and --out gave identical files (cmp), and the rollback gave the fine-tune back. On a"
    echo "shared machine the spread between runs comes mostly from other jobs' I/O (and their cache"
    echo "drops); the byte counts do not vary."
} > "$OUTMD"
echo "wrote $OUTMD" >&2
