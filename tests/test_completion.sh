#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The bash completion (completions/nlsr), sourced in a test shell and driven the way bash drives
# it (COMP_WORDS, COMP_CWORD, COMP_LINE, COMP_POINT, then the function `complete -p nlsr`
# names): commands, each command's own options and no other command's, option values, folders
# and files where a path goes. Run once plain and once with the bash-completion package loaded
# (its _init_completion and _filedir), where it is installed.
# usage: test_completion.sh COMPLETION_FILE. Exit 0 pass, 1 fail.
set -u
COMPLETION=$1
T=$(mktemp -d "${TMPDIR:-/tmp}/nlsr-test-completion-XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/ckpt/sft" "$T/ckpt/store" "$T/ckpt/sub"
touch "$T/ckpt/model.safetensors" "$T/ckpt/notes.txt" "$T/ckpt/p.nlsrp"

run_suite() {
    local mode=$1
    bash --norc --noprofile -s "$COMPLETION" "$T/ckpt" "$mode" <<'SUITE'
set -u
COMPLETION=$1 DIR=$2 MODE=$3
if [[ $MODE == package ]]; then
    for f in /usr/share/bash-completion/bash_completion /etc/bash_completion; do
        [[ -r $f ]] && { source "$f"; break; }
    done
fi
source "$COMPLETION"
cd "$DIR" || exit 1
fails=0 passes=0

# complete LINE: the candidates for the last word of LINE (a trailing space: a new word), sorted.
complete_line() {
    local line=$1
    read -r -a COMP_WORDS <<<"$line"
    [[ $line == *" " ]] && COMP_WORDS+=("")
    COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
    COMP_LINE=$line
    COMP_POINT=${#line}
    COMPREPLY=()
    local fn
    fn=$(complete -p nlsr | sed -n 's/.*-F \([^ ]*\) .*/\1/p')
    "$fn" nlsr "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
    printf '%s\n' "${COMPREPLY[@]}" | sed 's:/$::' | sort | tr '\n' ' ' | sed 's/ $//'
}
expect() { # LINE WANT
    local got
    got=$(complete_line "$1")
    if [[ $got == "$2" ]]; then
        passes=$((passes + 1))
    else
        echo "FAIL ($MODE): 'nlsr $1<TAB>' gave '$got', want '$2'" >&2
        fails=$((fails + 1))
    fi
}
has() { # LINE WORD...: every WORD is among the candidates
    local got w
    got=" $(complete_line "$1") "
    for w in "${@:2}"; do
        if [[ $got == *" $w "* ]]; then passes=$((passes + 1)); else
            echo "FAIL ($MODE): 'nlsr $1<TAB>' lacks '$w' (gave '$got')" >&2
            fails=$((fails + 1))
        fi
    done
}
lacks() { # LINE WORD...: no WORD is among the candidates
    local got w
    got=" $(complete_line "$1") "
    for w in "${@:2}"; do
        if [[ $got != *" $w "* ]]; then passes=$((passes + 1)); else
            echo "FAIL ($MODE): 'nlsr $1<TAB>' offers '$w'" >&2
            fails=$((fails + 1))
        fi
    done
}

expect "nlsr r" "reduce rewrite rollback run"
expect "nlsr pl" "plan"
has "nlsr " inspect dump rewrite run prepare apply rollback amplify plan synth bench reduce \
    sweep slurm help version
# Each command's options, and not another's (apply's patch file fixes --beta).
expect "nlsr apply --pa" "--patches"
lacks "nlsr apply --" --beta --sparsity --targets --base --scorer
has "nlsr apply --" --patches --finetuned --out --in-place --dry-run --wait --seed --report \
    --drop-other-weights
has "nlsr run --" --base --aligned --reference --finetuned --out --beta --in-place --scorer \
    --rank-fraction --revision --mem-budget --io --threads
lacks "nlsr run --" --patches --discard-journal --preset
lacks "nlsr prepare --" --drop-other-weights --in-place --patches
expect "nlsr rewrite --" "--drop-other-weights --force --help --quiet --verbose --version"
expect "nlsr rollback --" "--config --discard-journal --force --help --json --progress-interval --quiet --verbose --version --wait"
has "nlsr synth --" --preset --role --layers --seed --dtype --shard-size --out --force
has "nlsr plan --" --bandwidth --no-time --measure-read --finetuned --scorer
expect "nlsr inspect --" "--help --json --quiet --revision --verbose --version"
has "nlsr bench --" --synth --layers --budgets --io --jobs --reps --warm --drop-caches --csv \
    --json --plot --scratch --base --aligned --finetuned
lacks "nlsr bench --" --out --beta --mem-budget --in-place
has "nlsr bench --" --progress-interval --verbose --version
# bench's --io is a list of backends (no auto); run's is one backend.
lacks "nlsr bench --io " auto
has "nlsr bench --io " uring,pread
has "nlsr run --io " auto
lacks "nlsr run --io " uring,pread
expect "nlsr bench --synth l" "llama-70b llama-8b"
expect "nlsr bench --jobs run" "run run-in-place"
expect "nlsr bench --budgets " ""
expect "nlsr bench --scratch s" "sft store sub"
expect "nlsr help pl" "plan"
# Option values.
expect "nlsr synth --preset " "llama-70b llama-8b tiny"
expect "nlsr synth --role f" "finetuned"
expect "nlsr run --select " "adaptive all none threshold"
expect "nlsr apply --io " "auto mmap pread uring"
expect "nlsr prepare --scorer l" "lowrank"
expect "nlsr run --beta " ""
# Paths: folders for --out and rollback, checkpoints (folders and .safetensors) for inputs,
# .nlsrp files for patches.
expect "nlsr run --out s" "sft store sub"
expect "nlsr rollback s" "sft store sub"
has "nlsr run --base " sft store sub model.safetensors
lacks "nlsr run --base " notes.txt
has "nlsr apply --patches " p.nlsrp
lacks "nlsr apply --patches " notes.txt model.safetensors
expect "nlsr inspect m" "model.safetensors"
# Split jobs (docs/SCALE.md).
has "nlsr prepare --" --part --task
expect "nlsr reduce --" "--force --help --out --quiet --version"
has "nlsr reduce " p.nlsrp
has "nlsr sweep --" --patches --out-root --task --status --summary --in-place --seed
expect "nlsr sweep --out-root s" "sft store sub"
expect "nlsr slurm " "split sweep"
has "nlsr slurm split --" --parts --base --finetuned --dir --submit --concurrency --apply-opts
has "nlsr slurm sweep --" --patches --out-root --concurrency --submit
expect "nlsr slurm sweep --parts" ""
expect "nlsr prepare --part " ""

echo "$MODE: $passes passed, $fails failed"
[[ $fails -eq 0 ]]
SUITE
}

status=0
run_suite plain || status=1
if [[ -r /usr/share/bash-completion/bash_completion || -r /etc/bash_completion ]]; then
    run_suite package || status=1
else
    echo "note: the bash-completion package is not installed: checked without it only"
fi
exit $status
