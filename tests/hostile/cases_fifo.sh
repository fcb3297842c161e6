# SPDX-License-Identifier: Apache-2.0
# Rule: a FIFO (or other non-regular file) in place of any file nlsr reads is a clean error
# (exit 1 or 2, one line naming it) within seconds, never a hang: no writer ever opens these.

RUNQ=(run --base sft --aligned aligned --finetuned ft -q)
# In-place jobs may leave their documented lock file; nothing else.
FIFO_EX=()
INPLACE_EX=(ft/.nlsr.lock)

# fifo_case FILE COMMAND...: FILE (relative to $S) becomes a FIFO; the command must refuse it.
fifo_case() {
    local f=$1
    shift
    local TMO=${NLSR_HOSTILE_FIFO_TIMEOUT:-10} # "within a few seconds"
    rm -f "$S/$f" && mkfifo "$S/$f" || die "mkfifo $f"
    snap_before "${FIFO_EX[@]}"
    nl '1|2' "$@"
    expect_err "$f"
    expect_absent "$S/out"
    expect_no_tmp "$S"
    snap_check
}

case_fifo_shard() { setup_full; fifo_case ft/model-00002-of-00003.safetensors "${RUNQ[@]}" --out out; }
case_fifo_base_shard() {
    setup_full
    fifo_case sft/model-00001-of-00004.safetensors prepare --base sft --aligned aligned --out p.nlsrp -q
    expect_absent "$S/p.nlsrp"
}
case_fifo_index() { setup_full; fifo_case ft/model.safetensors.index.json "${RUNQ[@]}" --out out; }
case_fifo_config() { setup_full; fifo_case ft/config.json "${RUNQ[@]}" --out out; }
case_fifo_patch_file() {
    setup_full
    fifo_case p.nlsrp apply --patches p.nlsrp --finetuned ft --out out -q
}
case_fifo_patch_file_inplace() {
    setup_full
    FIFO_EX=("${INPLACE_EX[@]}")
    fifo_case p.nlsrp apply --patches p.nlsrp --in-place ft -q
}
case_fifo_adapter_config() {
    setup_lora
    fifo_case lora_ft/adapter_config.json run --aligned lora_align --finetuned lora_ft --out out -q
}
case_fifo_adapter_weights() {
    setup_lora
    fifo_case lora_align/adapter_model.safetensors run --aligned lora_align --finetuned lora_ft \
        --out out -q
}
case_fifo_state_file() {
    setup_full
    FIFO_EX=("${INPLACE_EX[@]}")
    make_patch "$W/p.nlsrp"
    fifo_case ft/.nlsr-state.json apply --patches "$W/p.nlsrp" --in-place ft -q
}
case_fifo_journal_apply() {
    setup_full
    FIFO_EX=("${INPLACE_EX[@]}")
    make_patch "$W/p.nlsrp"
    fifo_case ft/.nlsr-journal apply --patches "$W/p.nlsrp" --in-place ft -q
}
case_fifo_journal_rollback() {
    setup_full
    FIFO_EX=("${INPLACE_EX[@]}")
    fifo_case ft/.nlsr-journal rollback ft
}
case_fifo_mask() {
    setup_lora
    fifo_case mask.safetensors run --aligned lora_align --finetuned lora_ft --mask mask.safetensors \
        --select all --out out -q
}
case_fifo_activations() {
    setup_full
    fifo_case act.safetensors "${RUNQ[@]}" --targets q_proj --scorer lowrank \
        --activations act.safetensors --out out
}
case_fifo_shard_inplace() {
    setup_full
    FIFO_EX=("${INPLACE_EX[@]}")
    make_patch "$W/p.nlsrp"
    fifo_case ft/model-00003-of-00003.safetensors apply --patches "$W/p.nlsrp" --in-place ft -q
}
