# SPDX-License-Identifier: Apache-2.0
# Rule: an output that is, contains or lies inside an input (or is an input file under another
# name) is refused with exit 2 and one line naming both; the output's final component is not
# followed and its parents need not exist. Every case runs from $S with relative paths.

RUN=(run --base sft --aligned aligned --finetuned ft -q)

case_out_is_input() {
    setup_full
    snap_before
    nl 2 "${RUN[@]}" --out ft
    expect_err ft
    nl 2 "${RUN[@]}" --out ft --force
    expect_err ft
    nl 2 "${RUN[@]}" --out sft --force
    expect_err sft
    snap_check
}

case_out_inside_input_missing_parents() {
    setup_full
    snap_before
    nl 2 "${RUN[@]}" --out ft/sub/deeper
    expect_err ft/sub/deeper ft
    nl 2 "${RUN[@]}" --out aligned/new --force
    expect_err aligned/new aligned
    snap_check "no folder may be created inside an input"
}

case_out_dotdot_missing_parent() {
    setup_full
    snap_before
    nl 2 "${RUN[@]}" --out nonexist/../ft
    expect_err nonexist/../ft ft
    nl 2 "${RUN[@]}" --out nonexist/a/../../sft --force
    expect_err nonexist/a/../../sft sft
    expect_absent "$S/nonexist"
    snap_check
}

case_out_dot_and_trailing_slashes() {
    setup_full
    snap_before
    local o
    for o in ft/. ./ft/./ ft/ ft// "$S/ft/" sft/// aligned/./.; do
        nl 2 "${RUN[@]}" --out "$o" --force
        expect_err "$o"
    done
    snap_check
}

case_out_contains_inputs() {
    mkdir "$S/models" && cp -r "$FX/sft" "$S/models/sft" && cp -r "$FX/aligned" "$S/models/aligned" &&
        cp -r "$FX/finetuned" "$S/models/ft" || die "copy"
    snap_before
    local args=(run --base models/sft --aligned models/aligned --finetuned models/ft -q)
    nl 2 "${args[@]}" --out models --force
    expect_err models
    nl 2 "${args[@]}" --out . --force
    expect_err
    nl 2 "${args[@]}" --out models/ft/.. --force
    expect_err models/ft/..
    snap_check
}

case_out_link_parent_component() {
    setup_full
    ln -s ft "$S/lnk"
    ln -s "$S/ft" "$S/abslnk"
    snap_before
    nl 2 "${RUN[@]}" --out lnk/new
    expect_err lnk/new ft
    nl 2 "${RUN[@]}" --out abslnk/a/b --force
    expect_err abslnk/a/b ft
    snap_check
}

case_out_link_middle_component() {
    setup_full
    mkdir "$S/d" && ln -s ../ft "$S/d/l" && ln -s d/l "$S/l2" || die "links"
    snap_before
    nl 2 "${RUN[@]}" --out d/l/x/y
    expect_err d/l/x/y ft
    nl 2 "${RUN[@]}" --out l2/x --force # a link to a link into the input
    expect_err l2/x ft
    snap_check
}

# lnk/.. is the link target's parent (the kernel's reading), not lnk's folder: lnk -> models/sft
# makes lnk/../ft the input models/ft, although "./ft" does not exist.
case_out_link_then_dotdot() {
    mkdir "$S/models" && cp -r "$FX/sft" "$S/models/sft" && cp -r "$FX/aligned" "$S/models/aligned" &&
        cp -r "$FX/finetuned" "$S/models/ft" && ln -s models/sft "$S/lnk" || die "setup"
    snap_before
    nl 2 run --base models/sft --aligned models/aligned --finetuned models/ft -q --out lnk/../ft
    expect_err lnk/../ft models/ft
    expect_absent "$S/ft"
    snap_check
}

case_out_final_link_to_input() {
    setup_full
    ln -s ft "$S/out"
    snap_before
    nl 2 "${RUN[@]}" --out out
    expect_err out
    nl 2 "${RUN[@]}" --out out --force
    expect_err out
    snap_check
}

case_report_inside_input() {
    setup_full
    snap_before out
    nl 2 "${RUN[@]}" --out out --report ft/report.json
    expect_err ft/report.json ft
    nl 2 "${RUN[@]}" --out out --report sft/config.json --force
    expect_err sft/config.json sft
    expect_absent "$S/out"
    snap_check
}

