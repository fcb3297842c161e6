#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# What an output folder holds (README "What the output folder holds"): fine-tune folders built
# from the fixtures with weights nlsr does not realign beside the shards (consolidated.safetensors,
# pytorch_model.bin, a *.pt, original/ with weights, model.safetensors beside the index, an index
# of .bin weights, a LoRA adapter with adapter_model.bin), a sub-folder without weights, a
# Hugging Face cache snapshot whose files are all relative links into blobs/, a FIFO and a
# dangling link as side files.
# Through run, apply, amplify, rewrite and the in-place jobs: refusals (exit 1, one line naming
# the files and the option, no output, inputs unchanged), --drop-other-weights (output without
# them, every side file a regular file with the same bytes, inspect accepts it, the report
# lists what was copied and dropped).
# usage: test_outputs_cli.sh NLSR_PROGRAM TESTS_DATA_DIR. Exit 0 pass, 1 fail.
set -u
NLSR=$1
FX=$2/hf-tiny-llama
T=$(mktemp -d "${TMPDIR:-/tmp}/nlsr-test-outputs-XXXXXX") || exit 1
fails=0
passes=0

check() { # NAME COMMAND...: counts a pass when the command succeeds
    c_name=$1
    shift
    if "$@"; then
        passes=$((passes + 1))
    else
        echo "FAIL $c_name" >&2
        fails=$((fails + 1))
    fi
}

# Every entry of a folder with its type, link target or SHA-256 (FIFOs are not opened).
digest() {
    (cd "$1" && find . | LC_ALL=C sort | while IFS= read -r f; do
        if [ -L "$f" ]; then echo "L $f -> $(readlink "$f")"
        elif [ -p "$f" ]; then echo "P $f"
        elif [ -d "$f" ]; then echo "D $f"
        else echo "F $(sha256sum <"$f" | cut -c1-64) $f"; fi
    done)
}

# DIR: no output and no temporary folder left beside where it would be.
no_output() { test ! -e "$1" && ! ls "$T" | grep -q "^$(basename "$1")\.nlsr-"; }

# A refusal: exit 1, one line on stderr naming every given word, output absent, input unchanged.
# refused NAME OUT INPUT_DIR WORD... -- COMMAND...
refused() {
    r_name=$1 r_out=$2 r_in=$3
    shift 3
    r_words=""
    while [ "$1" != "--" ]; do r_words="$r_words $1"; shift; done
    shift
    digest "$r_in" >"$T/before"
    # a FIFO opened for reading would block: the timeout turns that into a failure
    timeout 120 "$NLSR" "$@" >/dev/null 2>"$T/err"
    r_rc=$?
    check "$r_name exit 1 (got $r_rc)" test "$r_rc" -eq 1
    check "$r_name one line" test "$(wc -l <"$T/err")" -eq 1
    for w in $r_words; do check "$r_name names $w" grep -qF -- "$w" "$T/err"; done
    check "$r_name no output" no_output "$r_out"
    digest "$r_in" >"$T/after"
    check "$r_name input unchanged" cmp -s "$T/before" "$T/after"
}

# The output holds the side file as a regular file with the input's bytes.
side_ok() { test -f "$2/$3" && test ! -L "$2/$3" && cmp -s "$1/$3" "$2/$3"; }

# The report's "files" object, whitespace removed, has KEY holding exactly LIST (a JSON array body).
report_has() { tr -d ' \t\n' <"$1" | grep -qF "\"$2\":[$3]"; }

ok() { # runs nlsr, which must exit 0
    "$NLSR" "$@" 2>"$T/err" >/dev/null || { echo "nlsr $*: exit $?: $(cat "$T/err")" >&2; return 1; }
}

RUN_IN="--base $FX/sft --aligned $FX/aligned"
"$NLSR" prepare $RUN_IN --out "$T/full.nlsrp" -q || { echo "prepare failed" >&2; exit 1; }

