#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Input layouts through the nlsr program (README "Input layouts"): Hugging Face hub cache
# snapshot folders and repository folders (refs/main, --revision by commit, abbreviated commit
# and ref name), full weights and PEFT adapters, for run, prepare + apply, amplify, inspect and
# plan. Every output must be byte-identical to the same job on plain folders, and the cache
# must be exactly as it was (every blob's sha256, every link's target, no new entry) after
# every job, including the refused in-place ones. Then files and folders of other formats
# (PyTorch pickles, GGUF, NumPy, HDF5, garbage) must be refused with one line naming the file
# and the format.
# usage: test_hub_cli.sh NLSR_PROGRAM TESTS_DATA_DIR. Exit 0 pass, 1 fail, 77 skipped.
set -u
NLSR=$1
FX=$2/hf-tiny-llama
T=$(mktemp -d "${TMPDIR:-/tmp}/nlsr-test-hub-cli-XXXXXX") || exit 1
fails=0
passes=0

for tool in sha256sum sha1sum od dd cmp; do
    if ! command -v $tool >/dev/null 2>&1; then
        echo "no $tool: skipped"
        rm -rf "$T"
        exit 77
    fi
done

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

nlsr_ok() { # runs nlsr, which must exit 0
    "$NLSR" "$@" -q 2>"$T/stderr" >"$T/stdout" ||
        { echo "nlsr $*: exit $?: $(cat "$T/stderr")" >&2; return 1; }
}

# nlsr_refused STATUS ERRFILE ARGS...: nlsr must exit with STATUS and print exactly one line
nlsr_refused() {
    want=$1
    err=$2
    shift 2
    "$NLSR" "$@" >/dev/null 2>"$err"
    got=$?
    [ "$got" -eq "$want" ] || { echo "nlsr $*: exit $got, not $want: $(cat "$err")" >&2; return 1; }
    [ "$(wc -l <"$err")" -eq 1 ] || { echo "nlsr $*: not one line: $(cat "$err")" >&2; return 1; }
}

has() { grep -qF -- "$2" "$1" || { echo "'$2' not in: $(cat "$1")" >&2; return 1; }; }

# same_outputs A B: B holds every safetensors file and index of A, byte for byte (other side
# files are not compared: their copying is the output writer's business)
same_outputs() {
    n=0
    for f in "$1"/*.safetensors "$1"/*.index.json; do
        [ -e "$f" ] || continue
        cmp -s "$f" "$2/${f##*/}" || { echo "$2/${f##*/} differs from $f" >&2; return 1; }
        n=$((n + 1))
    done
    [ "$n" -gt 0 ] || { echo "$1 holds no safetensors file" >&2; return 1; }
}

differs() { ! same_outputs "$1" "$2" 2>/dev/null; }

# commit_of TEXT: a 40-hex commit hash, as the hub names snapshots
commit_of() { printf '%s' "$1" | sha1sum | cut -c1-40; }

# snapshot REPO COMMIT SRC: adds revision COMMIT of SRC's files to repository folder REPO the way
# huggingface_hub lays it out: contents in blobs/<sha256>, shared between revisions, and
# snapshots/COMMIT/NAME as relative links into ../../blobs/
snapshot() {
    mkdir -p "$1/blobs" "$1/refs" "$1/snapshots/$2"
    for f in "$3"/*; do
        h=$(sha256sum "$f" | cut -c1-64)
        [ -e "$1/blobs/$h" ] || cp "$f" "$1/blobs/$h"
        ln -s "../../blobs/$h" "$1/snapshots/$2/${f##*/}"
    done
}

