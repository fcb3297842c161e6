# SPDX-License-Identifier: Apache-2.0
# Rule: jobs that read a folder (run/apply/prepare --out) take a shared flock on the folder itself
# (the directory), in-place runs and rollback an exclusive one, even on folders nlsr never saw
# (no .nlsr.lock there). A conflict is exit 3 naming the folder; a reader creates nothing.

RUNL=(run --base sft --aligned aligned --finetuned ft -q)

case_lock_reader_refused_by_exclusive() {
    setup_full
    hold -x "$S/ft"
    snap_before
    nl 3 "${RUNL[@]}" --out out
    expect_err ft
    expect_absent "$S/out"
    snap_check
}

case_lock_prepare_refused_by_exclusive_on_base() {
    setup_full
    hold -x "$S/sft"
    snap_before
    nl 3 prepare --base sft --aligned aligned --out p.nlsrp -q
    expect_err sft
    expect_absent "$S/p.nlsrp"
    snap_check
}

case_lock_apply_reader_refused_by_exclusive() {
    setup_full
    make_patch "$W/p.nlsrp"
    hold -x "$S/ft"
    snap_before
    nl 3 apply --patches "$W/p.nlsrp" --finetuned ft --out out -q
    expect_err ft
    expect_absent "$S/out"
    snap_check
}

# Readers share: a held shared lock does not stop another reader, which writes nothing into
# its inputs (no lock file either).
case_lock_readers_share() {
    setup_full
    hold -s "$S/ft"
    hold -s "$S/sft"
    snap_before out
    nl 0 "${RUNL[@]}" --out out
    snap_check "a reader's inputs"
}

case_lock_inplace_apply_refused_by_reader() {
    setup_full
    make_patch "$W/p.nlsrp"
    hold -s "$S/ft"
    snap_before
    nl 3 apply --patches "$W/p.nlsrp" --in-place ft -q
    expect_err ft
    snap_check
}

case_lock_inplace_run_refused_by_reader() {
    setup_full
    hold -s "$S/ft"
    snap_before
    nl 3 "${RUNL[@]}" --in-place
    expect_err ft
    snap_check
}

case_lock_rollback_refused_by_reader() {
    setup_full
    make_patch "$W/p.nlsrp"
    nl 0 apply --patches "$W/p.nlsrp" --in-place ft -q
    hold -s "$S/ft"
    snap_before
    nl 3 rollback ft
    expect_err ft
    snap_check "a folder held by a reader"
}
