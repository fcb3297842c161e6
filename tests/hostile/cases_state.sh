# SPDX-License-Identifier: Apache-2.0
# Rule: rollback with a damaged .nlsr-state.json after a finished in-place realignment either
# restores everything (exit 0, journal gone) or refuses up front changing nothing; never bytes
# restored with exit 1 and the journal left "rolling back" (the next in-place job must not exit 4).

rollback_damaged_state() { # KIND(run|apply) WRITER: WRITER damages ft/.nlsr-state.json
    local kind=$1 cmd
    setup_full
    cp -r "$S/ft" "$W/pristine"
    make_patch "$W/p.nlsrp"
    if [ "$kind" = run ]; then cmd=(run --base sft --aligned aligned --finetuned ft -q --in-place)
    else cmd=(apply --patches "$W/p.nlsrp" --in-place ft -q); fi
    nl 0 "${cmd[@]}"
    [ -f "$S/ft/.nlsr-state.json" ] || die "no state file after an in-place run"
    "$2" "$S/ft/.nlsr-state.json"
    snap_before ft/.nlsr.lock
    nl '0|1|2' rollback ft
    if [ "$RC" -eq 0 ]; then
        same_ckpt "$S/ft" "$W/pristine"
        expect_absent "$S/ft/.nlsr-journal"
    else
        expect_err ft
        snap_check "a refused rollback (it must change nothing)"
    fi
    nl '0|1|2' "${cmd[@]}"
}
garbage() { printf '{"tool": "nlsr", garbage' >"$1"; }
empty() { : >"$1"; }
foreign() { printf '{"version": 99, "fingerprint": "xxh64:0000000000000000"}\n' >"$1"; }
case_rollback_state_garbage() { rollback_damaged_state apply garbage; }
case_rollback_state_empty() { rollback_damaged_state apply empty; }
case_rollback_state_foreign_run() { rollback_damaged_state run foreign; }
