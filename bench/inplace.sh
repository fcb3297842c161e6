#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# run --in-place against run --out and against the disk, cold cache, on a synthetic triple
# (base, aligned, fine-tuned) in the scratch folder DIR:
#
#   bench/inplace.sh DIR [--nlsr PATH] [--preset llama-8b] [--layers 8] [--mem-budget 4G]
#                        [--reps 2] [--keep]
#
# Per rep (page cache dropped before each command, root needed): run --out into DIR/out,
# run --in-place on a fresh copy of the fine-tune (DIR/ip; the copy is not timed), and the
# disk's own rates measured in the same rep: direct reads (dd iflag=direct, 64 MiB blocks) of
# the base's shards, direct writes (dd oflag=direct conv=fsync) of 2 GiB. The minimal in-place
# I/O time is then: the three checkpoints' target-tensor bytes (nlsr inspect --json) at the
# direct-read rate + the bytes the in-place run wrote (patched bytes + journal) at the write
# rate. Ratios are computed within each rep. Checks that in place and --out give identical
# shards (sha256 of --out's, which is then deleted to make room for the copy). Writes
# bench/results/inplace.md (figures, load averages, commands).
#
# Disk: about 4 x the checkpoint (llama-8b, 8 layers: 5.3 GiB each, 21 GiB in all) under DIR;
# DIR is deleted afterwards unless --keep. Shared machines: run it when `uptime` is low.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
NLSR=${NLSR:-$here/../build/nlsr}
PRESET=llama-8b
LAYERS=8
BUDGET=4G
REPS=2
KEEP=0
[ $# -ge 1 ] && [ "${1#--}" = "$1" ] || { sed -n 3,18p "$0" >&2; exit 2; }
DATA=$1
shift
while [ $# -gt 0 ]; do
    case $1 in
    --nlsr) NLSR=$2; shift 2 ;;
    --preset) PRESET=$2; shift 2 ;;
    --layers) LAYERS=$2; shift 2 ;;
    --mem-budget) BUDGET=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ -x "$NLSR" ] || { echo "no nlsr at $NLSR (build first or pass --nlsr)" >&2; exit 2; }
[ -w /proc/sys/vm/drop_caches ] || { echo "needs root to drop caches" >&2; exit 2; }
mkdir -p "$DATA" "$here/results"
OUTMD=$here/results/inplace.md
cleanup() { [ "$KEEP" = 1 ] || rm -rf "$DATA"; }
trap cleanup EXIT

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
jnum() { sed -n "s/.*\"$1\":[[:space:]]*\([0-9.]*\).*/\1/p" <<< "$2" | head -1; }
gb() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1e9 }'; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

echo "synth $PRESET, $LAYERS layers, into $DATA ($(df -h --output=avail "$DATA" | tail -1) free)" >&2
for role in base aligned finetuned; do
    [ -d "$DATA/$role" ] || "$NLSR" synth --preset "$PRESET" --layers "$LAYERS" --role "$role" \
        --seed 1 --out "$DATA/$role" -q
