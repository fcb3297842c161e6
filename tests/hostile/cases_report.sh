# SPDX-License-Identifier: Apache-2.0
# Rule: an output that cannot be written (a full file system, a read-only mount: root ignores
# permission bits) fails the job with exit 1 and nothing committed: never an output plus exit 1.

RUNR=(run --base sft --aligned aligned --finetuned ft -q)

fill_tmpfs() { # DIR SIZE
    mount_tmpfs "$1" "$2"
    head -c 1M /dev/zero >"$1/fill" 2>/dev/null
    [ "$(df --output=avail "$1" | tail -1)" -eq 0 ] || die "$1 is not full"
}

case_report_on_full_fs() {
    setup_full
    fill_tmpfs "$S/full" 64k
    snap_before out
    nl 1 "${RUNR[@]}" --out out --report full/r.json
    expect_err full/r.json
    expect_absent "$S/out"
    expect_no_tmp "$S"
    snap_check
}

case_report_on_readonly_mount() {
    setup_full
    mkdir "$S/rosrc"
    mount_ro "$S/rosrc" "$S/ro"
    snap_before out
    nl 1 "${RUNR[@]}" --out out --report ro/r.json
    expect_err ro/r.json
    expect_absent "$S/out"
    expect_no_tmp "$S"
    snap_check
}

case_report_on_full_fs_inplace() {
    setup_full
    make_ref
    make_patch "$W/p.nlsrp"
    fill_tmpfs "$S/full" 64k
    snap_before ft/.nlsr.lock ft/.nlsr-journal
    nl 1 apply --patches "$W/p.nlsrp" --in-place ft -q --report full/r.json
    expect_err full/r.json
    snap_check "the in-place folder after a failed report (must be rolled back)"
    nl 0 apply --patches "$W/p.nlsrp" --in-place ft -q
    same_ckpt "$S/ft" "$W/ref"
}

case_out_on_full_fs() {
    setup_full
    fill_tmpfs "$S/full" 128k
    rm -f "$S/full/fill" && head -c 100k /dev/zero >"$S/full/fill" # room for a shard, not three
    snap_before
    nl 1 "${RUNR[@]}" --out full/out
    expect_err
    nl 1 prepare --base sft --aligned aligned --out full/p.nlsrp -q
    expect_err
    snap_check "a full file system (a temporary output left?)"
}

case_out_readonly_parent() {
    setup_full
    mkdir "$S/rosrc"
    mount_ro "$S/rosrc" "$S/ro"
    snap_before
    nl 1 "${RUNR[@]}" --out ro/out
    expect_err ro/out
    nl 1 prepare --base sft --aligned aligned --out ro/sub/p.nlsrp -q
    expect_err ro/sub
    nl 1 synth --preset tiny --role base --out ro/s -q
    expect_err ro/s
    snap_check
}

case_inplace_readonly_mount() {
    setup_full
    make_patch "$W/p.nlsrp"
    mount_ro "$S/ft" "$S/ftro"
    snap_before
    nl 1 apply --patches "$W/p.nlsrp" --in-place ftro -q
    expect_err ftro
    snap_check
}
