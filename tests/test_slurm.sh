#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Split jobs through a real Slurm (docs/SCALE.md): a one-node cluster on localhost (munged,
# slurmctld, slurmd from Debian's slurmctld/slurmd/munge, run in the foreground of this script
# with their own slurm.conf in a temporary folder; no systemd, no cgroups), then
#  1. a store sweep of six fine-tunes (the fixtures' BF16, F16 and F32 fine-tunes and three
#     synthetic ones) as an array with %2 concurrency, bit-identical to sequential applies;
#  2. one synthetic model split into 4 prepare parts + reduce + apply through sbatch with
#     dependencies, bit-identical to one `nlsr run`, while one part is stopped mid-way, sent
#     SIGTERM by Slurm (scontrol requeue) and run again;
#  3. a synthetic model of 10 shards split into 3 prepare parts + reduce + an array of 4
#     `apply --shard` tasks + the commit (slurm split --apply-tasks), bit-identical to one run;
#  4. the same model as 3 `run --part` maps + the reduce that selects once + 4 shard tasks +
#     the commit (slurm split --map run), bit-identical to one run.
# Exit 77 (skipped) only where Slurm is not installed and cannot be, or will not start here.
# Usage: test_slurm.sh NLSR DATA_DIR [HOOKS]   (HOOKS=ON: nlsr has test points, so part 2 can
# be stopped mid-way; without them the requeue step is left out)
set -uo pipefail
NLSR=$(realpath "$1")
DATA=$(realpath "$2")
# tests/data or its hf-tiny-llama folder; NLSR_HOOKS=ON (ctest sets it) when nlsr has test points
[ -d "$DATA/hf-tiny-llama" ] && DATA=$DATA/hf-tiny-llama
HOOKS=${NLSR_HOOKS:-${3:-OFF}}
skip() { echo "SKIP: $*"; exit 77; }
# On failure: the daemons' and the jobs' last log lines.
fail() {
    echo "FAIL: $*"
    if [ -n "${T:-}" ]; then
        for f in "$T"/ctld.log "$T"/d.log "$T"/jobs/*/logs/*.out; do
            [ -f "$f" ] && { echo "== $f"; tail -n 12 "$f"; }
        done
    fi
    exit 1
}

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd munge >/dev/null 2>&1 ||
            skip "Slurm is not installed and apt-get install slurmctld slurmd munge failed"
    else
        skip "Slurm is not installed (apt-get install slurmctld slurmd munge, as root)"
    fi
fi
[ "$(id -u)" = 0 ] || skip "starting slurmd needs root here"

T=$(mktemp -d "${TMPDIR:-/tmp}/nlsr-slurm.XXXXXX")
PIDS=()
cleanup() {
    # Only the daemons this script started, by their ids.
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT

# ---- the cluster ------------------------------------------------------------------------------
HOST=$(hostname -s)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P1=$(port); P2=$(port)
MEM=$(awk '/MemTotal/ {print int($2/1024) - 512}' /proc/meminfo)
mkdir -p "$T/state" "$T/spool" "$T/munge"
chmod 755 "$T/munge"
head -c 1024 /dev/urandom >"$T/munge/munge.key"
chmod 400 "$T/munge/munge.key"
munged --force --key-file="$T/munge/munge.key" --socket="$T/munge/munge.sock" \
       --pid-file="$T/munge/munged.pid" --log-file="$T/munge/munged.log" \
       --seed-file="$T/munge/munged.seed" --foreground >"$T/munge/munged.out" 2>&1 &
PIDS+=($!)
cat >"$T/slurm.conf" <<EOF
ClusterName=nlsrtest
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$P1
SlurmdPort=$P2
AuthType=auth/munge
AuthInfo=socket=$T/munge/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/ctld.pid
SlurmdPidFile=$T/d.pid
SlurmctldLogFile=$T/ctld.log
SlurmdLogFile=$T/d.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=600
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=4 RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$T/slurm.conf"
for i in $(seq 50); do [ -S "$T/munge/munge.sock" ] && break; sleep 0.1; done
[ -S "$T/munge/munge.sock" ] || skip "munged did not start here: $(tail -n 3 "$T/munge/munged.log" 2>/dev/null)"
slurmctld -D -i -f "$SLURM_CONF" >"$T/ctld.out" 2>&1 &
PIDS+=($!)
slurmd -D -f "$SLURM_CONF" -N "$HOST" >"$T/d.out" 2>&1 &
PIDS+=($!)
up=0
for i in $(seq 100); do
    if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then up=1; break; fi
    sleep 0.2
done
[ "$up" = 1 ] || skip "slurmctld/slurmd did not come up here: $(tail -n 3 "$T/ctld.log" "$T/d.log" 2>/dev/null | tr '\n' ' ')"
echo "cluster up: $(sinfo -h -o '%P %D %t %c')"

# Waits until none of the given jobs (and their array tasks) is pending or running.
wait_jobs() {
    for i in $(seq 600); do
        [ -z "$(squeue -h -j "$(IFS=,; echo "$*")" 2>/dev/null)" ] && return 0
        sleep 0.2
    done
    squeue
    fail "jobs $* did not finish in 120 s"
}
# "COMPLETED" for every task of a job (sacct needs accounting; scontrol keeps finished jobs
# for MinJobAge seconds).
states() { scontrol show job "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | sort | uniq -c | tr '\n' ' '; }
all_completed() {
    local s
    s=$(states "$1")
    [ -n "$s" ] && ! grep -qv 'JobState=COMPLETED' <<<"$(scontrol show job "$1" | grep -o 'JobState=[A-Z_]*')" ||
        fail "job $1 did not complete: $s"
}

cd "$T"
# ---- 1. a sweep -------------------------------------------------------------------------------
mkdir store
cp -r "$DATA/finetuned" "$DATA/finetuned_f16" "$DATA/finetuned_f32" store/
"$NLSR" prepare -q --base "$DATA/sft" --aligned "$DATA/aligned" --out fixture.nlsrp || fail "prepare"
# Three synthetic fine-tunes of one synthetic triple (another patch file: a second sweep).
"$NLSR" synth -q --preset tiny --layers 4 --role base --out syn/base || fail synth
"$NLSR" synth -q --preset tiny --layers 4 --role aligned --out syn/aligned || fail synth
for s in 1 2 3; do
    "$NLSR" synth -q --preset tiny --layers 4 --role finetuned --seed "$s" --out "synstore/ft$s" || fail synth
done
"$NLSR" prepare -q --base syn/base --aligned syn/aligned --out syn.nlsrp || fail "prepare syn"
# The sequential reference: one apply per fine-tune.
for d in store/*; do
    "$NLSR" apply -q --patches fixture.nlsrp --finetuned "$d" --out "seq/$(basename "$d")" || fail "apply $d"
done
for d in synstore/*; do
    "$NLSR" apply -q --patches syn.nlsrp --finetuned "$d" --out "seqsyn/$(basename "$d")" || fail "apply $d"
done
"$NLSR" slurm sweep --dir jobs/sweep --patches fixture.nlsrp --out-root swept --concurrency 2 \
    --cpus 1 --mem-budget 256M --submit store/finetuned store/finetuned_f16 store/finetuned_f32 \
    >sweep.ids || fail "slurm sweep --submit"
"$NLSR" slurm sweep --dir jobs/syn --patches syn.nlsrp --out-root swept_syn --concurrency 2 \
    --cpus 1 --mem-budget 256M --submit synstore/ft1 synstore/ft2 synstore/ft3 \
    >syn.ids || fail "slurm sweep --submit (synthetic)"
grep -q '^#SBATCH --array=0-2%2$' jobs/sweep/sweep.sbatch || fail "no array line 0-2%2: $(cat jobs/sweep/sweep.sbatch)"
grep -q 'SLURM_ARRAY_TASK_ID/3' jobs/sweep/sweep.sbatch || fail "the tasks do not read SLURM_ARRAY_TASK_ID"
S1=$(awk '$1 == "sweep.sbatch" {print $2}' sweep.ids)
S2=$(awk '$1 == "summary.sbatch" {print $2}' sweep.ids)
S3=$(awk '$1 == "sweep.sbatch" {print $2}' syn.ids)
S4=$(awk '$1 == "summary.sbatch" {print $2}' syn.ids)
[ -n "$S1" ] && [ -n "$S2" ] && [ -n "$S3" ] && [ -n "$S4" ] || fail "job ids: $(cat sweep.ids syn.ids)"
scontrol show job "$S2" | grep -q "Dependency=afterany:${S1}" || fail "summary is not after the array"

# ---- 2. one model split in 4 parts ------------------------------------------------------------
"$NLSR" synth -q --preset tiny --layers 8 --role base --out big/base || fail synth
"$NLSR" synth -q --preset tiny --layers 8 --role aligned --out big/aligned || fail synth
"$NLSR" synth -q --preset tiny --layers 8 --role finetuned --out big/finetuned || fail synth
"$NLSR" run -q --base big/base --aligned big/aligned --finetuned big/finetuned --out single ||
    fail "single run"
# Part 2 stops itself after its first module on its first attempt (a test point), so that it
# is caught mid-way; the requeued attempt runs through.
cat >wrap.sh <<EOF
#!/bin/sh
if [ "$HOOKS" = ON ] && [ "\${SLURM_ARRAY_TASK_ID:-}" = 2 ] && [ "\${SLURM_RESTART_COUNT:-0}" = 0 ]; then
    echo \$\$ >"$T/part2.pid"
    export NLSR_TEST_STOP_AT=module
fi
exec "$NLSR" "\$@"
EOF
chmod +x wrap.sh
"$NLSR" slurm split --dir jobs/split --base big/base --aligned big/aligned \
    --finetuned big/finetuned --out split_out --parts 4 --concurrency 4 --cpus 1 \
    --mem-budget 256M --nlsr "$T/wrap.sh" --submit >split.ids || fail "slurm split --submit"
M=$(awk '$1 == "prepare.sbatch" {print $2}' split.ids)
R=$(awk '$1 == "reduce.sbatch" {print $2}' split.ids)
A=$(awk '$1 == "apply.sbatch" {print $2}' split.ids)
[ -n "$M" ] && [ -n "$R" ] && [ -n "$A" ] || fail "job ids: $(cat split.ids)"
scontrol show job "$R" | grep -q "Dependency=afterok:${M}" || fail "reduce is not afterok the map array"
scontrol show job "$A" | grep -q "Dependency=afterok:${R}" || fail "apply is not afterok the reduce"

# Part 2, stopped mid-way: Slurm requeues it (SIGCONT + SIGTERM to the task).
if [ "$HOOKS" = ON ]; then
for i in $(seq 300); do
    if [ -f part2.pid ] && grep -q '^State:.*T' "/proc/$(cat part2.pid)/status" 2>/dev/null; then break; fi
    sleep 0.2
done
grep -q '^State:.*T' "/proc/$(cat part2.pid 2>/dev/null || echo 0)/status" 2>/dev/null ||
    fail "part 2 did not stop at its test point"
ls jobs/split/parts/ | grep -q 'part-2.nlsrp.nlsr-tmp-' || fail "part 2 has no temporary file mid-way"
scontrol requeue "${M}_2" || fail "scontrol requeue ${M}_2"
# A requeued job may not start before its credentials expire (2 minutes by default); this test
# lets it start as soon as it is pending again (up to a minute: on a loaded machine the
# requeued job takes a while to be pending again).
for i in $(seq 300); do
    scontrol show job "${M}_2" | grep -q 'JobState=PENDING' &&
        scontrol update jobid="${M}_2" StartTime=now >/dev/null 2>&1 && break
    sleep 0.2
done
fi

# ---- 3. the apply as an array by output shard, then its commit --------------------------------
# Submitted once part 2's requeue is under way, so that its jobs do not hold the node's CPUs
# while the requeued part waits to start again.
for r in base aligned finetuned; do
    "$NLSR" synth -q --preset tiny --layers 4 --role $r --shard-size 100K --out "sh/$r" || fail synth
done
"$NLSR" run -q --base sh/base --aligned sh/aligned --finetuned sh/finetuned --out shsingle ||
    fail "single run (sharded)"
"$NLSR" slurm split --dir jobs/shards --base sh/base --aligned sh/aligned \
    --finetuned sh/finetuned --out shard_out --parts 3 --apply-tasks 4 --concurrency 4 --cpus 1 \
    --mem-budget 256M --submit >shard.ids || fail "slurm split --apply-tasks --submit"
P2=$(awk '$1 == "prepare.sbatch" {print $2}' shard.ids)
R2=$(awk '$1 == "reduce.sbatch" {print $2}' shard.ids)
A2=$(awk '$1 == "apply.sbatch" {print $2}' shard.ids)
C2=$(awk '$1 == "commit.sbatch" {print $2}' shard.ids)
[ -n "$P2" ] && [ -n "$R2" ] && [ -n "$A2" ] && [ -n "$C2" ] || fail "job ids: $(cat shard.ids)"
grep -q '^#SBATCH --array=0-3%4$' jobs/shards/apply.sbatch || fail "no apply array: $(cat jobs/shards/apply.sbatch)"
grep -q -- '--shard "$SLURM_ARRAY_TASK_ID/4"' jobs/shards/apply.sbatch || fail "apply tasks"
grep -q -- '--commit' jobs/shards/commit.sbatch || fail "no commit: $(cat jobs/shards/commit.sbatch)"
scontrol show job "$A2" | grep -q "Dependency=afterok:${R2}" || fail "apply tasks are not afterok the reduce"
scontrol show job "$C2" | grep -q "Dependency=afterok:${A2}" || fail "the commit is not afterok the apply tasks"

# ---- 4. the run-based pipeline: run --part maps, the reduce selects once, shard tasks, commit --
"$NLSR" slurm split --dir jobs/runmap --map run --base sh/base --aligned sh/aligned \
    --finetuned sh/finetuned --out run_out --parts 3 --apply-tasks 4 --concurrency 4 --cpus 1 \
    --mem-budget 256M --submit >run.ids || fail "slurm split --map run --submit"
P3=$(awk '$1 == "run.sbatch" {print $2}' run.ids)
R3=$(awk '$1 == "reduce.sbatch" {print $2}' run.ids)
A3=$(awk '$1 == "apply.sbatch" {print $2}' run.ids)
C3=$(awk '$1 == "commit.sbatch" {print $2}' run.ids)
[ -n "$P3" ] && [ -n "$R3" ] && [ -n "$A3" ] && [ -n "$C3" ] || fail "job ids: $(cat run.ids)"
scontrol show job "$R3" | grep -q "Dependency=afterok:${P3}" || fail "the reduce is not afterok the run parts"
scontrol show job "$C3" | grep -q "Dependency=afterok:${A3}" || fail "the commit is not afterok the apply tasks"

wait_jobs "$S1" "$S2" "$S3" "$S4" "$M" "$R" "$A" "$P2" "$R2" "$A2" "$C2" "$P3" "$R3" "$A3" "$C3"
for j in "$S1" "$S3" "$M" "$R" "$A" "$P2" "$R2" "$A2" "$C2" "$P3" "$R3" "$A3" "$C3"; do
    all_completed "$j"
done

# The sweep: the same bytes as the sequential applies, and a summary naming each state.
for d in finetuned finetuned_f16 finetuned_f32; do
    for f in seq/$d/*.safetensors; do cmp "$f" "swept/$d/$(basename "$f")" || fail "sweep $d differs"; done
done
for d in ft1 ft2 ft3; do
    for f in seqsyn/$d/*.safetensors; do cmp "$f" "swept_syn/$d/$(basename "$f")" || fail "sweep $d differs"; done
done
python3 - swept/sweep-summary.json <<'PY' || fail "sweep summary"
import json, sys
s = json.load(open(sys.argv[1]))
states = [c["state"] for c in s["checkpoints"]]
assert states == ["done"] * 3, states
PY
# The split: part 2 was interrupted by SIGTERM (exit 143) and left no temporary file; the
# output is the single run's, byte for byte.
if [ "$HOOKS" = ON ]; then
    # Slurm cancels the step for the requeue with SIGTERM; on a loaded machine the cancel can
    # come before nlsr has written anything, and then the log shows only Slurm's own line.
    # Either way no temporary part may be left (checked below) and the output must not change.
    grep -Eq 'interrupted by SIGTERM|CANCELLED AT .* DUE TO JOB REQUEUE' \
        jobs/split/logs/prepare-"${M}"_2.out ||
        fail "part 2's log shows no SIGTERM: $(cat jobs/split/logs/prepare-"${M}"_2.out)"
    grep -q 'Restarts=1' <<<"$(scontrol show job "${M}_2")" || fail "part 2 was not requeued"
fi
ls jobs/split/parts/ | grep -q 'nlsr-tmp' && fail "a temporary part was left: $(ls jobs/split/parts)"
n=0
for f in single/*; do
    cmp "$f" "split_out/$(basename "$f")" || fail "split output $(basename "$f") differs"
    n=$((n + 1))
done
[ "$n" -gt 0 ] || fail "the single run wrote nothing"
# The reduce's patch file is the one prepare writes.
"$NLSR" prepare -q --base big/base --aligned big/aligned --out whole.nlsrp || fail prepare
cmp whole.nlsrp jobs/split/patches.nlsrp || fail "reduced patch file differs from one prepare's"

# The apply by output shard: the single run's folder, byte for byte, and nothing left beside it.
[ "$(cd shsingle && ls)" = "$(cd shard_out && ls)" ] || fail "shard_out lists other files than one run"
for f in shsingle/*; do
    cmp "$f" "shard_out/$(basename "$f")" || fail "apply --shard output $(basename "$f") differs"
done
ls -d shard_out.nlsr-* 2>/dev/null && fail "the commit left $(ls -d shard_out.nlsr-*)"
# The run-based pipeline: the same folder, byte for byte.
[ "$(cd shsingle && ls)" = "$(cd run_out && ls)" ] || fail "run_out lists other files than one run"
for f in shsingle/*; do
    cmp "$f" "run_out/$(basename "$f")" || fail "--map run output $(basename "$f") differs"
done
ls -d run_out.nlsr-* 2>/dev/null && fail "the --map run commit left $(ls -d run_out.nlsr-*)"

# A repeated task finds its finished output and leaves it.
"$NLSR" sweep --patches fixture.nlsrp --out-root swept --task 1/3 store/* 2>&1 | grep -q 'verified' ||
    fail "a repeated sweep task did not skip its verified output"
echo "ok: sweep of 6, split of 1 into 4, 3 parts + 4 apply tasks + commit, and 3 run parts +"\
     "4 apply tasks + commit through Slurm, bit-identical, with a requeue"