# revision_b SRC DST: a copy of SRC whose last safetensors file has one mantissa bit flipped
# (the low byte of its last element), so that it is another, still finite, checkpoint
revision_b() {
    mkdir -p "$2"
    cp "$1"/* "$2/"
    last=$(ls "$2"/*.safetensors | tail -n 1)
    off=$(($(wc -c <"$last") - 2))
    b=$(od -An -tu1 -j "$off" -N1 "$last" | tr -d ' ')
    printf "\\$(printf %o $((b ^ 1)))" | dd of="$last" bs=1 seek="$off" conv=notrunc 2>/dev/null
}

# the cache's state: every entry, every blob's sha256, every link's target
cache_state() {
    (cd "$T/hub" && find . | LC_ALL=C sort | while read -r p; do
        if [ -L "$p" ]; then echo "L $p -> $(readlink "$p")"
        elif [ -f "$p" ]; then echo "F $p $(sha256sum <"$p" | cut -c1-64)"
        else echo "D $p"; fi
    done)
}
cache_unchanged() {
    cache_state >"$T/state.now"
    cmp -s "$T/state.before" "$T/state.now" ||
        { echo "the cache changed:" >&2; diff "$T/state.before" "$T/state.now" >&2; return 1; }
}

# ---- the cache: base, aligned (two revisions), fine-tune (two revisions), two adapters -----
H=$T/hub
revision_b "$FX/finetuned" "$T/plain/ft_b"
revision_b "$FX/aligned" "$T/plain/al_b"
revision_b "$FX/lora_finetuned" "$T/plain/lft_b"
SFT=$H/models--tiny--sft
AL=$H/models--tiny--aligned
FT=$H/models--tiny--finetuned
LAL=$H/models--tiny--lora-align
LFT=$H/models--tiny--lora-finetuned
c_sft=$(commit_of sft)
c_al=$(commit_of aligned-a)
c_al_b=$(commit_of aligned-b)
c_ft=$(commit_of finetuned-a)
c_ft_b=$(commit_of finetuned-b)
c_lal=$(commit_of lora-align)
c_lft=$(commit_of lora-a)
c_lft_b=$(commit_of lora-b)
snapshot "$SFT" "$c_sft" "$FX/sft"
snapshot "$AL" "$c_al" "$FX/aligned"
snapshot "$AL" "$c_al_b" "$T/plain/al_b"
snapshot "$FT" "$c_ft" "$FX/finetuned"
snapshot "$FT" "$c_ft_b" "$T/plain/ft_b"
snapshot "$LAL" "$c_lal" "$FX/lora_align"
snapshot "$LFT" "$c_lft" "$FX/lora_finetuned"
snapshot "$LFT" "$c_lft_b" "$T/plain/lft_b"
# refs/main holds the commit without a newline (huggingface_hub's way); v2 names revision b
for r in "$SFT:$c_sft" "$AL:$c_al" "$FT:$c_ft" "$LAL:$c_lal" "$LFT:$c_lft"; do
    printf '%s' "${r#*:}" >"${r%%:*}/refs/main"
done
printf '%s\n' "$c_ft_b" >"$FT/refs/v2"
# the two fine-tune revisions share all but one blob
check shared_blobs test "$(ls "$FT/blobs" | wc -l)" -eq 7
cache_state >"$T/state.before"
O=$T/out

# ---- run: plain folders, then (a) snapshots, (b) repositories via refs/main, (c) --revision --
check run_plain nlsr_ok run --base "$FX/sft" --aligned "$FX/aligned" --finetuned "$FX/finetuned" \
    --out "$O/run_plain"
check run_snapshot nlsr_ok run --base "$SFT/snapshots/$c_sft" --aligned "$AL/snapshots/$c_al" \
    --finetuned "$FT/snapshots/$c_ft" --out "$O/run_snapshot"
check run_snapshot_same same_outputs "$O/run_plain" "$O/run_snapshot"
check run_repo nlsr_ok run --base "$SFT" --aligned "$AL" --finetuned "$FT" --out "$O/run_repo"
check run_repo_same same_outputs "$O/run_plain" "$O/run_repo"
check run_plain_b nlsr_ok run --base "$FX/sft" --aligned "$FX/aligned" \
    --finetuned "$T/plain/ft_b" --out "$O/run_plain_b"
# the other inputs as snapshots: a snapshot is a pinned revision the commit does not touch
check run_revision nlsr_ok run --base "$SFT/snapshots/$c_sft" --aligned "$AL/snapshots/$c_al" \
    --finetuned "$FT" --revision "$c_ft_b" --out "$O/run_revision"
check run_revision_same same_outputs "$O/run_plain_b" "$O/run_revision"
check run_revision_other differs "$O/run_repo" "$O/run_revision"
check run_cache cache_unchanged

# ---- prepare + apply: (a) (b), and (c) by ref name -----------------------------------------
check prepare_plain nlsr_ok prepare --base "$FX/sft" --aligned "$FX/aligned" --out "$O/plain.nlsrp"
check prepare_repo nlsr_ok prepare --base "$SFT" --aligned "$AL" --out "$O/repo.nlsrp"
fingerprints() { grep -ao '"fingerprint":"xxh64:[0-9a-f]*"' "$1"; }
check prepare_same_sources test "$(fingerprints "$O/plain.nlsrp")" = \
    "$(fingerprints "$O/repo.nlsrp")"
check prepare_records_snapshot grep -aqF "\"snapshot\":\"$(cd "$AL/snapshots/$c_al" && pwd -P)\"" \
    "$O/repo.nlsrp"
check apply_plain nlsr_ok apply --patches "$O/plain.nlsrp" --finetuned "$FX/finetuned" \
    --out "$O/apply_plain"
check apply_plain_same same_outputs "$O/run_plain" "$O/apply_plain"
check apply_snapshot nlsr_ok apply --patches "$O/repo.nlsrp" --finetuned "$FT/snapshots/$c_ft" \
    --out "$O/apply_snapshot"
check apply_snapshot_same same_outputs "$O/apply_plain" "$O/apply_snapshot"
check apply_repo nlsr_ok apply --patches "$O/repo.nlsrp" --finetuned "$FT" --out "$O/apply_repo"
check apply_repo_same same_outputs "$O/apply_plain" "$O/apply_repo"
check apply_plain_b nlsr_ok apply --patches "$O/plain.nlsrp" --finetuned "$T/plain/ft_b" \
    --out "$O/apply_plain_b"
check apply_ref nlsr_ok apply --patches "$O/repo.nlsrp" --finetuned "$FT" --revision v2 \
    --out "$O/apply_ref"
check apply_ref_same same_outputs "$O/apply_plain_b" "$O/apply_ref"
check apply_cache cache_unchanged

# ---- amplify: (a) (b), and (c) by an abbreviated commit ------------------------------------
check amplify_plain nlsr_ok amplify --base "$FX/sft" --aligned "$FX/aligned" --out "$O/amp_plain"
check amplify_snapshot nlsr_ok amplify --base "$SFT/snapshots/$c_sft" \
    --aligned "$AL/snapshots/$c_al" --out "$O/amp_snapshot"
check amplify_snapshot_same same_outputs "$O/amp_plain" "$O/amp_snapshot"
check amplify_repo nlsr_ok amplify --base "$SFT" --aligned "$AL" --out "$O/amp_repo"
check amplify_repo_same same_outputs "$O/amp_plain" "$O/amp_repo"
check amplify_plain_b nlsr_ok amplify --base "$FX/sft" --aligned "$T/plain/al_b" \
    --out "$O/amp_plain_b"
short=$(printf '%s' "$c_al_b" | cut -c1-10)
check amplify_revision nlsr_ok amplify --base "$FX/sft" --aligned "$AL" --revision "$short" \
    --out "$O/amp_revision"
check amplify_revision_same same_outputs "$O/amp_plain_b" "$O/amp_revision"
check amplify_revision_other differs "$O/amp_repo" "$O/amp_revision"
check amplify_cache cache_unchanged

# ---- inspect and plan ----------------------------------------------------------------------
# the same tensors, dtypes, shapes, shard names and offsets as the plain folder; paths differ
norm() {
    sed -e 's/"path":"[^"]*","resolved":"[^"]*"/"path":"P","resolved":"P"/' \
        -e 's/"file":"[^"]*\//"file":"/g' "$1"
}
"$NLSR" inspect --json "$FX/finetuned" >"$T/i_plain.json"
"$NLSR" inspect --json "$FT/snapshots/$c_ft" >"$T/i_snap.json"
"$NLSR" inspect --json "$FT" >"$T/i_repo.json"
norm "$T/i_plain.json" >"$T/i_plain.n"
norm "$T/i_snap.json" >"$T/i_snap.n"
norm "$T/i_repo.json" >"$T/i_repo.n"
check inspect_plain_tensors grep -q '"name":"lm_head.weight"' "$T/i_plain.n"
check inspect_snapshot_tensors cmp -s "$T/i_plain.n" "$T/i_snap.n"
check inspect_repo_tensors cmp -s "$T/i_plain.n" "$T/i_repo.n"
check inspect_repo_path grep -qF "\"path\":\"$FT\",\"resolved\":\"$FT/snapshots/$c_ft\"" \
    "$T/i_repo.json"
"$NLSR" inspect "$FT" --revision v2 >"$T/stdout" 2>&1
check inspect_revision_says grep -qF "snapshot: $FT/snapshots/$c_ft_b" "$T/stdout"
check plan_repo nlsr_ok plan --base "$SFT" --aligned "$AL" --finetuned "$FT" --revision main \
    --json
check plan_cache cache_unchanged

# ---- PEFT adapters -------------------------------------------------------------------------
check lora_plain nlsr_ok run --aligned "$FX/lora_align" --finetuned "$FX/lora_finetuned" \
    --select all --out "$O/lora_plain"
check lora_snapshot nlsr_ok run --aligned "$LAL/snapshots/$c_lal" \
    --finetuned "$LFT/snapshots/$c_lft" --select all --out "$O/lora_snapshot"
check lora_snapshot_same same_outputs "$O/lora_plain" "$O/lora_snapshot"
check lora_snapshot_config cmp -s "$FX/lora_finetuned/adapter_config.json" \
    "$O/lora_snapshot/adapter_config.json"
check lora_repo nlsr_ok run --aligned "$LAL" --finetuned "$LFT" --select all --out "$O/lora_repo"
check lora_repo_same same_outputs "$O/lora_plain" "$O/lora_repo"
check lora_plain_b nlsr_ok run --aligned "$FX/lora_align" --finetuned "$T/plain/lft_b" \
    --select all --out "$O/lora_plain_b"
check lora_revision nlsr_ok run --aligned "$LAL/snapshots/$c_lal" --finetuned "$LFT" \
    --revision "$c_lft_b" --select all --out "$O/lora_revision"
check lora_revision_same same_outputs "$O/lora_plain_b" "$O/lora_revision"
check lora_prepare nlsr_ok prepare --aligned "$LAL" --out "$O/lora.nlsrp"
check lora_apply nlsr_ok apply --patches "$O/lora.nlsrp" --finetuned "$LFT" --select all \
    --out "$O/lora_apply"
check lora_apply_same same_outputs "$O/lora_plain" "$O/lora_apply"
check lora_cache cache_unchanged

# ---- in place on the cache stays refused, and writes nothing into it ----------------------
check inplace_snapshot nlsr_refused 2 "$T/e" apply --patches "$O/plain.nlsrp" \
    --in-place "$FT/snapshots/$c_ft"
check inplace_snapshot_says has "$T/e" "symbolic link"
check inplace_repo nlsr_refused 2 "$T/e" apply --patches "$O/plain.nlsrp" --in-place "$FT"
check inplace_repo_says has "$T/e" "repository folder"
check inplace_run nlsr_refused 2 "$T/e" run --base "$FX/sft" --aligned "$FX/aligned" \
    --finetuned "$FT/snapshots/$c_ft" --in-place
check inplace_lora nlsr_refused 2 "$T/e" apply --patches "$O/lora.nlsrp" \
    --in-place "$LFT/snapshots/$c_lft"
check inplace_dry nlsr_refused 2 "$T/e" apply --patches "$O/plain.nlsrp" --dry-run \
    --in-place "$FT/snapshots/$c_ft"
check inplace_revision nlsr_refused 2 "$T/e" apply --patches "$O/plain.nlsrp" --revision v2 \
    --in-place "$FT"
check inplace_cache cache_unchanged

# ---- resolution errors: one line naming the folder and what is wrong ---------------------
check rev_missing nlsr_refused 1 "$T/e" inspect "$FT" --revision v3
check rev_missing_says has "$T/e" "$FT: no revision 'v3'"
check rev_missing_lists has "$T/e" "$c_ft_b"
for bad in ../main /main refs//main refs/../../x . 'a\b'; do
    check "rev_bad_$bad" nlsr_refused 2 "$T/e" run --base "$SFT" --aligned "$AL" --finetuned "$FT" \
        --revision "$bad" --out "$O/never"
    check "rev_bad_says_$bad" has "$T/e" "revision '$bad'"
done
check rev_bad_nothing test ! -e "$O/never"
check rev_snapshot_other nlsr_refused 2 "$T/e" inspect "$FT/snapshots/$c_ft" --revision v2
check rev_snapshot_other_says has "$T/e" "give the repository folder"
# a copy of the repository whose refs/main names a snapshot that is not there
mkdir -p "$T/hub2"
cp -R "$FT" "$T/hub2/"
FT2=$T/hub2/models--tiny--finetuned
gone=abc123abc123abc123abc123abc123abc123abc1
printf '%s' "$gone" >"$FT2/refs/main"
check ref_dangling nlsr_refused 1 "$T/e" inspect "$FT2"
check ref_dangling_says has "$T/e" \
    "$FT2: refs/main names $gone, which has no snapshots/$gone/ folder"
rm "$FT2/refs/main"
check no_main nlsr_refused 1 "$T/e" inspect "$FT2"
check no_main_says has "$T/e" "without refs/main"
# an unfinished download: a link to a blob that is not there yet
rm "$FT2/blobs/$(sha256sum "$FX/finetuned/model-00002-of-00003.safetensors" | cut -c1-64)"
check blob_missing nlsr_refused 1 "$T/e" inspect "$FT2/snapshots/$c_ft"
check blob_missing_says has "$T/e" "model-00002-of-00003.safetensors is a link to ../../blobs/"
check errors_cache cache_unchanged

# ---- other formats by magic bytes: one line, the file and the format named ---------------
F=$T/formats
mkdir -p "$F"
printf 'PK\003\004\024\000\000\000\010\000archive/data.pkl' >"$F/pytorch_model.bin"
printf '\200\002\212\012l\374\234F\371 j\250P\031.\200\002M\351\003.' >"$F/legacy.pt"
printf '\200\004\225\020\000\000\000\000\000\000\000}\224(\214\001w\224.' >"$F/proto4.pth"
printf 'GGUF\003\000\000\000\002\000\000\000\000\000\000\000' >"$F/model.gguf"
printf "\\223NUMPY\\001\\000v\\000{'descr': '<f4', 'fortran_order': False}" >"$F/weights.npy"
printf '\211HDF\r\n\032\n\000\000\000\000\000\010\010\000' >"$F/tf_model.h5"
seq 1 300 >"$F/garbage.safetensors"
for m in "pytorch_model.bin:zip archive" "legacy.pt:legacy pickle, protocol 2" \
    "proto4.pth:legacy pickle, protocol 4" "model.gguf:GGUF file (llama.cpp)" \
    "weights.npy:NumPy .npy" "tf_model.h5:HDF5 file" \
    "garbage.safetensors:not a safetensors file"; do
    file=${m%%:*}
    check "magic_$file" nlsr_refused 1 "$T/e" inspect "$F/$file"
    check "magic_${file}_file" has "$T/e" "$F/$file: "
    check "magic_${file}_format" has "$T/e" "${m#*:}"
done
check magic_convert has "$T/e" "not a safetensors file"
nlsr_refused 1 "$T/e" inspect "$F/legacy.pt"
check magic_convert_hint has "$T/e" "save_file(torch.load('$F/legacy.pt'), 'model.safetensors')"
# through a job: the fine-tune as a lone pickle file
check magic_run nlsr_refused 1 "$T/e" run --base "$FX/sft" --aligned "$FX/aligned" \
    --finetuned "$F/pytorch_model.bin" --out "$O/never"
check magic_run_says has "$T/e" "PyTorch pickle checkpoint (zip archive"
check magic_run_nothing test ! -e "$O/never"

# ---- folders holding only PyTorch pickle weights: named, with how to convert -------------
mkdir -p "$T/bin1" "$T/bin2" "$T/bin3" "$T/hub3"
cp "$F/pytorch_model.bin" "$FX/finetuned/config.json" "$T/bin1/"
cp "$F/pytorch_model.bin" "$T/bin2/pytorch_model-00001-of-00002.bin"
cp "$F/pytorch_model.bin" "$T/bin2/pytorch_model-00002-of-00002.bin"
printf '{"weight_map": {}}' >"$T/bin2/pytorch_model.bin.index.json"
cp "$F/pytorch_model.bin" "$T/bin3/adapter_model.bin"
cp "$FX/lora_finetuned/adapter_config.json" "$T/bin3/"
check bin_folder nlsr_refused 1 "$T/e" run --base "$FX/sft" --aligned "$FX/aligned" \
    --finetuned "$T/bin1" --out "$O/never"
check bin_folder_names has "$T/e" "$T/bin1: holds PyTorch pickle weights (pytorch_model.bin)"
check bin_folder_how has "$T/e" "from_pretrained('$T/bin1')"
check bin_sharded nlsr_refused 1 "$T/e" inspect "$T/bin2"
check bin_sharded_names has "$T/e" "pytorch_model.bin.index.json"
check bin_sharded_shard has "$T/e" "pytorch_model-00001-of-00002.bin"
check bin_adapter nlsr_refused 1 "$T/e" inspect "$T/bin3"
check bin_adapter_how has "$T/e" \
    "save_file(torch.load('$T/bin3/adapter_model.bin'), 'adapter_model.safetensors')"
# the same in a hub cache repository: named through its snapshot
snapshot "$T/hub3/models--x--bin" "$c_ft" "$T/bin1"
printf '%s' "$c_ft" >"$T/hub3/models--x--bin/refs/main"
check bin_repo nlsr_refused 1 "$T/e" inspect "$T/hub3/models--x--bin"
check bin_repo_names has "$T/e" "$T/hub3/models--x--bin: holds PyTorch pickle weights"
check bin_repo_snapshot has "$T/e" "from_pretrained('$T/hub3/models--x--bin/snapshots/$c_ft')"
check bin_plain_empty nlsr_refused 1 "$T/e" inspect "$T/hub3"
check bin_plain_empty_says has "$T/e" "no model.safetensors"
check final_cache cache_unchanged

echo "$passes passed, $fails failed"
if [ "$fails" -eq 0 ]; then rm -rf "$T"; else echo "outputs kept in $T" >&2; fi
[ "$fails" -eq 0 ]
