# SPDX-License-Identifier: Apache-2.0
# Rule: nothing is written, truncated or removed through a symbolic link; --force replaces only a
# folder nlsr wrote (marker .nlsr-output) or an empty one, or a regular file for file outputs;
# an existing output without --force is exit 1 "exists (use --force to replace it)".

RUNF=(run --base sft --aligned aligned --finetuned ft -q)

case_out_symlink_to_folder() {
    setup_full
    mkdir "$S/victim" && echo precious >"$S/victim/keep" && ln -s victim "$S/out" || die "setup"
    mkdir "$S/emptyvictim" && ln -s emptyvictim "$S/out2" || die "setup"
    snap_before
    nl 2 "${RUNF[@]}" --out out
    expect_err out
    nl 2 "${RUNF[@]}" --out out --force
    expect_err out
    nl 2 "${RUNF[@]}" --out out2 --force
    expect_err out2
    snap_check "the link or its target"
}

case_out_symlink_to_nlsr_output() {
    setup_full
    nl 0 "${RUNF[@]}" --out prev
    ln -s prev "$S/out"
    snap_before
    nl 2 "${RUNF[@]}" --out out --force
    expect_err out
    nl 2 amplify --base sft --aligned aligned --out out --force -q
    expect_err out
    snap_check "an nlsr output behind a link"
}

case_out_symlink_dangling() {
    setup_full
    ln -s nowhere "$S/out" && ln -s nowhere.nlsrp "$S/p.nlsrp" && ln -s nowhere.json "$S/r.json" &&
        ln -s /nonexistent-nlsr-hostile/x "$S/abs" || die "links"
    snap_before
    nl 2 "${RUNF[@]}" --out out --force
    expect_err out
    nl 2 prepare --base sft --aligned aligned --out p.nlsrp --force -q
    expect_err p.nlsrp
    nl 2 "${RUNF[@]}" --out o --report r.json --force
    expect_err r.json
    nl 2 synth --preset tiny --role base --out abs --force -q
    expect_err abs
    expect_absent "$S/nowhere" "$S/nowhere.nlsrp" "$S/nowhere.json" "$S/o" /nonexistent-nlsr-hostile
    snap_check
}

case_report_symlink_to_file() {
    setup_full
    echo precious >"$S/victim.txt" && ln -s victim.txt "$S/report.json" || die "setup"
    snap_before
    nl 2 "${RUNF[@]}" --out out --report report.json --force
    expect_err report.json
    nl 2 "${RUNF[@]}" --out out --report report.json
    expect_err report.json
    expect_absent "$S/out"
    snap_check "the report link's target"
}

case_force_fifo_at_folder_output() {
    setup_full
    mkfifo "$S/out" || die "mkfifo"
    snap_before
    nl 2 "${RUNF[@]}" --out out --force
    expect_err out
    nl 2 synth --preset tiny --role base --out out --force -q
    expect_err out
    snap_check
}

case_force_chardev_at_folder_output() {
    setup_full
    mknod "$S/null" c 1 3 2>/dev/null || skip "mknod not allowed here"
    snap_before
    nl 2 "${RUNF[@]}" --out null --force
    expect_err null
    nl 2 amplify --base sft --aligned aligned --out null --force -q
    expect_err null
    snap_check
}

case_force_socket_at_folder_output() {
    setup_full
    command -v python3 >/dev/null || skip "no python3 to make a socket"
    python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$S/sock" ||
        skip "cannot bind a unix socket here"
    snap_before
    nl 2 "${RUNF[@]}" --out sock --force
    expect_err sock
    snap_check
}

case_force_regular_file_at_folder_output() {
    setup_full
    echo precious >"$S/out"
    snap_before
    nl 2 "${RUNF[@]}" --out out --force
    expect_err out
    nl 2 rewrite ft out --force
    expect_err out
    snap_check
}

case_force_foreign_folder() {
    setup_full
    mkdir "$S/out" && echo precious >"$S/out/data.bin" && mkdir "$S/out/sub" || die "setup"
    cp "$S/ft/config.json" "$S/out/config.json" # looks like a checkpoint: still not nlsr's
    snap_before
    nl 2 "${RUNF[@]}" --out out --force
    expect_err out
    nl 2 synth --preset tiny --role base --out out --force -q
    expect_err out
    snap_check "a folder nlsr did not write"
}

case_force_empty_folder_replaced() {
    setup_full
    make_ref
    mkdir "$S/out"
    snap_before out
    nl 0 "${RUNF[@]}" --out out --force
    same_ckpt "$S/out" "$W/ref"
    expect_no_tmp "$S"
    snap_check
}

case_force_nlsr_output_replaced() {
    setup_full
    make_ref
    nl 0 "${RUNF[@]}" --select none --out out
    snap_before out
    nl 0 "${RUNF[@]}" --out out --force
    same_ckpt "$S/out" "$W/ref"
    expect_no_tmp "$S"
    snap_check
}

case_exists_without_force() {
    setup_full
    nl 0 "${RUNF[@]}" --out out --report r.json
    echo precious >"$S/p.nlsrp"
    snap_before
    nl 1 "${RUNF[@]}" --out out
    expect_err "out: exists (use --force to replace it)"
    nl 1 "${RUNF[@]}" --out o2 --report r.json
    expect_err "r.json: exists (use --force to replace it)"
    expect_absent "$S/o2"
    nl 1 prepare --base sft --aligned aligned --out p.nlsrp -q
    expect_err "p.nlsrp: exists (use --force to replace it)"
    snap_check
}

case_force_report_regular_file_replaced() {
    setup_full
    echo old >"$S/r.json"
    snap_before out r.json
    nl 0 "${RUNF[@]}" --out out --report r.json --force
    grep -q '"modules"' "$S/r.json" || fail "r.json was not replaced by the report"
    [ -L "$S/r.json" ] && fail "r.json became a link"
    expect_no_tmp "$S"
    snap_check
}

case_file_outputs_at_fifo() {
    setup_full
    mkfifo "$S/r.json" "$S/p.nlsrp" || die "mkfifo"
    snap_before
    nl 2 "${RUNF[@]}" --out out --report r.json --force
    expect_err r.json
    expect_absent "$S/out"
    nl 2 prepare --base sft --aligned aligned --out p.nlsrp --force -q
    expect_err p.nlsrp
    snap_check
}

# In place writes its own files into the folder (.nlsr.lock, .nlsr-journal, .nlsr-state.json):
# planted as links to a victim outside, they are never written, truncated or removed through.
inplace_own_file_link() { # NAME
    setup_full
    make_patch "$W/p.nlsrp"
    echo precious >"$S/victim"
    ln -s ../victim "$S/ft/$1"
    snap_before ft
    nl '0|1|2' apply --patches "$W/p.nlsrp" --in-place ft -q
    [ "$RC" -ne 0 ] && expect_err "$1"
    snap_check "the victim behind ft/$1"
}
case_inplace_lock_file_link() { inplace_own_file_link .nlsr.lock; }
case_inplace_journal_link() { inplace_own_file_link .nlsr-journal; }
case_inplace_state_link() { inplace_own_file_link .nlsr-state.json; }