done
FT=$DATA/finetuned
# Target-tensor bytes of a checkpoint (the rule of src/plan/targets.c: 2-D ".weight" tensors
# whose name holds a target module name).
target_bytes() {
    "$NLSR" inspect "$1" --json | python3 -c '
import json, sys
names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
d = json.load(sys.stdin)
print(sum(t["nbytes"] for t in d["tensors"]
          if len(t["shape"]) == 2 and t["name"].endswith(".weight")
          and any(n in t["name"] for n in names)))'
}
T3=0
for role in base aligned finetuned; do T3=$(( T3 + $(target_bytes "$DATA/$role") )); done
ckpt_bytes=$(cat "$FT"/*.safetensors | wc -c)
echo "target bytes of the three checkpoints: $(gb "$T3") GB; fine-tune shards $(gb "$ckpt_bytes") GB" >&2

ROWS=""
for rep in $(seq "$REPS"); do
    l0=$(load)
    # The disk's rates, this rep.
    drop
    t=$(now)
    for f in "$DATA"/base/*.safetensors; do dd if="$f" of=/dev/null bs=64M iflag=direct status=none; done
    rsecs=$(since "$t")
    rbytes=$(cat "$DATA"/base/*.safetensors | wc -c)
    rrate=$(awk -v b="$rbytes" -v s="$rsecs" 'BEGIN { printf "%.0f", b / s }')
    t=$(now)
    dd if=/dev/zero of="$DATA/ddw" bs=64M count=32 oflag=direct conv=fsync status=none
    wsecs=$(since "$t")
    rm -f "$DATA/ddw"
    wrate=$(awk -v s="$wsecs" 'BEGIN { printf "%.0f", 2147483648 / s }')

    rm -rf "$DATA/out"
    drop
    t=$(now)
    "$NLSR" run --base "$DATA/base" --aligned "$DATA/aligned" --finetuned "$FT" \
        --out "$DATA/out" --mem-budget "$BUDGET" -q --json >"$DATA/out.json"
    osecs=$(since "$t")
    # The output's checksums, then it goes: the disk need not hold it and the copy at once.
    (cd "$DATA/out" && sha256sum -- *.safetensors) >"$DATA/out.sha256"
    rm -rf "$DATA/out"

    rm -rf "$DATA/ip" "$DATA/ip.report.json"
    cp -r "$FT" "$DATA/ip"
    drop
    t=$(now)
    "$NLSR" run --base "$DATA/base" --aligned "$DATA/aligned" --finetuned "$DATA/ip" \
        --in-place --mem-budget "$BUDGET" --json --report "$DATA/ip.report.json" >"$DATA/ip.json" \
        2>"$DATA/ip.err"
    isecs=$(since "$t")
    l1=$(load)
    ipj=$(cat "$DATA/ip.json")
    # Phase seconds of both (similarities: phase A; output: phase B).
    pa_o=$(python3 -c 'import json,sys; print("%.1f / %.1f" % tuple(json.load(open(sys.argv[1]))["summary"]["phase_seconds"][k] for k in ("similarities", "output")))' "$DATA/out.json")
    pa_i=$(python3 -c 'import json,sys; print("%.1f / %.1f" % tuple(json.load(open(sys.argv[1]))["summary"]["phase_seconds"][k] for k in ("similarities", "output")))' "$DATA/ip.report.json")
    wb=$(jnum bytes_written "$ipj")
    jb=$(jnum journal_bytes "$ipj")
    pb=$(jnum patched_bytes "$ipj")
    (cd "$DATA/ip" && sha256sum --quiet -c "$DATA/out.sha256") ||
        { echo "in place and --out differ" >&2; exit 1; }
    rm -rf "$DATA/ip"
    minio=$(awk -v t="$T3" -v r="$rrate" -v w="$wb" -v j="$jb" -v wr="$wrate" \
        'BEGIN { printf "%.2f", t / r + (w + j) / wr }')
    r_out=$(awk -v a="$isecs" -v b="$osecs" 'BEGIN { printf "%.2f", a / b }')
    r_io=$(awk -v a="$isecs" -v b="$minio" 'BEGIN { printf "%.2f", a / b }')
    echo "rep $rep: run --out $osecs s, run --in-place $isecs s ($r_out x), minimal I/O $minio s ($r_io x); read $(gb "$rrate") GB/s, write $(gb "$wrate") GB/s; load $l0 -> $l1" >&2
    ROWS="$ROWS| $rep | $osecs ($pa_o) | $isecs ($pa_i) | $r_out | $(gb "$rrate") | $(gb "$wrate") | $minio | $r_io | $(gb "$wb") / $(gb "$jb") / $(gb "$pb") | $l0 / $l1 |
"
done
summary=$(tail -1 "$DATA/ip.err")

{
    echo "# run --in-place vs run --out and the disk ($(date -u +%Y-%m-%d))"
    echo
    echo "Measured by \`bench/inplace.sh $DATA --preset $PRESET --layers $LAYERS --mem-budget $BUDGET --reps $REPS\`"
    echo "on a synthetic $PRESET triple with $LAYERS layers (\`nlsr synth --preset $PRESET --layers $LAYERS"
    echo "--role base|aligned|finetuned --seed 1\`, BF16): $(gb "$ckpt_bytes") GB of shards per checkpoint,"
    echo "$(gb "$T3") GB of target tensors in the three together. Cold cache before every command"
    echo "(\`sync; echo 3 > /proc/sys/vm/drop_caches\`). Machine: $(nproc) cores,"
    echo "$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, $(stat -f -c %T "$DATA") on $(df --output=source "$DATA" | tail -1), shared with other engineers' builds."
    echo
    echo "| rep | run --out (s; phase A / B) | run --in-place (s; phase A / B) | in place / --out | direct read (GB/s) | direct write (GB/s) | minimal in-place I/O (s) | in place / minimal | written / journal / patched tensors (GB) | load before / after |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    printf '%s' "$ROWS"
    echo
    echo "Minimal in-place I/O = the three checkpoints' target bytes at the direct-read rate of"
    echo "\`dd iflag=direct bs=64M\` over the base's shards + (bytes written in place + journal) at"
    echo "the rate of \`dd oflag=direct conv=fsync bs=64M count=32\`, both measured in the same rep."
    echo "Targets: in place at most 0.75 x run --out, and at most 1.3 x the minimal I/O time."
    echo "In place and --out gave identical shards (sha256) in every rep."
    echo
    echo "The in-place summary line of the last rep:"
    echo
    echo '```'
    echo "$summary"
    echo '```'
} > "$OUTMD"
echo "wrote $OUTMD" >&2
