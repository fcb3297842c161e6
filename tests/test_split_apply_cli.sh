#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# apply of one model split by output shard (docs/SCALE.md): `apply --shard I/N` tasks and
# `apply --commit` give one apply's folder byte for byte, whatever N and the order the tasks run
# in; what a requeued, repeated or stopped task and the commit do. No scheduler needed.
# Usage: test_split_apply_cli.sh NLSR [DATA_DIR] [HOOKS]
set -uo pipefail
. "$(dirname "$(realpath "$0")")/split_lib.sh"
NLSR=$(realpath "$1")
HOOKS=${NLSR_HOOKS:-${3:-OFF}}
T=$(mktemp -d "${TMPDIR:-/tmp}/nlsr-split-apply.XXXXXX")
trap 'rm -rf "$T"' EXIT
cd "$T"

# A synthetic triple whose fine-tune has 10 shards (tiny preset, 4 layers, 100 KiB shards).
for r in base aligned finetuned; do
    "$NLSR" synth -q --preset tiny --layers 4 --role $r --shard-size 100K --out $r || fail "synth $r"
done
S=$(ls finetuned/*.safetensors | wc -l)
[ "$S" -ge 8 ] || fail "the fixture has $S shards, the test wants several"
"$NLSR" prepare -q --base base --aligned aligned --out P.nlsrp || fail prepare
"$NLSR" apply -q --patches P.nlsrp --finetuned finetuned --out one --report one.json || fail apply
"$NLSR" run -q --base base --aligned aligned --finetuned finetuned --out onerun || fail run
cmpdir one onerun || fail "the reference apply and run differ"

# 1. Any task count (1, uneven, one per shard, more tasks than shards), tasks in any order: the
# folder one apply writes. With more tasks than shards, those without a shard say so.
for n in 1 3 $S $((S + 5)); do
    for ((i = n - 1; i >= 0; i--)); do
        "$NLSR" apply -q --patches P.nlsrp --finetuned finetuned --out "o$n" --shard "$i/$n" ||
            fail "apply --shard $i/$n"
    done
    [ -e "o$n" ] && fail "a shard task put o$n in place before the commit"
    ls -d "o$n".nlsr-split-* >/dev/null || fail "no shared folder beside o$n"
    "$NLSR" apply -q --patches P.nlsrp --finetuned finetuned --out "o$n" --commit \
        --report "o$n.json" || fail "commit of $n tasks"
    cmpdir one "o$n" || fail "$n shard tasks + commit differ from one apply"
    ls -d "o$n".nlsr-* 2>/dev/null && fail "the commit of $n tasks left $(ls -d o$n.nlsr-*)"
    # The commit's report holds the tasks' selection: the same modules and similarities.
    for f in one.json "o$n.json"; do
        python3 -c 'import json,sys; print([(m["name"],m["similarity"],m["patched"]) for m in json.load(open(sys.argv[1]))["modules"]])' "$f"
    done >sel.txt
    [ "$(sed -n 1p sel.txt)" = "$(sed -n 2p sel.txt)" ] || fail "the commit's report differs: $(cat sel.txt)"
done
expect 0 "task 0/$((S + 5)): finetuned has $S shards, none is this task.s" \
    "$NLSR" apply --patches P.nlsrp --finetuned finetuned --out o-none --task "0/$((S + 5))"
expect 2 'shard task 3 of 3 does not exist|--task' \
    "$NLSR" apply --patches P.nlsrp --finetuned finetuned --out x --task 3/3
expect 2 'one at a time' "$NLSR" apply --patches P.nlsrp --finetuned finetuned --out x \
    --shard 0/2 --commit

# 2. The commit refuses missing shards (named), and the folder stays for the missing tasks.
"$NLSR" apply -q --patches P.nlsrp --finetuned finetuned --out m --shard 0/3 || fail "task 0/3"
"$NLSR" apply -q --patches P.nlsrp --finetuned finetuned --out m --shard 2/3 || fail "task 2/3"
expect 1 'shards missing or not verifying \(model-00004-of-00010.safetensors' \
    "$NLSR" apply --patches P.nlsrp --finetuned finetuned --out m --commit
[ -e m ] && fail "a refused commit put m in place"
# No shared folder at all: nothing ran.
expect 1 'missing \(no shard task of this job has started\)' \
    "$NLSR" apply --patches P.nlsrp --finetuned finetuned --out nothing --commit

# 3. A requeued task keeps its verified shards (not rewritten); a damaged shard is redone.
"$NLSR" apply -q --patches P.nlsrp --finetuned finetuned --out m --shard 1/3 || fail "task 1/3"
sh=$(ls -d m.nlsr-split-*)
before=$(stat -c %Y.%i "$sh/model-00004-of-00010.safetensors")
expect 0 'task 1/3: its 3 shards in .* verify; kept' \
    "$NLSR" apply --patches P.nlsrp --finetuned finetuned --out m --shard 1/3
[ "$(stat -c %Y.%i "$sh/model-00004-of-00010.safetensors")" = "$before" ] ||
    fail "a verified shard was rewritten"
printf '\x55' | dd of="$sh/model-00005-of-00010.safetensors" bs=1 seek=300 conv=notrunc status=none
expect 1 'not verifying \(model-00005-of-00010.safetensors\)' \
    "$NLSR" apply --patches P.nlsrp --finetuned finetuned --out m --commit
"$NLSR" apply -q --patches P.nlsrp --finetuned finetuned --out m --shard 1/3 || fail "task 1/3 again"
[ "$(stat -c %Y.%i "$sh/model-00004-of-00010.safetensors")" = "$before" ] ||
    fail "the requeued task rewrote a verified shard beside the damaged one"
# A weight file that is no shard of the fine-tune (another job's, a copy) is refused.
cp "$sh/model-00001-of-00010.safetensors" "$sh/model-00001-of-00010 (copy).safetensors"
expect 1 'a weight file that is no shard of finetuned' \
    "$NLSR" apply --patches P.nlsrp --finetuned finetuned --out m --commit
rm "$sh/model-00001-of-00010 (copy).safetensors"
# Tasks that selected differently (another seed: not the same job) are refused, not mixed.
"$NLSR" apply -q --patches P.nlsrp --finetuned finetuned --out sd --shard 0/2 || fail "task 0/2"
expect 1 'another task of this job selected other modules' \
    "$NLSR" apply --patches P.nlsrp --finetuned finetuned --out sd --shard 1/2 --seed 7
"$NLSR" apply -q --patches P.nlsrp --finetuned finetuned --out m --commit || fail "commit m"
cmpdir one m || fail "the repaired job differs from one apply"
# What sits at the output is apply's policy: not replaced without --force.
"$NLSR" apply -q --patches P.nlsrp --finetuned finetuned --out m --shard 0/1 --force || fail "task --force"
expect 1 'exists' "$NLSR" apply --patches P.nlsrp --finetuned finetuned --out m --commit
"$NLSR" apply -q --patches P.nlsrp --finetuned finetuned --out m --commit --force || fail "commit --force"
cmpdir one m || fail "the forced commit differs"

# 4. A task stopped by SIGTERM after writing its shards, before publishing them: exit 143,
# no shard and no temporary folder left; the next run of the task completes the job.
if [ "$HOOKS" = ON ]; then
    NLSR_TEST_STOP_AT=shard "$NLSR" apply -q --patches P.nlsrp --finetuned finetuned --out k \
        --shard 0/2 2>int.err &
    pid=$!
    for i in $(seq 200); do grep -q '^State:.*T' /proc/$pid/status 2>/dev/null && break; sleep 0.05; done
    grep -q '^State:.*T' /proc/$pid/status || fail "the shard task did not stop at its test point"
    kill -TERM $pid
    kill -CONT $pid
    wait $pid
    st=$?
    [ "$st" = 143 ] || fail "an interrupted shard task exited $st, not 143: $(cat int.err)"
    sk=$(ls -d k.nlsr-split-*)
    left=$(ls -A "$sk" | grep -v '^\.nlsr-output$' | grep -v '^\.nlsr-selection.json$')
    [ -z "$left" ] || fail "an interrupted shard task left: $left"
    "$NLSR" apply -q --patches P.nlsrp --finetuned finetuned --out k --shard 1/2 || fail "task 1/2"
    expect 1 'shards missing' "$NLSR" apply --patches P.nlsrp --finetuned finetuned --out k --commit
    "$NLSR" apply -q --patches P.nlsrp --finetuned finetuned --out k --shard 0/2 || fail "task 0/2 again"
    "$NLSR" apply -q --patches P.nlsrp --finetuned finetuned --out k --commit || fail "commit k"
    cmpdir one k || fail "the job resumed after SIGTERM differs"
    # SIGKILL (a lost task): its marked temporary folder stays; the commit (or the next task)
    # removes it once its owner is gone, then names the shards that task never published.
    NLSR_TEST_STOP_AT=shard "$NLSR" apply -q --patches P.nlsrp --finetuned finetuned --out kk \
        --shard 0/2 2>/dev/null &
    pid=$!
    for i in $(seq 200); do grep -q '^State:.*T' /proc/$pid/status 2>/dev/null && break; sleep 0.05; done
    kill -KILL $pid
    wait $pid 2>/dev/null
    skk=$(ls -d kk.nlsr-split-*)
    ls -A "$skk" | grep -q '^\.nlsr-task\.nlsr-tmp-' || fail "a killed task left no temporary folder"
    expect 1 'shards missing' "$NLSR" apply --patches P.nlsrp --finetuned finetuned --out kk --commit
    grep -q 'removed .*nlsr-task.nlsr-tmp-.*died' err.txt || fail "the dead task's folder: $(cat err.txt)"
    ls -A "$skk" | grep -q 'nlsr-tmp' && fail "the dead task's folder is still there"
    "$NLSR" apply -q --patches P.nlsrp --finetuned finetuned --out kk --shard 1/2 || fail "task 1/2 (kk)"
    "$NLSR" apply -q --patches P.nlsrp --finetuned finetuned --out kk --shard 0/2 || fail "task 0/2 (kk)"
    "$NLSR" apply -q --patches P.nlsrp --finetuned finetuned --out kk --commit || fail "commit kk"
    cmpdir one kk || fail "the job resumed after SIGKILL differs"
fi

# 5. Tasks run together (xargs -P, any driver that hands out indexes): one apply's folder.
printf '%s\n' 0 1 2 3 | xargs -P 4 -I{} "$NLSR" apply -q --patches P.nlsrp --finetuned finetuned \
    --out par --shard {}/4 || fail "parallel tasks"
"$NLSR" apply -q --patches P.nlsrp --finetuned finetuned --out par --commit || fail "commit par"
cmpdir one par || fail "parallel tasks differ"
echo "ok"
