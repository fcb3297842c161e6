#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The cost of splitting one model (docs/SCALE.md): the same synthetic triple (shards of 10 MB)
# realigned by one `nlsr run`, by prepare + apply (the patch-file plan), split into N prepare
# parts + reduce + apply, the parts one after another (the work a cluster shares out) and two at
# a time (this machine's cores), and split as a run: N `run --part` maps + reduce (the selection
# once) + N `apply --shard` tasks + the commit, one after another. Outputs are compared byte
# for byte. Warm page cache: every variant reads inputs the previous one read.
# Usage: bench/split.sh SCRATCH [NLSR] [LAYERS] [PARTS]
set -euo pipefail
S=${1:?scratch folder}
NLSR=$(realpath "${2:-build/nlsr}")
LAYERS=${3:-512}
PARTS=${4:-8}
mkdir -p "$S"
cd "$S"
rm -rf base aligned finetuned single pa split rsplit parts whole.nlsrp merged.nlsrp run.nlsrp
for r in base aligned finetuned; do
    "$NLSR" synth -q --preset tiny --layers "$LAYERS" --role "$r" --shard-size 10M --out "$r"
done
now() { date +%s.%N; }
el() { python3 -c "print(f'{$2 - $1:.3f}')"; }
# One warm-up read of everything.
cat base/* aligned/* finetuned/* >/dev/null
t0=$(now)
"$NLSR" run -q --base base --aligned aligned --finetuned finetuned --out single
t1=$(now)
"$NLSR" prepare -q --base base --aligned aligned --out whole.nlsrp
tp=$(now)
"$NLSR" apply -q --patches whole.nlsrp --finetuned finetuned --out pa
t2=$(now)
mkdir parts
for ((i = 0; i < PARTS; i++)); do
    "$NLSR" prepare -q --base base --aligned aligned --part "$i/$PARTS" --out "parts/p$i.nlsrp"
done
t3=$(now)
"$NLSR" reduce -q --out merged.nlsrp parts/p*.nlsrp
t4=$(now)
"$NLSR" apply -q --patches merged.nlsrp --finetuned finetuned --out split
t5=$(now)
rm -rf parts merged.nlsrp split && mkdir parts
t6=$(now)
seq 0 $((PARTS - 1)) | xargs -P 2 -I{} "$NLSR" prepare -q --base base --aligned aligned \
    --part {}/"$PARTS" --out parts/p{}.nlsrp
t7=$(now)
"$NLSR" reduce -q --out merged.nlsrp parts/p*.nlsrp
"$NLSR" apply -q --patches merged.nlsrp --finetuned finetuned --out split
t8=$(now)
rm -rf parts && mkdir parts
t9=$(now)
for ((i = 0; i < PARTS; i++)); do
    "$NLSR" run -q --base base --aligned aligned --finetuned finetuned --part "$i/$PARTS" \
        --out "parts/r$i.nlsrp"
done
t10=$(now)
"$NLSR" reduce -q --out run.nlsrp parts/r*.nlsrp
t11=$(now)
for ((i = 0; i < PARTS; i++)); do
    "$NLSR" apply -q --patches run.nlsrp --finetuned finetuned --out rsplit --shard "$i/$PARTS"
done
t12=$(now)
"$NLSR" apply -q --patches run.nlsrp --finetuned finetuned --out rsplit --commit
t13=$(now)
cmp whole.nlsrp merged.nlsrp
for f in single/*.safetensors; do
    cmp "$f" "split/$(basename "$f")"; cmp "$f" "pa/$(basename "$f")"; cmp "$f" "rsplit/$(basename "$f")"
done
bytes=$(du -sb finetuned | cut -f1)
echo "model: tiny x $LAYERS layers, $bytes bytes per checkpoint, $PARTS parts, $(nproc) cores"
echo "run (single pass)                  $(el "$t0" "$t1") s"
echo "prepare + apply                    $(el "$t1" "$t2") s (prepare $(el "$t1" "$tp") s)"
echo "patch file                         $(stat -c %s whole.nlsrp) bytes"
echo "split: $PARTS parts in sequence    $(el "$t2" "$t3") s (sum of the map tasks)"
echo "split: reduce                      $(el "$t3" "$t4") s"
echo "split: apply                       $(el "$t4" "$t5") s"
echo "split: total, parts in sequence    $(el "$t2" "$t5") s"
echo "split: total, 2 parts at a time    $(el "$t6" "$t8") s (map wall $(el "$t6" "$t7") s)"
echo "run split: $PARTS run parts      $(el "$t9" "$t10") s (sum of the map tasks)"
echo "run split: reduce                  $(el "$t10" "$t11") s"
echo "run split: $PARTS apply shards     $(el "$t11" "$t12") s (sum of the shard tasks)"
echo "run split: commit                  $(el "$t12" "$t13") s"
echo "run split: total, in sequence      $(el "$t9" "$t13") s"
echo "outputs identical: yes; load average $(cut -d' ' -f1-3 /proc/loadavg)"
