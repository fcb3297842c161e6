#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Split jobs without a scheduler (docs/SCALE.md): what a user of `prepare --part`, `reduce`,
# `sweep --task` and `slurm` relies on.
# Usage: test_split_cli.sh NLSR DATA_DIR [HOOKS]
set -uo pipefail
. "$(dirname "$(realpath "$0")")/split_lib.sh"
NLSR=$(realpath "$1")
DATA=$(realpath "$2")
# tests/data or its hf-tiny-llama folder; NLSR_HOOKS=ON (ctest sets it) when nlsr has test points
[ -d "$DATA/hf-tiny-llama" ] && DATA=$DATA/hf-tiny-llama
HOOKS=${NLSR_HOOKS:-${3:-OFF}}
T=$(mktemp -d "${TMPDIR:-/tmp}/nlsr-split.XXXXXX")
trap 'rm -rf "$T"' EXIT
cd "$T"

SFT=$DATA/sft
AL=$DATA/aligned
"$NLSR" prepare -q --base "$SFT" --aligned "$AL" --out whole.nlsrp || fail prepare

# 1. Any cut, any order of the parts on the command line: the bytes of one prepare. The
# fixture has 21 modules: 1 part, 2 (uneven), 5, and one part per module.
for n in 1 2 5 21; do
    parts=()
    for ((i = n - 1; i >= 0; i--)); do
        "$NLSR" prepare -q --base "$SFT" --aligned "$AL" --part "$i/$n" --out "p$n-$i.nlsrp" ||
            fail "prepare --part $i/$n"
        parts+=("p$n-$i.nlsrp")
    done
    "$NLSR" reduce -q --out "m$n.nlsrp" "${parts[@]}" || fail "reduce of $n parts"
    cmp whole.nlsrp "m$n.nlsrp" || fail "reduce of $n parts differs from one prepare"
done
# --task is --part; a scorer other than magnitude reduces as exactly.
"$NLSR" prepare -q --base "$SFT" --aligned "$AL" --sparsity 0.7 --beta 0.5 --out w7.nlsrp || fail prepare
for i in 0 1 2; do
    "$NLSR" prepare -q --base "$SFT" --aligned "$AL" --sparsity 0.7 --beta 0.5 --task "$i/3" \
        --out "s7-$i.nlsrp" || fail "prepare --task"
done
"$NLSR" reduce -q --out m7.nlsrp s7-0.nlsrp s7-1.nlsrp s7-2.nlsrp || fail "reduce 0.7"
cmp w7.nlsrp m7.nlsrp || fail "reduce with other parameters differs"
# The merged file applies like the whole one.
"$NLSR" apply -q --patches whole.nlsrp --finetuned "$DATA/finetuned" --out a1 || fail apply
"$NLSR" apply -q --patches m5.nlsrp --finetuned "$DATA/finetuned" --out a2 || fail apply
cmpdir a1 a2 || fail "apply of the merged file differs"

# 2. What reduce refuses, naming the parts.
expect 2 'has 5 parts and 4 were given \(missing part 3\)' \
    "$NLSR" reduce --out x.nlsrp p5-0.nlsrp p5-1.nlsrp p5-2.nlsrp p5-4.nlsrp
expect 2 'part 1/5 is given twice: p5-1.nlsrp and p5-1.nlsrp' \
    "$NLSR" reduce --out x.nlsrp p5-0.nlsrp p5-1.nlsrp p5-1.nlsrp p5-3.nlsrp p5-4.nlsrp
expect 1 'p5-0.nlsrp and s7-1.nlsrp are parts of different jobs: they differ in their part count' \
    "$NLSR" reduce --out x.nlsrp p5-0.nlsrp s7-1.nlsrp
for i in 0 1 2; do
    "$NLSR" prepare -q --base "$SFT" --aligned "$AL" --part "$i/3" --out "q3-$i.nlsrp" || fail prepare
done
expect 1 'q3-0.nlsrp and s7-1.nlsrp are parts of different jobs: they differ in their parameters' \
    "$NLSR" reduce --out x.nlsrp q3-0.nlsrp s7-1.nlsrp q3-2.nlsrp
# Another aligned model (the fine-tune, as if it were one): other inputs.
"$NLSR" prepare -q --base "$SFT" --aligned "$DATA/finetuned" --part 1/3 --out o3-1.nlsrp || fail prepare
expect 1 'q3-0.nlsrp and o3-1.nlsrp are parts of different jobs: they differ in their inputs' \
    "$NLSR" reduce --out x.nlsrp q3-0.nlsrp o3-1.nlsrp q3-2.nlsrp