case_report_hardlink_to_input_shard() {
    setup_full
    ln "$S/ft/model-00001-of-00003.safetensors" "$S/report.json" || die "ln"
    snap_before out
    nl 2 "${RUN[@]}" --out out --report report.json --force
    expect_err report.json ft
    expect_absent "$S/out"
    snap_check "the input shard (through its hard link)"
}

case_patch_out_hardlink_to_input() {
    setup_full
    ln "$S/aligned/model-00002-of-00004.safetensors" "$S/p.nlsrp" 2>/dev/null ||
        ln "$S/aligned/$(ls "$S/aligned" | grep safetensors$ | head -1)" "$S/p.nlsrp" || die "ln"
    snap_before
    nl 2 prepare --base sft --aligned aligned --out p.nlsrp --force -q
    expect_err p.nlsrp aligned
    snap_check
}

case_patch_out_is_input_file() {
    setup_full
    snap_before
    nl 2 prepare --base sft --aligned aligned --out sft/model-00001-of-00004.safetensors --force -q
    expect_err sft/model-00001-of-00004.safetensors
    nl 2 prepare --base sft --aligned aligned --out aligned/x.nlsrp -q
    expect_err aligned/x.nlsrp aligned
    snap_check
}

case_report_is_patch_file() {
    setup_full
    make_patch
    snap_before out
    nl 2 apply --patches p.nlsrp --finetuned ft --out out --report p.nlsrp --force -q
    expect_err p.nlsrp
    nl 2 apply --patches p.nlsrp --finetuned ft --out p.nlsrp --force -q
    expect_err p.nlsrp
    expect_absent "$S/out"
    snap_check
}

case_mask_out_is_mask() {
    setup_lora
    make_mask "$S/mask.safetensors"
    ln "$S/lora_ft/adapter_model.safetensors" "$S/hl.safetensors" || die "ln"
    snap_before out
    local args=(run --aligned lora_align --finetuned lora_ft --select all -q --out out)
    nl 2 "${args[@]}" --mask mask.safetensors --mask-out mask.safetensors --force
    expect_err mask.safetensors
    nl 2 "${args[@]}" --mask-out hl.safetensors --force
    expect_err hl.safetensors lora_ft
    nl 2 "${args[@]}" --mask-out lora_align/mask.safetensors
    expect_err lora_align/mask.safetensors lora_align
    expect_absent "$S/out"
    snap_check
}

case_report_is_activations() {
    setup_full
    make_activations "$S/act.safetensors"
    snap_before out
    nl 2 "${RUN[@]}" --targets q_proj --scorer lowrank --activations act.safetensors \
        --out out --report act.safetensors --force
    expect_err act.safetensors
    expect_absent "$S/out"
    snap_check
}

# A hub cache: the snapshot's entries link to content-addressed blobs; the blobs are inputs too.
case_out_on_linked_blob() {
    setup_full
    mkdir "$S/blobs" && mv "$S/ft/model-00002-of-00003.safetensors" "$S/blobs/abc123" &&
        ln -s ../blobs/abc123 "$S/ft/model-00002-of-00003.safetensors" || die "setup"
    snap_before out
    nl 2 "${RUN[@]}" --out blobs
    expect_err blobs
    nl 2 "${RUN[@]}" --out out --report blobs/abc123 --force
    expect_err blobs/abc123
    nl 2 "${RUN[@]}" --out blobs/abc123/x
    expect_err blobs/abc123/x
    expect_absent "$S/out"
    snap_check "the linked blob"
}

case_amplify_out_inside_aligned() {
    setup_full
    snap_before
    nl 2 amplify --base sft --aligned aligned --out aligned/reference -q
    expect_err aligned/reference aligned
    nl 2 amplify --base sft --aligned aligned --out sft/.. --force -q
    expect_err sft/..
    snap_check
}

case_rewrite_out_contains_input() {
    mkdir "$S/models" && cp -r "$FX/finetuned" "$S/models/ft" || die "copy"
    snap_before
    nl 2 rewrite models/ft models --force
    expect_err models
    nl 2 rewrite models/ft models/ft/x
    expect_err models/ft/x
    nl 2 rewrite models/ft models/ft --force
    expect_err models/ft
    snap_check
}