# ---- full fine-tunes with weights nlsr does not realign ------------------------------------
# case NAME EXTRA_NAME(as the report and the message name it) SETUP_COMMAND
mk_case() {
    d=$T/$1
    cp -r "$FX/finetuned" "$d"
    echo "# model card" >"$d/README.md"
    echo "* filter=lfs" >"$d/.gitattributes"
}
mk_case consolidated && cp "$FX/finetuned_f32/model.safetensors" "$T/consolidated/consolidated.safetensors"
mk_case torchbin && printf 'PK\003\004 pickled' >"$T/torchbin/pytorch_model.bin"
mk_case optimizer && printf 'PK\003\004 pickled' >"$T/optimizer/optimizer.pt"
mk_case original && mkdir "$T/original/original" &&
    printf 'PK\003\004' >"$T/original/original/consolidated.00.pth" &&
    echo '{"dim": 64}' >"$T/original/original/params.json"
mk_case beside && cp "$FX/finetuned_f32/model.safetensors" "$T/beside/model.safetensors"
# an index of other weights points a loader at them: it goes with them
mk_case binindex && echo '{"weight_map": {"lm_head.weight": "pytorch_model-00001-of-00001.bin"}}' \
    >"$T/binindex/pytorch_model.bin.index.json"

for c in consolidated:consolidated.safetensors torchbin:pytorch_model.bin optimizer:optimizer.pt \
         original:original/ beside:model.safetensors binindex:pytorch_model.bin.index.json; do
    n=${c%%:*} x=${c#*:}
    in=$T/$n
    refused "run_$n" "$T/run_$n" "$in" "$x" --drop-other-weights -- \
        run $RUN_IN --finetuned "$in" --out "$T/run_$n"
    refused "apply_$n" "$T/apply_$n" "$in" "$x" --drop-other-weights -- \
        apply --patches "$T/full.nlsrp" --finetuned "$in" --out "$T/apply_$n"
    refused "rewrite_$n" "$T/rewrite_$n" "$in" "$x" --drop-other-weights -- \
        rewrite "$in" "$T/rewrite_$n"
    refused "inplace_run_$n" "$T/none" "$in" "$x" "in place" -- \
        run $RUN_IN --finetuned "$in" --in-place
    refused "inplace_apply_$n" "$T/none" "$in" "$x" "in place" -- \
        apply --patches "$T/full.nlsrp" --in-place "$in"

    digest "$in" >"$T/before"
    for job in run apply rewrite; do
        out=$T/${job}_$n
        rm -f "$T/$job.json" # a report is never replaced without --force
        case $job in
        run) check "${job}_$n drop" ok run $RUN_IN --finetuned "$in" --out "$out" -q \
                 --drop-other-weights --report "$T/$job.json" ;;
        apply) check "${job}_$n drop" ok apply --patches "$T/full.nlsrp" --finetuned "$in" \
                   --out "$out" -q --drop-other-weights --report "$T/$job.json" ;;
        rewrite) check "${job}_$n drop" ok rewrite "$in" "$out" --drop-other-weights ;;
        esac
        check "${job}_$n lacks $x" test ! -e "$out/${x%/}"
        check "${job}_$n no dot-files" test ! -e "$out/.gitattributes"
        for s in config.json generation_config.json model.safetensors.index.json README.md; do
            check "${job}_$n has $s" side_ok "$in" "$out" "$s"
        done
        check "${job}_$n inspect" ok inspect "$out"
        if [ "$job" != rewrite ]; then
            check "${job}_$n report dropped" report_has "$T/$job.json" dropped "\"$x\""
            check "${job}_$n report copied" report_has "$T/$job.json" copied \
                '"README.md","config.json","generation_config.json","model.safetensors.index.json"'
            check "${job}_$n report skipped" report_has "$T/$job.json" skipped '".gitattributes"'
        fi
    done
    digest "$in" >"$T/after"
    check "drop_$n input unchanged" cmp -s "$T/before" "$T/after"
