#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A run-based split job (docs/SCALE.md): `run --part I/N` maps, `reduce` (the selection made
# once, recorded in the patch file), `apply --shard I/M` tasks and `apply --commit` give one
# `nlsr run`'s folder byte for byte and its selection; a shard task reads and checks only the
# patched modules of its own shards, so a fine-tune changed after the reduce is refused by the
# task that reads the change, naming the module; parts missing, given twice, of another
# fine-tune or of another kind are refused by name. No scheduler needed.
# Usage: test_split_run_cli.sh NLSR [DATA_DIR]
set -uo pipefail
. "$(dirname "$(realpath "$0")")/split_lib.sh"
NLSR=$(realpath "$1")
T=$(mktemp -d "${TMPDIR:-/tmp}/nlsr-split-run.XXXXXX")
trap 'rm -rf "$T"' EXIT
cd "$T"
# The selection of a report: every module's name, similarity, probability, draw and decision.
selection() {
    python3 -c 'import json,sys
for m in json.load(open(sys.argv[1]))["modules"]:
    print(m["name"], m["similarity"], m.get("probability"), m.get("draw"), m["patched"])' "$1"
}
# run --part I/N for every I (in reverse order), then the reduce: RUN.nlsrp.
map_reduce() { # N OUT [run options...]
    local n=$1 out=$2
    shift 2
    rm -f part-*.nlsrp
    for ((i = n - 1; i >= 0; i--)); do
        "$NLSR" run -q --base base --aligned aligned --finetuned finetuned --part "$i/$n" \
            --out "part-$i.nlsrp" "$@" || fail "run --part $i/$n"
    done
    "$NLSR" reduce -q --out "$out" part-*.nlsrp || fail "reduce of $n run parts"
}

# A synthetic triple: 28 target modules, a fine-tune of 10 shards.
for r in base aligned finetuned; do
    "$NLSR" synth -q --preset tiny --layers 4 --role $r --shard-size 100K --out $r || fail "synth $r"