expect 2 'whole.nlsrp is not a part of a split prepare' "$NLSR" reduce --out x.nlsrp whole.nlsrp
# A damaged part: its block checksum names it.
cp q3-1.nlsrp bad-1.nlsrp
printf '\x55' | dd of=bad-1.nlsrp bs=1 seek=100 conv=notrunc status=none
expect 1 'bad-1.nlsrp' "$NLSR" reduce --out x.nlsrp q3-0.nlsrp bad-1.nlsrp q3-2.nlsrp
[ -e x.nlsrp ] && fail "a refused reduce left an output"
ls | grep -q 'x.nlsrp.nlsr-tmp' && fail "a refused reduce left a temporary file"
# The output may not be one of its parts, nor replace a file without --force.
expect 2 'q3-0.nlsrp' "$NLSR" reduce --force --out q3-0.nlsrp q3-0.nlsrp q3-1.nlsrp q3-2.nlsrp
cp whole.nlsrp keep.nlsrp
expect 1 'keep.nlsrp: exists' "$NLSR" reduce --out keep.nlsrp q3-0.nlsrp q3-1.nlsrp q3-2.nlsrp
cmp whole.nlsrp keep.nlsrp || fail "a refused reduce changed an existing file"

# 3. prepare --part: usage, and what a repeated task finds.
expect 2 'takes I/N' "$NLSR" prepare --base "$SFT" --aligned "$AL" --part 3/3 --out y.nlsrp
expect 2 'takes I/N' "$NLSR" prepare --base "$SFT" --aligned "$AL" --part 1 --out y.nlsrp
expect 2 '22 parts for 21 modules' "$NLSR" prepare --base "$SFT" --aligned "$AL" --part 0/22 --out y.nlsrp
expect 2 'PEFT adapter' "$NLSR" prepare --aligned "$DATA/lora_align" --part 0/2 --out y.nlsrp
before=$(stat -c %Y.%i q3-1.nlsrp)
expect 0 'already there and verifies' "$NLSR" prepare --base "$SFT" --aligned "$AL" --part 1/3 --out q3-1.nlsrp
[ "$(stat -c %Y.%i q3-1.nlsrp)" = "$before" ] || fail "a verified part was rewritten"
# A damaged part at the output is not taken for finished (nor silently replaced).
cp bad-1.nlsrp q3b-1.nlsrp
expect 1 'exists' "$NLSR" prepare --base "$SFT" --aligned "$AL" --part 1/3 --out q3b-1.nlsrp
"$NLSR" prepare -q --force --base "$SFT" --aligned "$AL" --part 1/3 --out q3b-1.nlsrp || fail "--force"
cmp q3-1.nlsrp q3b-1.nlsrp || fail "the redone part differs"
if [ "$HOOKS" = ON ]; then
    # Stopped after its first module and sent SIGTERM: exit 143, no file, no temporary file.
    NLSR_TEST_STOP_AT=module "$NLSR" prepare -q --base "$SFT" --aligned "$AL" --part 0/2 \
        --out int-0.nlsrp 2>int.err &
    pid=$!
    for i in $(seq 100); do grep -q '^State:.*T' /proc/$pid/status 2>/dev/null && break; sleep 0.05; done
    grep -q '^State:.*T' /proc/$pid/status || fail "prepare did not stop at its test point"
    kill -TERM $pid
    kill -CONT $pid
    wait $pid
    st=$?
    [ "$st" = 143 ] || fail "an interrupted part exited $st, not 143: $(cat int.err)"
    grep -q 'interrupted by SIGTERM' int.err || fail "no SIGTERM line: $(cat int.err)"
    ls | grep -q '^int-0' && fail "an interrupted part left $(ls | grep int-0)"
fi