done

# the job's patched shards are the same whether or not other weights were dropped
check run_drop_same_shards cmp -s "$T/run_consolidated/model-00001-of-00003.safetensors" \
    "$T/run_beside/model-00001-of-00003.safetensors"

# amplify reads the aligned folder: the same policy
cp -r "$FX/aligned" "$T/amp"
cp "$FX/aligned/model.safetensors" "$T/amp/pytorch_model.bin"
refused amplify_refused "$T/amp_out" "$T/amp" pytorch_model.bin --drop-other-weights -- \
    amplify --base "$FX/sft" --aligned "$T/amp" --out "$T/amp_out"
check amplify_drop ok amplify --base "$FX/sft" --aligned "$T/amp" --out "$T/amp_out" -q \
    --drop-other-weights
check amplify_drop_lacks test ! -e "$T/amp_out/pytorch_model.bin"
check amplify_drop_config side_ok "$T/amp" "$T/amp_out" config.json
check amplify_drop_inspect ok inspect "$T/amp_out"

# --drop-other-weights cannot drop anything in place: a usage error
"$NLSR" run $RUN_IN --finetuned "$T/beside" --in-place --drop-other-weights 2>/dev/null
check inplace_drop_usage test "$?" -eq 2

# ---- a sub-folder without weights is copied whole ------------------------------------------
cp -r "$FX/finetuned" "$T/sub"
mkdir -p "$T/sub/assets/more"
echo "notes" >"$T/sub/assets/notes.txt"
echo "deeper" >"$T/sub/assets/more/deep.txt"
check sub_run ok run $RUN_IN --finetuned "$T/sub" --out "$T/sub_out" -q --report "$T/sub.json"
check sub_notes side_ok "$T/sub" "$T/sub_out" assets/notes.txt
check sub_deep side_ok "$T/sub" "$T/sub_out" assets/more/deep.txt
check sub_inspect ok inspect "$T/sub_out"
check sub_report report_has "$T/sub.json" copied \
    '"assets/","assets/more/","assets/more/deep.txt","assets/notes.txt","config.json","generation_config.json","model.safetensors.index.json"'
check sub_report_dropped report_has "$T/sub.json" dropped ''