done
S=$(ls finetuned/*.safetensors | wc -l)
[ "$S" -ge 8 ] || fail "the fixture has $S shards, the test wants several"
"$NLSR" run -q --base base --aligned aligned --finetuned finetuned --out one --report one.json ||
    fail run
selection one.json >one.sel
grep -q ' True$' one.sel && grep -q ' False$' one.sel ||
    fail "the fixture's selection patches all modules or none: $(cat one.sel)"

# 1. N run parts (1, 3, one per module) -> reduce -> M shard tasks (1, 4, more than shards)
# -> commit: one run's folder, byte for byte, and its report's selection and similarities.
for n in 1 3 28; do
    map_reduce $n "R$n.nlsrp"
    for m in 1 4 $((S + 3)); do
        for ((i = 0; i < m; i++)); do
            "$NLSR" apply -q --patches "R$n.nlsrp" --finetuned finetuned --out "o$n-$m" \
                --shard "$i/$m" || fail "apply --shard $i/$m of R$n.nlsrp"
        done
        "$NLSR" apply -q --patches "R$n.nlsrp" --finetuned finetuned --out "o$n-$m" --commit \
            --report "o$n-$m.json" || fail "commit of $m tasks of R$n.nlsrp"
        cmpdir one "o$n-$m" || fail "$n run parts, $m shard tasks and the commit differ from run"
        selection "o$n-$m.json" >sel.txt
        cmp -s one.sel sel.txt || fail "the selection of $n parts and $m tasks differs: $(diff one.sel sel.txt)"
    done
done
# Whole apply and apply --in-place take the recorded selection too.
"$NLSR" apply -q --patches R3.nlsrp --finetuned finetuned --out whole --report whole.json ||
    fail "apply of R3.nlsrp"
cmpdir one whole || fail "apply of the reduced file differs from run"
selection whole.json | cmp -s one.sel - || fail "apply's selection differs from run's"
cp -r finetuned ip
"$NLSR" apply -q --patches R3.nlsrp --in-place ip || fail "apply --in-place of R3.nlsrp"
for f in one/*.safetensors; do cmp -s "$f" "ip/$(basename "$f")" || fail "in place: $f differs"; done
# The same seed semantics as run: a job's --seed is the maps'; apply takes it from the file and
# refuses another.
map_reduce 3 R7.nlsrp --seed 7
"$NLSR" run -q --base base --aligned aligned --finetuned finetuned --out one7 --seed 7 ||
    fail "run --seed 7"
"$NLSR" apply -q --patches R7.nlsrp --finetuned finetuned --out a7 || fail "apply of R7.nlsrp"
cmpdir one7 a7 || fail "run parts with --seed 7 differ from run --seed 7"
expect 2 'holds the selection nlsr reduce made \(seed 7\)' \
    "$NLSR" apply --patches R7.nlsrp --finetuned finetuned --out x --seed 9
# The blocks are the prepare's: a reduce of prepare parts is still one prepare's bytes.
"$NLSR" prepare -q --base base --aligned aligned --out P.nlsrp || fail prepare
for i in 0 1 2; do
    "$NLSR" prepare -q --base base --aligned aligned --part "$i/3" --out "q$i.nlsrp" ||
        fail "prepare --part $i/3"
done
"$NLSR" reduce -q --out Q.nlsrp q0.nlsrp q1.nlsrp q2.nlsrp || fail "reduce of prepare parts"
cmp -s P.nlsrp Q.nlsrp || fail "a reduce of prepare parts is no longer prepare's bytes"
# A requeued map finds its part and keeps it.
map_reduce 3 R3b.nlsrp
expect 0 'part 1/3 is already there and verifies; kept' "$NLSR" run --base base \
    --aligned aligned --finetuned finetuned --part 1/3 --out part-1.nlsrp
cmp -s R3.nlsrp R3b.nlsrp || fail "two reduces of one job's run parts differ"
# A prepare part, or a run part of other selection options, at the path is not taken for it.
cp q1.nlsrp part-1.nlsrp
"$NLSR" run -q --base base --aligned aligned --finetuned finetuned --part 1/3 \
    --out part-1.nlsrp --force || fail "run --part over a prepare part"
"$NLSR" reduce -q --out R3d.nlsrp part-*.nlsrp || fail "reduce after the redone part"
cmp -s R3.nlsrp R3d.nlsrp || fail "the redone run part differs"
"$NLSR" run --base base --aligned aligned --finetuned finetuned --part 1/3 \
    --out part-1.nlsrp --force --seed 3 2>err.txt || fail "run --part --seed 3 over a part"
grep -q 'kept' err.txt && fail "a part of other selection options was kept: $(cat err.txt)"
"$NLSR" reduce -q --out R3e.nlsrp part-0.nlsrp part-1.nlsrp part-2.nlsrp 2>err.txt &&
    fail "a reduce took a part of other selection options"

# 2. A fine-tune changed after the reduce: one byte of a patched module. The shard task that
# writes that module refuses, naming it; a task whose shards hold no changed module does not
# read it and succeeds.
cp -r finetuned ftc
python3 - ftc one.json >changed.txt <<'PY' || fail "changing the fine-tune"
import json, struct, sys
d, rep = sys.argv[1], json.load(open(sys.argv[2]))
patched = [m["name"] for m in rep["modules"] if m["patched"]]
wm = json.load(open(d + "/model.safetensors.index.json"))["weight_map"]
name = patched[0]
f = d + "/" + wm[name]
with open(f, "r+b") as fh:
    n = struct.unpack("<Q", fh.read(8))[0]
    h = json.loads(fh.read(n))
    off = 8 + n + h[name]["data_offsets"][0]
    fh.seek(off)
    b = fh.read(1)
    fh.seek(off)
    fh.write(bytes([b[0] ^ 0x01]))
shards = sorted(set(wm.values()))
print(name, shards.index(wm[name]))
PY
read -r mod k <changed.txt
# With S tasks, task k writes shard k alone.
expect 1 "module '$mod' is not the one whose similarity R3.nlsrp records" \
    "$NLSR" apply --patches R3.nlsrp --finetuned ftc --out c --shard "$k/$S"
other=$(( (k + 1) % S ))
"$NLSR" apply -q --patches R3.nlsrp --finetuned ftc --out c2 --shard "$other/$S" ||
    fail "a shard task of a shard the change is not in failed"
expect 1 "module '$mod' is not the one" \
    "$NLSR" apply --patches R3.nlsrp --finetuned ftc --out c3
[ -e c3 ] && fail "a refused apply wrote c3"
cp -r ftc ipc
expect 1 "module '$mod' is not the one" "$NLSR" apply --patches R3.nlsrp --in-place ipc
for f in ftc/*.safetensors; do cmp -s "$f" "ipc/$(basename "$f")" || fail "a refused in-place apply changed $f"; done

# 3. Parts refused by name: missing, given twice, of another kind (a prepare part), of another
# fine-tune, of other selection options.
map_reduce 3 R3c.nlsrp
expect 2 'missing part 1' "$NLSR" reduce --out x.nlsrp part-0.nlsrp part-2.nlsrp
expect 2 'part 1/3 is given twice: part-1.nlsrp and part-1.nlsrp' \
    "$NLSR" reduce --out x.nlsrp part-0.nlsrp part-1.nlsrp part-1.nlsrp part-2.nlsrp
expect 1 'part-0.nlsrp is a part of run --part .* but q1.nlsrp a part of prepare --part' \
    "$NLSR" reduce --out x.nlsrp part-0.nlsrp q1.nlsrp part-2.nlsrp
"$NLSR" run -q --base base --aligned aligned --finetuned ftc --part 1/3 --out f1.nlsrp ||
    fail "run --part of another fine-tune"
expect 1 'part-0.nlsrp and f1.nlsrp are parts of different jobs: they differ in their fine-tune' \
    "$NLSR" reduce --out x.nlsrp part-0.nlsrp f1.nlsrp part-2.nlsrp
"$NLSR" run -q --base base --aligned aligned --finetuned finetuned --part 1/3 --seed 5 \
    --out s1.nlsrp || fail "run --part --seed 5"
expect 1 'they differ in their selection options' \
    "$NLSR" reduce --out x.nlsrp part-0.nlsrp s1.nlsrp part-2.nlsrp
[ -e x.nlsrp ] && fail "a refused reduce wrote x.nlsrp"

# 4. nlsr slurm split --map run: the map array runs run --part, the reduce selects once, the
# apply is a shard array and a commit; the scripts run as they are without Slurm (one task at a
# time, in any order): one run's bytes.
"$NLSR" slurm split --dir jobs --map run --base base --aligned aligned --finetuned finetuned \
    --out "$T/sl" --parts 3 --apply-tasks 4 --prepare-opts '--seed 7' >/dev/null ||
    fail "slurm split --map run"
[ -e jobs/prepare.sbatch ] && fail "--map run wrote a prepare array"
grep -q -- " run --base '$T/base' --aligned '$T/aligned' --finetuned '$T/finetuned'" jobs/run.sbatch ||
    fail "run.sbatch: $(cat jobs/run.sbatch)"
grep -q -- '--part "$SLURM_ARRAY_TASK_ID/3"' jobs/run.sbatch || fail "run.sbatch's task index"
grep -q -- '--seed 7' jobs/run.sbatch || fail "the map options are not the run's"
[ "$(sed -n 's/^j0=.*--parsable \([a-z]*.sbatch\))$/\1/p' jobs/submit.sh)" = run.sbatch ] ||
    fail "submit.sh does not start with run.sbatch: $(cat jobs/submit.sh)"
[ "$(grep -c 'dependency=afterok' jobs/submit.sh)" = 3 ] || fail "submit.sh: $(cat jobs/submit.sh)"
for i in 2 0 1; do SLURM_ARRAY_TASK_ID=$i bash jobs/run.sbatch 2>/dev/null || fail "run task $i"; done
bash jobs/reduce.sbatch 2>/dev/null || fail reduce.sbatch
for i in 3 1 0 2; do
    SLURM_ARRAY_TASK_ID=$i bash jobs/apply.sbatch >/dev/null 2>&1 || fail "apply task $i"
done
bash jobs/commit.sbatch >/dev/null 2>&1 || fail commit.sbatch
cmpdir one7 sl || fail "the --map run scripts' output differs from run --seed 7"
expect 2 '--map takes prepare or run' "$NLSR" slurm split --dir j --map reduce
expect 2 'apply-tasks is split.s, and so is --map' "$NLSR" slurm sweep --dir sj \
    --patches R3.nlsrp --out-root x --map run finetuned

expect 2 'run --part writes a part file' "$NLSR" run --base base --aligned aligned \
    --finetuned finetuned --part 0/3 --in-place
echo "split run: all checks passed"
