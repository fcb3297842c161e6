# SPDX-License-Identifier: Apache-2.0
# Rule: SIGINT, SIGTERM and SIGHUP stop a job at its next safe point: temporary outputs removed,
# inputs unchanged, an in-place folder untouched or rolled back (the next in-place run goes on,
# never exit 4), exit 128+n and one line "nlsr: interrupted by SIG...". Deterministic points need
# the NLSR_TEST_STOP_AT hook (-DNLSR_TEST_HOOKS=ON): outdir, shard, journal, commit.

RUNS=(run --base sft --aligned aligned --finetuned ft -q)

# sig_out POINT SIG STATUS COMMAND...: a job writing ./out (or ./p.nlsrp) stopped at POINT,
# then sent SIG: nothing of it may remain.
sig_out() {
    local point=$1 sig=$2 status=$3
    shift 3
    need_hooks
    setup_full
    make_patch "$W/p.nlsrp"
    snap_before
    start_stopped "$point" "$@" || return
    resume "$sig"
    expect_interrupted "$sig" "$status"
    expect_absent "$S/out" "$S/p.nlsrp"
    snap_check "inputs, or temporary outputs left"
}
case_sig_term_run_out_outdir() { sig_out outdir TERM 143 "${RUNS[@]}" --out out; }
case_sig_term_run_out_shard() { sig_out shard TERM 143 "${RUNS[@]}" --out out; }
case_sig_term_run_out_commit() { sig_out commit TERM 143 "${RUNS[@]}" --out out --report r.json; }
case_sig_int_run_out_shard() { sig_out shard INT 130 "${RUNS[@]}" --out out; }
case_sig_hup_run_out_outdir() { sig_out outdir HUP 129 "${RUNS[@]}" --out out; }
# These budgets take the single pass in row blocks on the fixture, its MLP modules cut into
# blocks (2600K with --out; 3M in place, which keeps an eighth for the journal).
case_sig_term_run_rows_out_shard() {
    sig_out shard TERM 143 "${RUNS[@]}" --mem-budget 2600K --out out
}
# apply --out writes its own temporary folder (it has no "shard" point: its shards are not
# written by the single-pass writer).
case_sig_term_apply_out_outdir() {
    sig_out outdir TERM 143 apply --patches "$W/p.nlsrp" --finetuned ft --out out -q
}
case_sig_term_apply_out_commit() {
    sig_out commit TERM 143 apply --patches "$W/p.nlsrp" --finetuned ft --out out -q --report r.json
}
case_sig_term_rewrite_commit() { sig_out commit TERM 143 rewrite ft out; }
case_sig_term_amplify_shard() { sig_out shard TERM 143 amplify --base sft --aligned aligned --out out -q; }

# sig_inplace POINT SIG STATUS KIND: KIND run|run-rows|apply --in-place ft stopped at POINT
# (run-rows: a budget that takes row blocks; in place:
# "journal", the first record durable and its range not yet written) then sent SIG;
# ft must be byte-identical to before and the same in-place job must then succeed.
sig_inplace() {
    local point=$1 sig=$2 status=$3 kind=$4 cmd
    need_hooks
    setup_full
    make_ref
    make_patch "$W/p.nlsrp"
    if [ "$kind" = run ]; then cmd=("${RUNS[@]}" --in-place)
    elif [ "$kind" = run-rows ]; then cmd=("${RUNS[@]}" --mem-budget 3M --in-place); else
        cmd=(apply --patches "$W/p.nlsrp" --in-place ft -q); fi
    snap_before ft/.nlsr.lock ft/.nlsr-journal ft/.nlsr-state.json
    start_stopped "$point" "${cmd[@]}" || return
    resume "$sig"
    expect_interrupted "$sig" "$status"
    snap_check "the in-place folder (must be untouched or rolled back)"
    nl 0 "${cmd[@]}" # exit 4 here: a journal left "writing"
    same_ckpt "$S/ft" "$W/ref"
}
case_sig_term_run_inplace_journal() { sig_inplace journal TERM 143 run; }
case_sig_term_apply_inplace_journal() { sig_inplace journal TERM 143 apply; }
case_sig_int_run_inplace_journal() { sig_inplace journal INT 130 run; }
case_sig_term_run_rows_inplace_journal() { sig_inplace journal TERM 143 run-rows; }
case_sig_hup_apply_inplace_journal() { sig_inplace journal HUP 129 apply; }
# A PEFT adapter realigned in place, interrupted the same way.
case_sig_term_lora_run_inplace_journal() {
    need_hooks
    setup_lora
    local cmd=(run --aligned lora_align --finetuned lora_ft --select all -q --in-place)
    "$NLSR" run --aligned "$FX/lora_align" --finetuned "$FX/lora_finetuned" --select all -q \
        --out "$W/ref" >/dev/null 2>&1 || die "LoRA reference run"
    snap_before lora_ft/.nlsr.lock lora_ft/.nlsr-journal lora_ft/.nlsr-state.json
    start_stopped journal "${cmd[@]}" || return
    resume TERM
    expect_interrupted TERM 143
    snap_check "the in-place adapter (must be untouched or rolled back)"
    nl 0 "${cmd[@]}"
    same_ckpt "$S/lora_ft" "$W/ref"
}

# While the job runs, its temporary folder is out.nlsr-tmp-XXXXXX with a random suffix (not the
# pid), and only one; resumed without a signal it commits normally.
case_tmp_name_unpredictable() {
    need_hooks
    setup_full
    snap_before out
    start_stopped outdir "${RUNS[@]}" --out out || return
    local tmps sfx
    tmps=$(cd "$S" && ls -d out.nlsr-tmp-* 2>/dev/null)
    if [ "$(printf '%s\n' "$tmps" | grep -c .)" -ne 1 ]; then
        fail "expected one out.nlsr-tmp-* while running, found: $tmps"
    else
        sfx=${tmps#out.nlsr-tmp-}
        [ ${#sfx} -ge 6 ] || fail "temporary suffix '$sfx' is shorter than 6 characters"
        [[ "$sfx" == *"$PID"* ]] && fail "temporary name $tmps contains the pid $PID"
        [ -L "$S/$tmps" ] && fail "$tmps is a link"
    fi
    resume
    judge 0 "run --out out (resumed)"
    [ -d "$S/out" ] || fail "out not committed"
    snap_check
}

# --io mmap over an input truncated while the job runs (the test's own doing): exit 1 naming the
# file, never SIGBUS (exit 135).
trunc_case() { # POINT FILE SIZE COMMAND...
    local point=$1 f=$2 size=$3
    shift 3
    need_hooks
    setup_full
    make_patch "$W/p.nlsrp"
    snap_before "$f"
    start_stopped "$point" "$@" --io mmap || return
    truncate -s "$size" "$S/$f"
    resume
    judge 1 "$* --io mmap, $f truncated to $size at '$point'"
    expect_err "$f"
    expect_absent "$S/out"
    snap_check
}
case_mmap_truncated_at_outdir() {
    trunc_case outdir ft/model-00002-of-00003.safetensors 4096 "${RUNS[@]}" --out out
}
case_mmap_truncated_at_shard() {
    trunc_case shard ft/model-00003-of-00003.safetensors 1000 "${RUNS[@]}" --out out
}
case_mmap_truncated_apply() {
    trunc_case outdir ft/model-00003-of-00003.safetensors 1000 \
        apply --patches "$W/p.nlsrp" --finetuned ft --out out -q
}