# ---- a Hugging Face cache snapshot: every file a relative link into blobs/ -----------------
S=$T/hub/models--tiny/snapshots/0123abc
mkdir -p "$T/hub/models--tiny/blobs" "$S"
for f in "$FX"/finetuned/*; do
    h=$(sha256sum <"$f" | cut -c1-64)
    cp "$f" "$T/hub/models--tiny/blobs/$h"
    ln -s "../../blobs/$h" "$S/$(basename "$f")"
done
digest "$T/hub" >"$T/before"
check snap_run ok run $RUN_IN --finetuned "$S" --out "$T/snap_run" -q --report "$T/snap.json"
check snap_apply ok apply --patches "$T/full.nlsrp" --finetuned "$S" --out "$T/snap_apply" -q
check snap_rewrite ok rewrite "$S" "$T/snap_rewrite"
for o in snap_run snap_apply snap_rewrite; do
    for s in model.safetensors.index.json config.json generation_config.json; do
        check "${o}_$s" side_ok "$FX/finetuned" "$T/$o" "$s"
    done
    check "${o}_inspect" ok inspect "$T/$o"
done
check snap_same_as_folder ok run $RUN_IN --finetuned "$FX/finetuned" --out "$T/plain_run" -q
check snap_same_shards cmp -s "$T/plain_run/model-00002-of-00003.safetensors" \
    "$T/snap_run/model-00002-of-00003.safetensors"
check snap_report report_has "$T/snap.json" copied \
    '"config.json","generation_config.json","model.safetensors.index.json"'
digest "$T/hub" >"$T/after"
check snap_input_unchanged cmp -s "$T/before" "$T/after"

# ---- side files that are not regular files: refused, never opened (a FIFO would hang) ------
cp -r "$FX/finetuned" "$T/fifo"
mkfifo "$T/fifo/tokenizer.json"
cp -r "$FX/finetuned" "$T/dangling"
ln -s ../nowhere/tokenizer.model "$T/dangling/tokenizer.model"
for n in fifo:tokenizer.json:FIFO dangling:tokenizer.model:dangling; do
    d=${n%%:*} rest=${n#*:}
    f=${rest%%:*} what=${rest#*:}
    for opt in "" --drop-other-weights; do
        refused "${d}_run$opt" "$T/${d}_out" "$T/$d" "$f" "$what" -- \
            run $RUN_IN --finetuned "$T/$d" --out "$T/${d}_out" $opt
    done
    refused "${d}_rewrite" "$T/${d}_rw" "$T/$d" "$f" "$what" -- rewrite "$T/$d" "$T/${d}_rw"
done

# ---- LoRA adapters with other weights ------------------------------------------------------
cp -r "$FX/lora_finetuned" "$T/lora"
cp "$FX/lora_finetuned/adapter_model.safetensors" "$T/lora/adapter_model.bin"
echo "# adapter card" >"$T/lora/README.md"
echo '{"add_bos_token": true}' >"$T/lora/tokenizer_config.json"
LORA_IN="--aligned $FX/lora_align --amplify authors --select all"
"$NLSR" prepare --aligned "$FX/lora_align" --amplify authors --out "$T/lora.nlsrp" -q || { echo "LoRA prepare failed" >&2; exit 1; }
refused lora_run "$T/lora_run" "$T/lora" adapter_model.bin --drop-other-weights -- \
    run $LORA_IN --finetuned "$T/lora" --out "$T/lora_run"
refused lora_apply "$T/lora_apply" "$T/lora" adapter_model.bin --drop-other-weights -- \
    apply --patches "$T/lora.nlsrp" --finetuned "$T/lora" --out "$T/lora_apply" --select all
refused lora_inplace "$T/none" "$T/lora" adapter_model.bin "in place" -- \
    apply --patches "$T/lora.nlsrp" --in-place "$T/lora"
refused lora_amplify "$T/lora_amp" "$T/lora" adapter_model.bin --drop-other-weights -- \
    amplify --aligned "$T/lora" --out "$T/lora_amp"
digest "$T/lora" >"$T/before"
check lora_run_drop ok run $LORA_IN --finetuned "$T/lora" --out "$T/lora_run" -q \
    --drop-other-weights --report "$T/lora.json"
check lora_apply_drop ok apply --patches "$T/lora.nlsrp" --finetuned "$T/lora" \
    --out "$T/lora_apply" --select all -q --drop-other-weights
check lora_amplify_drop ok amplify --aligned "$T/lora" --out "$T/lora_amp" -q --drop-other-weights
for o in lora_run lora_apply lora_amp; do
    check "${o}_lacks_bin" test ! -e "$T/$o/adapter_model.bin"
    for s in adapter_config.json README.md tokenizer_config.json; do
        check "${o}_$s" side_ok "$T/lora" "$T/$o" "$s"
    done
    check "${o}_inspect" ok inspect "$T/$o"
done
check lora_run_bytes cmp -s "$T/lora_run/adapter_model.safetensors" \
    "$FX/authors/adaptive_all/adapter_model.safetensors"
check lora_report_dropped report_has "$T/lora.json" dropped '"adapter_model.bin"'
check lora_report_weights report_has "$T/lora.json" weights '"adapter_model.safetensors"'
digest "$T/lora" >"$T/after"
check lora_input_unchanged cmp -s "$T/before" "$T/after"

echo "$passes passed, $fails failed"
if [ "$fails" -eq 0 ]; then rm -rf "$T"; else echo "outputs kept in $T" >&2; fi
[ "$fails" -eq 0 ]