# 4. A sweep as tasks, driven by xargs -P (any driver that hands out indexes).
mkdir store
cp -r "$DATA/finetuned" "$DATA/finetuned_f16" "$DATA/finetuned_f32" store/
for d in store/*; do
    "$NLSR" apply -q --patches whole.nlsrp --finetuned "$d" --out "seq/$(basename "$d")" || fail apply
done
printf '%s\n' 0 1 2 | xargs -P 2 -I{} "$NLSR" sweep -q --patches whole.nlsrp --out-root swept \
    --task {}/3 store/finetuned store/finetuned_f16 store/finetuned_f32 || fail "sweep tasks"
for d in finetuned finetuned_f16 finetuned_f32; do
    cmpdir "seq/$d" "swept/$d" || fail "sweep $d differs"
done
# Fewer tasks than checkpoints: task 0 of 2 takes the first, task 1 the other two.
"$NLSR" sweep --patches whole.nlsrp --out-root swept2 --task 1/2 --json store/* >sum.json 2>err.txt ||
    fail "sweep 1/2: $(cat err.txt)"
python3 - sum.json <<'PY' || fail "summary of task 1/2: $(cat sum.json)"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["task"] == [1, 2], s["task"]
assert [c["state"] for c in s["checkpoints"]] == ["pending", "done", "done"], s
PY
# A repeated task skips verified outputs; a changed one is redone, and comes out the same.
expect 0 'finetuned_f16: verified' "$NLSR" sweep --patches whole.nlsrp --out-root swept --task 1/3 store/*
printf '\x00' | dd of=swept/finetuned_f32/model-00001-of-00002.safetensors bs=1 seek=5000 conv=notrunc status=none
expect 0 'finetuned_f32: done' "$NLSR" sweep --patches whole.nlsrp --out-root swept --task 2/3 store/*
cmpdir seq/finetuned_f32 swept/finetuned_f32 || fail "redone output differs"
# Status: each checkpoint's state, from what is on disk (a leftover temporary output is
# "partial"); exit 5 while any is not done.
rm -rf swept/finetuned
mkdir swept/finetuned.nlsr-tmp-abc123
"$NLSR" sweep --patches whole.nlsrp --out-root swept --status --summary status.json store/* 2>err.txt
st=$?
[ "$st" = 5 ] || fail "status with a missing output exited $st, not 5"
python3 - status.json <<'PY' || fail "status summary: $(cat status.json)"
import json, sys
s = json.load(open(sys.argv[1]))
assert [c["state"] for c in s["checkpoints"]] == ["partial", "done", "done"], s
PY
rmdir swept/finetuned.nlsr-tmp-abc123
expect 2 'would both be written to' "$NLSR" sweep --patches whole.nlsrp --out-root z store/finetuned a1/../store/finetuned
expect 2 'takes I/N' "$NLSR" sweep --patches whole.nlsrp --out-root z --task 3/3 store/*
# In place: the folder's own state file makes a repeated task a no-op.
cp -r store inplace
expect 0 'realigned' "$NLSR" sweep --patches whole.nlsrp --in-place --task 0/3 inplace/*
expect 0 'already' "$NLSR" sweep --patches whole.nlsrp --in-place --task 0/3 inplace/*
for f in seq/finetuned/*.safetensors; do cmp "$f" "inplace/finetuned/$(basename "$f")"; done || fail "in-place sweep differs"

# 5. The scripts: arrays, the task index, dependencies, memory from the budget.
"$NLSR" slurm split --dir jobs --base "$SFT" --aligned "$AL" --finetuned "$DATA/finetuned" \
    --out "$T/split_out" --parts 4 --concurrency 2 --mem-budget 2G --time 1:00:00 \
    --partition gpu --prepare-opts '--sparsity 0.7' --apply-opts '--seed 7' >o.txt || fail "slurm split"
grep -qx "$T/jobs/submit.sh" o.txt || fail "slurm split did not print the submit script: $(cat o.txt)"
grep -qx '#SBATCH --array=0-3%2' jobs/prepare.sbatch || fail "array line: $(cat jobs/prepare.sbatch)"
grep -q -- '--part "$SLURM_ARRAY_TASK_ID/4"' jobs/prepare.sbatch || fail "task index"
grep -q -- '--sparsity 0.7' jobs/prepare.sbatch || fail "prepare options"
grep -q -- '--seed 7' jobs/apply.sbatch || fail "apply options"
grep -qx '#SBATCH --mem=2560M' jobs/prepare.sbatch || fail "memory: $(grep mem jobs/prepare.sbatch)"
grep -qx '#SBATCH --partition=gpu' jobs/reduce.sbatch || fail partition
grep -qx '#SBATCH --time=1:00:00' jobs/apply.sbatch || fail time
grep -q 'dependency=afterok' jobs/submit.sh || fail "submit.sh has no dependency"
# The scripts run as they are without Slurm, one task at a time.
for i in 0 1 2 3; do SLURM_ARRAY_TASK_ID=$i bash jobs/prepare.sbatch 2>/dev/null || fail "task $i"; done
bash jobs/reduce.sbatch 2>/dev/null || fail reduce.sbatch
bash jobs/apply.sbatch >/dev/null 2>&1 || fail apply.sbatch
"$NLSR" run -q --base "$SFT" --aligned "$AL" --finetuned "$DATA/finetuned" --sparsity 0.7 --seed 7 \
    --out single || fail run
cmpdir single split_out || fail "the scripts' output differs from run's"
# A requeued reduce or apply (SLURM_RESTART_COUNT set) replaces what its first attempt
# committed; a first attempt never replaces what was there before the job.
bash jobs/reduce.sbatch 2>/dev/null && fail "a first reduce replaced an existing file"
SLURM_RESTART_COUNT=1 bash jobs/reduce.sbatch 2>/dev/null || fail "requeued reduce.sbatch"
SLURM_RESTART_COUNT=1 bash jobs/apply.sbatch >/dev/null 2>&1 || fail "requeued apply.sbatch"
cmpdir single split_out || fail "the requeued apply's output differs"
# --apply-tasks M: the apply as an array of M shard tasks, then the commit (afterok each).
"$NLSR" slurm split --dir jobs2 --base "$SFT" --aligned "$AL" --finetuned "$DATA/finetuned" \
    --out "$T/split_out2" --parts 2 --apply-tasks 3 --apply-opts '--seed 7' >/dev/null ||
    fail "slurm split --apply-tasks"
grep -qx '#SBATCH --array=0-2' jobs2/apply.sbatch || fail "apply array: $(cat jobs2/apply.sbatch)"
[ "$(grep -c 'dependency=afterok' jobs2/submit.sh)" = 3 ] || fail "submit.sh: $(cat jobs2/submit.sh)"
grep -q 'commit.sbatch' jobs2/submit.sh || fail "submit.sh submits no commit"
for i in 0 1; do SLURM_ARRAY_TASK_ID=$i bash jobs2/prepare.sbatch 2>/dev/null || fail "task $i"; done
bash jobs2/reduce.sbatch 2>/dev/null || fail "reduce.sbatch (2)"
for i in 2 0 1; do
    SLURM_ARRAY_TASK_ID=$i bash jobs2/apply.sbatch >/dev/null 2>&1 || fail "apply task $i"
done
bash jobs2/commit.sbatch >/dev/null 2>&1 || fail commit.sbatch
"$NLSR" run -q --base "$SFT" --aligned "$AL" --finetuned "$DATA/finetuned" --seed 7 --out single7 ||
    fail run
cmpdir single7 split_out2 || fail "the shard tasks' output differs from run's"
expect 2 'apply-tasks is split' "$NLSR" slurm sweep --dir sj --patches whole.nlsrp --out-root x \
    --apply-tasks 2 store/*
"$NLSR" slurm sweep --dir sj --patches whole.nlsrp --out-root "$T/sw" --concurrency 2 store/* >/dev/null ||
    fail "slurm sweep"
grep -qx '#SBATCH --array=0-2%2' sj/sweep.sbatch || fail "sweep array: $(cat sj/sweep.sbatch)"
grep -q 'dependency=afterany' sj/submit.sh || fail "the summary does not wait for the array"
# reduce, sweep and slurm read their options through the one table parser: --name=VALUE as
# every command, the same refusals.
"$NLSR" reduce -q --out=m5eq.nlsrp p5-0.nlsrp p5-1.nlsrp p5-2.nlsrp p5-3.nlsrp p5-4.nlsrp ||
    fail "reduce --out=FILE"
cmp whole.nlsrp m5eq.nlsrp || fail "reduce --out=FILE differs"
"$NLSR" sweep -q --patches=whole.nlsrp --out-root="$T/sweq" --task=0/3 --seed=7 store/* ||
    fail "sweep --name=VALUE"
"$NLSR" apply -q --patches whole.nlsrp --finetuned store/finetuned --seed 7 --out a7 || fail apply
cmpdir a7 "$T/sweq/finetuned" || fail "sweep --seed=7 is not apply --seed 7"
"$NLSR" slurm split --dir=jobs3 --base="$SFT" --aligned="$AL" --finetuned="$DATA/finetuned" \
    --out="$T/split_out3" --parts=2 --apply-tasks=3 --concurrency=2 --cpus=4 --mem-budget=2G >/dev/null ||
    fail "slurm split --name=VALUE"
grep -qx '#SBATCH --array=0-2%2' jobs3/apply.sbatch || fail "apply array (=): $(cat jobs3/apply.sbatch)"
grep -qx '#SBATCH --cpus-per-task=4' jobs3/prepare.sbatch || fail "cpus (=)"
grep -qx '#SBATCH --mem=2560M' jobs3/prepare.sbatch || fail "memory (=)"
expect 2 "reduce: unknown option '--bogus'" "$NLSR" reduce --bogus --out x.nlsrp p5-0.nlsrp
expect 2 "sweep does not take --beta" "$NLSR" sweep --patches whole.nlsrp --out-root x --beta 0.5 store/*
expect 2 '--parts needs a whole number of at least 1' "$NLSR" slurm split --dir j4 --parts=0
expect 2 'mem-budget needs a size' "$NLSR" slurm split --dir j4 --base "$SFT" --aligned "$AL" \
    --finetuned "$DATA/finetuned" --out x --parts 2 --mem-budget auto
"$NLSR" reduce --help | grep -q -- '--force' || fail "reduce --help lists no options"
expect 2 'needs --dir' "$NLSR" slurm sweep --patches whole.nlsrp --out-root x store/*
expect 2 'job kind' "$NLSR" slurm nothing
echo ok
