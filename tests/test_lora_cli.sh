#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# LoRA adapters through the nlsr program: run, prepare + apply, --mask, --mask-out and
# a refusal, compared byte for byte with the authors' outputs in tests/data/hf-tiny-llama/authors.
# usage: test_lora_cli.sh NLSR_PROGRAM TESTS_DATA_DIR. Exit 0 pass, 1 fail.
set -u
NLSR=$1
FX=$2/hf-tiny-llama
AUTH=$FX/authors
T=$(mktemp -d "${TMPDIR:-/tmp}/nlsr-test-lora-cli-XXXXXX") || exit 1
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

same() { cmp "$1" "$2"; }

nlsr_ok() { # runs nlsr, which must exit 0
    "$NLSR" "$@" -q 2>"$T/stderr" || { echo "nlsr $*: exit $?: $(cat "$T/stderr")" >&2; return 1; }
}

# run from the aligned adapter with the authors' amplification, every module patched
check run_all nlsr_ok run --aligned "$FX/lora_align" --finetuned "$FX/lora_finetuned" \
    --amplify authors --select all --report "$T/all.json" --out "$T/all"
check run_all_bytes same "$T/all/adapter_model.safetensors" \
    "$AUTH/adaptive_all/adapter_model.safetensors"
check run_all_config same "$T/all/adapter_config.json" "$FX/lora_finetuned/adapter_config.json"
check run_all_report grep -q '"name":[[:space:]]*"base_model.model.model.layers.2.self_attn.q_proj"' \
    "$T/all.json"

# run from the authors' reference, nothing patched: the fine-tuned adapter comes back as it was
check run_none nlsr_ok run --reference "$AUTH/reference" --finetuned "$FX/lora_finetuned" \
    --select none --out "$T/none"
check run_none_bytes same "$T/none/adapter_model.safetensors" \
    "$AUTH/adaptive_none/adapter_model.safetensors"

# prepare (writing the mask in the authors' layout too) + apply
check prepare nlsr_ok prepare --aligned "$FX/lora_align" --amplify authors \
    --mask-out "$T/mask.safetensors" --out "$T/lora.nlsrp"
check prepare_mask same "$T/mask.safetensors" "$AUTH/mask_bottom_0.8.safetensors"
check apply nlsr_ok apply --patches "$T/lora.nlsrp" --finetuned "$FX/lora_finetuned" \
    --select all --out "$T/applied"
check apply_bytes same "$T/applied/adapter_model.safetensors" \
    "$AUTH/adaptive_all/adapter_model.safetensors"

# --mask: the authors' mask file decides, whatever --sparsity says
check mask_file nlsr_ok run --reference "$AUTH/reference" --finetuned "$FX/lora_finetuned" \
    --mask "$AUTH/mask_bottom_0.8.safetensors" --sparsity 0.5 --select all --out "$T/masked"
check mask_file_bytes same "$T/masked/adapter_model.safetensors" \
    "$AUTH/adaptive_all/adapter_model.safetensors"

# a fine-tuned adapter of another rank is refused with exit 1, one line, nothing written
mkdir "$T/ft_r8"
cp "$FX/lora_finetuned/adapter_model.safetensors" "$T/ft_r8/"
sed 's/"r": 4,/"r": 8,/' "$FX/lora_finetuned/adapter_config.json" >"$T/ft_r8/adapter_config.json"
"$NLSR" run --reference "$AUTH/reference" --finetuned "$T/ft_r8" --out "$T/refused" \
    2>"$T/refused.err"
rc=$?
check refuse_exit test "$rc" -eq 1
check refuse_one_line test "$(wc -l <"$T/refused.err")" -eq 1
check refuse_names grep -q 'r=4.*r=8' "$T/refused.err"
check refuse_nothing test ! -e "$T/refused"

echo "$passes passed, $fails failed"
if [ "$fails" -eq 0 ]; then rm -rf "$T"; else echo "outputs kept in $T" >&2; fi
[ "$fails" -eq 0 ]
