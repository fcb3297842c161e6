#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# In place through the nlsr program: a store sweep (one line per checkpoint, the JSON summary,
# exit 5 when one failed, skips on a second pass), --dry-run, the exit statuses of a held lock
# (3) and of an interrupted journal (4), rollback, run's single pass (its key shared with apply,
# a kill at every write point), usage errors.
# usage: test_inplace_cli.sh NLSR_PROGRAM TESTS_DATA_DIR. Exit 0 pass, 1 fail.
set -u
NLSR=$1
FX=$2/hf-tiny-llama
BASE=/tmp
[ -w /dev/shm ] && BASE=/dev/shm # the runs fsync: a memory file system keeps the test fast
T=$(mktemp -d "$BASE/nlsr-test-inplace-cli-XXXXXX") || exit 1
fails=0
passes=0

check() { # NAME COMMAND...: counts a pass when the command succeeds
    name=$1
    shift
    if "$@"; then
        passes=$((passes + 1))
    else
        echo "FAIL $name" >&2
        fails=$((fails + 1))
    fi
}

same_ckpt() { # DIR_A DIR_B: the checkpoint files (not nlsr's dot files) are identical
    for f in "$1"/*; do cmp -s "$f" "$2/$(basename "$f")" || return 1; done
    [ "$(ls "$1" | wc -l)" -eq "$(ls "$2" | wc -l)" ]
}

fresh() { rm -rf "$1" && cp -r "$FX/finetuned" "$1"; }

"$NLSR" prepare --base "$FX/sft" --aligned "$FX/aligned" --out "$T/p.nlsrp" -q || exit 1
"$NLSR" apply --patches "$T/p.nlsrp" --finetuned "$FX/finetuned" --out "$T/ref" -q || exit 1

# A store of three fine-tunes: one fresh, one already realigned, one that cannot be patched.
fresh "$T/a"
fresh "$T/b"
fresh "$T/c"
"$NLSR" apply --patches "$T/p.nlsrp" --in-place "$T/b" -q >/dev/null || exit 1
printf 'garbage' >"$T/c/model-00002-of-00003.safetensors"
"$NLSR" apply --patches "$T/p.nlsrp" --in-place "$T/a" "$T/b" "$T/c" --json \
    >"$T/sweep.json" 2>"$T/sweep.err"
rc=$?
check sweep_exit test "$rc" -eq 5
check sweep_a same_ckpt "$T/a" "$T/ref"
check sweep_b same_ckpt "$T/b" "$T/ref"
check sweep_line_a grep -q "^$T/a: realigned: .* of 21 modules patched" "$T/sweep.err"
check sweep_line_b grep -q "^$T/b: already realigned" "$T/sweep.err"
check sweep_line_c grep -q "^$T/c: failed (exit 1): " "$T/sweep.err"
check sweep_json_total grep -q '"summary": {"total": 3, "failed": 1, "realigned": 1, "already": 1, "exit": 5}' "$T/sweep.json"
check sweep_json_c grep -q "\"path\": \"$T/c\", \"status\": \"failed\", \"exit\": 1" "$T/sweep.json"
if command -v python3 >/dev/null; then
    check sweep_json_valid python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$T/sweep.json"
fi

# The cron rerun skips the done ones and exits 0 when all succeed; lines go to stdout.
"$NLSR" apply --patches "$T/p.nlsrp" --in-place "$T/a" "$T/b" >"$T/rerun.out" 2>"$T/rerun.err"
check rerun_exit test $? -eq 0
check rerun_lines test "$(grep -c 'already realigned' "$T/rerun.out")" -eq 2

# --dry-run: says what it would do, writes nothing (not even the lock file).
fresh "$T/d"
"$NLSR" apply --patches "$T/p.nlsrp" --in-place --dry-run "$T/d" "$T/a" >"$T/dry.out" 2>&1
check dry_exit test $? -eq 0
check dry_line_d grep -q "^$T/d: would realign: up to [0-9]* bytes in 21 target tensors" "$T/dry.out"
check dry_line_a grep -q "^$T/a: would skip: already realigned" "$T/dry.out"
check dry_nothing same_ckpt "$T/d" "$FX/finetuned"
check dry_no_files test -z "$(ls -A "$T/d" | grep '^\.')"

# A held lock: exit 3 and one line naming it.
if command -v flock >/dev/null; then
    flock "$T/d" sleep 3 &
    holder=$!
    sleep 0.3
    "$NLSR" apply --patches "$T/p.nlsrp" --in-place "$T/d" >/dev/null 2>"$T/lock.err"
    check lock_exit test $? -eq 3
    check lock_msg grep -q "locked by another nlsr run" "$T/lock.err"
    check lock_unchanged same_ckpt "$T/d" "$FX/finetuned"
    "$NLSR" apply --patches "$T/p.nlsrp" --in-place --wait -q "$T/d" >/dev/null 2>&1
    check lock_wait test $? -eq 0
    check lock_wait_done same_ckpt "$T/d" "$T/ref"
    wait "$holder"
fi

# Killed halfway (the test switch, builds with -DNLSR_TEST_HOOKS=ON only): exit 4 until
# rolled back; rollback restores the original.
if [ "${NLSR_HOOKS:-ON}" = ON ]; then
fresh "$T/e"
NLSR_TEST_KILL_AFTER_WRITES=20 "$NLSR" apply --patches "$T/p.nlsrp" --in-place "$T/e" -q \
    >/dev/null 2>&1
check killed test $? -eq 137
"$NLSR" apply --patches "$T/p.nlsrp" --in-place "$T/e" >/dev/null 2>"$T/int.err"
check interrupted_exit test $? -eq 4
check interrupted_msg grep -q "nlsr rollback $T/e" "$T/int.err"
"$NLSR" apply --patches "$T/p.nlsrp" --finetuned "$T/e" --out "$T/e_out" 2>/dev/null
check interrupted_out_exit test $? -eq 4
check interrupted_out_nothing test ! -e "$T/e_out"
"$NLSR" rollback "$T/e" >"$T/rb.out" 2>&1
check rollback_exit test $? -eq 0
check rollback_line grep -q "^$T/e: rolled back: [0-9]* ranges" "$T/rb.out"
check rollback_bytes same_ckpt "$T/e" "$FX/finetuned"
"$NLSR" rollback "$T/e" --json >"$T/rb.json" 2>/dev/null
check rollback_nothing grep -q '"status": "nothing"' "$T/rb.json"
else
    echo "skipped the kill halfway (a build without -DNLSR_TEST_HOOKS=ON)"
fi

# run in place, then undo the finished realignment on request.
fresh "$T/f"
"$NLSR" run --base "$FX/sft" --aligned "$FX/aligned" --finetuned "$T/f" --in-place -q >/dev/null
check run_exit test $? -eq 0
check run_bytes same_ckpt "$T/f" "$T/ref"
"$NLSR" rollback "$T/f" -q >/dev/null
check run_undo same_ckpt "$T/f" "$FX/finetuned"

# run in place is one pass (no patch file) and shares its key with apply: apply after run, and
# run after apply, do nothing. The summary compares the bytes written with the patched tensors.
fresh "$T/g"
"$NLSR" run --base "$FX/sft" --aligned "$FX/aligned" --finetuned "$T/g" --in-place \
    >"$T/g.out" 2>&1
check single_line grep -q "bytes written in place (of [0-9]* in the patched tensors)" "$T/g.out"
check single_no_patch_file grep -Eq '"patch_fingerprint":[[:space:]]*null' "$T/g/.nlsr-state.json"
"$NLSR" apply --patches "$T/p.nlsrp" --in-place "$T/g" >"$T/g2.out" 2>&1
check apply_after_run grep -q "already realigned" "$T/g2.out"
fresh "$T/g"
"$NLSR" apply --patches "$T/p.nlsrp" --in-place "$T/g" -q >/dev/null 2>&1
"$NLSR" run --base "$FX/sft" --aligned "$FX/aligned" --finetuned "$T/g" --in-place \
    >"$T/g3.out" 2>&1
check run_after_apply grep -q "already realigned" "$T/g3.out"

# run in place killed at every write point (the test switch): exit 4 until rolled back, the
# rollback gives the fine-tune back, and a fresh run then --out's bytes.
fresh "$T/k"
n=$(NLSR_TEST_KILL_AFTER_WRITES=1000000 "$NLSR" run --base "$FX/sft" --aligned "$FX/aligned" \
    --finetuned "$T/k" --in-place -v 2>&1 >/dev/null | sed -n 's/^nlsr: test: \([0-9]*\) write points$/\1/p')
check kill_points test "${n:-0}" -gt 10
i=1
kfail=0
while [ "$i" -le "${n:-0}" ]; do
    fresh "$T/k"
    NLSR_TEST_KILL_AFTER_WRITES=$i "$NLSR" run --base "$FX/sft" --aligned "$FX/aligned" \
        --finetuned "$T/k" --in-place -q >/dev/null 2>&1
    st=$?
    if [ "$st" -ne 137 ]; then echo "point $i: exit $st, not killed" >&2; kfail=1; fi
    if [ -e "$T/k/.nlsr-journal" ]; then
        "$NLSR" run --base "$FX/sft" --aligned "$FX/aligned" --finetuned "$T/k" --in-place -q \
            >/dev/null 2>&1
        st=$?
        # a complete journal (killed after the end) is a finished realignment: exit 0
        if [ "$st" -ne 4 ] && [ "$st" -ne 0 ]; then echo "point $i: rerun exit $st" >&2; kfail=1; fi
    fi
    "$NLSR" rollback "$T/k" -q >/dev/null 2>&1 || { echo "point $i: rollback failed" >&2; kfail=1; }
    same_ckpt "$T/k" "$FX/finetuned" || { echo "point $i: not restored" >&2; kfail=1; }
    "$NLSR" run --base "$FX/sft" --aligned "$FX/aligned" --finetuned "$T/k" --in-place -q \
        >/dev/null 2>&1
    same_ckpt "$T/k" "$T/ref" || { echo "point $i: rerun differs" >&2; kfail=1; }
    i=$((i + 1))
done
check kill_every_point test "$kfail" -eq 0

# Usage errors: exit 2.
"$NLSR" apply --in-place "$T/f" 2>/dev/null
check usage_no_patches test $? -eq 2
"$NLSR" run --base "$FX/sft" --aligned "$FX/aligned" --finetuned "$T/f" --in-place \
    --out "$T/x" 2>/dev/null
check usage_out test $? -eq 2
"$NLSR" apply --patches "$T/p.nlsrp" --finetuned "$T/f" --out "$T/x" --dry-run 2>/dev/null
check usage_dry test $? -eq 2
"$NLSR" rollback 2>/dev/null
check usage_rollback test $? -eq 2

echo "$passes passed, $fails failed"
if [ "$fails" -eq 0 ]; then rm -rf "$T"; else echo "outputs kept in $T" >&2; fi
[ "$fails" -eq 0 ]
