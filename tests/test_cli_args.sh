#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# The command line (src/cli/cli_args.c): every command's --help / -h / `nlsr help CMD` (exit 0,
# every option the command takes named), --opt=value as --opt value, unknown options (exit 2,
# one line), --version after a command, --config FILE and the command line over it, a config
# with an unknown key or a FIFO for a file, plan with every job option, -q and -v. Usage:
#   test_cli_args.sh NLSR TEST_DATA [COMPLETION_FILE]
set -u
NLSR=$1
DATA=$2/hf-tiny-llama
COMPLETION=${3-}
T=$(mktemp -d "${TMPDIR:-/tmp}/nlsr-cli-args.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
# A value from a JSON object: the first "key": value (numbers, strings without quotes).
val() { tr -d '\n\t ' < "$2" | sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p"; }

# The options each command takes (README "Commands"): the CLI's own, then the method
# parameters of its jobs (nlsr.h: nlsr_realign_params and its select and scorer parts).
COMMON="--help --version --quiet --verbose"
JOBIO="--out --json --force --mem-budget --io --config --progress-interval"
SELECT="--select --semantics --prune-rate --epsilon --tau --seed"
SCORER="--scorer --rank --rank-fraction --rank-reading --power-iters --oversample --exact-svd --activations --wanda-select"
STEP12="--beta --sparsity --targets --amplify --alpha --mask --mask-out $SCORER"
INPLACE="--in-place --wait --dry-run --follow-links"
opts_inspect="$COMMON --json --revision"
opts_dump="$COMMON"
opts_rewrite="$COMMON --force --drop-other-weights"
opts_run="$COMMON $JOBIO --base --aligned --reference --finetuned --report --threads --revision --drop-other-weights $INPLACE $SELECT $STEP12"
opts_prepare="$COMMON $JOBIO --base --aligned --reference --report --threads --revision --seed $STEP12"
opts_apply="$COMMON $JOBIO --patches --finetuned --report --threads --revision --drop-other-weights $INPLACE $SELECT"
opts_rollback="$COMMON --json --force --wait --discard-journal --config --progress-interval"
opts_amplify="$COMMON $JOBIO --base --aligned --threads --revision --drop-other-weights --beta --amplify --alpha"
opts_plan="$opts_run --patches --bandwidth --no-time --measure-read"
opts_synth="$COMMON $JOBIO --preset --layers --role --seed --dtype --shard-size"
opts_bench="$COMMON --base --aligned --finetuned --synth --layers --scratch --budgets --io --jobs --reps --warm --drop-caches --csv --json --plot --progress-interval"

for c in inspect dump rewrite run prepare apply rollback amplify plan synth bench; do
    "$NLSR" "$c" --help > "$T/h1" 2> "$T/e1"; s=$?
    [ $s = 0 ] || fail "$c --help: exit $s"
    [ ! -s "$T/e1" ] || fail "$c --help wrote on stderr: $(cat "$T/e1")"
    head -1 "$T/h1" | grep -q "^usage: nlsr $c " || fail "$c --help: no usage line"
    "$NLSR" "$c" -h > "$T/h2" 2>&1 || fail "$c -h: exit $?"
    "$NLSR" help "$c" > "$T/h3" 2>&1 || fail "help $c: exit $?"
    cmp -s "$T/h1" "$T/h2" && cmp -s "$T/h1" "$T/h3" || fail "$c: -h, --help, help $c differ"
    eval "want=\$opts_$c"
    for o in $want; do
        grep -q -- "$o\\b" "$T/h1" || fail "$c --help does not mention $o"
        # Every option the help names is one the parser takes: never "unknown option".
    done
    for o in $(grep -o -- '--[a-z][a-z-]*' "$T/h1" | sort -u); do
        "$NLSR" "$c" "$o" >/dev/null 2>"$T/e" </dev/null
        ! grep -q "unknown option" "$T/e" || fail "$c --help names $o, which $c calls unknown"
    done
    # Unknown options: exit 2, one line, nothing on stdout; for every command.
    "$NLSR" "$c" --no-such-option > "$T/o" 2> "$T/e"; s=$?
    [ $s = 2 ] || fail "$c --no-such-option: exit $s, want 2"
    [ "$(wc -l < "$T/e")" = 1 ] || fail "$c --no-such-option: $(cat "$T/e")"
    grep -q -- "--no-such-option" "$T/e" || fail "$c: the message does not name the option"
    [ ! -s "$T/o" ] || fail "$c --no-such-option printed on stdout"
    "$NLSR" "$c" --version > "$T/v" 2>&1 || fail "$c --version: exit $?"
    grep -q "^nlsr [0-9]" "$T/v" || fail "$c --version: $(cat "$T/v")"
    "$NLSR" "$c" -q --help > /dev/null 2>&1 || fail "$c takes -q"
    "$NLSR" "$c" -v --help > /dev/null 2>&1 || fail "$c takes -v"
done
# The bash completion offers exactly the options the help lists.
if [ -n "$COMPLETION" ] && command -v bash > /dev/null; then
    for c in inspect dump rewrite run prepare apply rollback amplify plan synth bench reduce sweep; do
        "$NLSR" help "$c" | sed -n '/^options:/,$p' | grep -o -- '^ *\(-[a-z], \)\{0,1\}--[a-z][a-z-]*' |
            sed 's/^ *//; s/, /\n/' | sort -u > "$T/want"
        bash --norc --noprofile -c 'source "$1"; COMP_WORDS=(nlsr "$2" -); COMP_CWORD=2
            COMP_LINE="nlsr $2 -"; COMP_POINT=${#COMP_LINE}; _nlsr nlsr - "$2"
            printf "%s\n" "${COMPREPLY[@]}"' _ "$COMPLETION" "$c" | sort -u > "$T/got"
        cmp -s "$T/want" "$T/got" ||
            fail "completion of $c differs from its help: $(diff "$T/want" "$T/got" | grep '^[<>]' | tr '\n' ' ')"
    done
fi

# README "Commands" lists each command's options and the parameters table as the help does.
README=$2/../../README.md
if [ -f "$README" ]; then
    for c in inspect dump rewrite run prepare apply rollback amplify plan synth bench; do
        "$NLSR" help "$c" | grep -o -- '^ *\(-[a-z], \)\{0,1\}--[a-z][a-z-]*' | sed 's/^ *//; s/^-[a-z], //' |
            grep -v -- '^--help$\|^--version$\|^--quiet$\|^--verbose$' | sort > "$T/want"
        grep "^- \`$c\`:" "$README" | grep -o -- '--[a-z][a-z-]*' | sort > "$T/got"
        cmp -s "$T/want" "$T/got" || fail "README's options of $c are not its help's"
    done
    "$NLSR" help plan | sed -n '/^method parameters/,$p' | sed 1d > "$T/want"
    awk '/^`nlsr_param_info_at\(\)`\), with/ { m = 1; next }
         m && /^```$/ { if (++f == 2) exit; next }
         f == 1 { print }' "$README" > "$T/got"
    cmp -s "$T/want" "$T/got" || fail "README's parameters table is not 'nlsr help plan'"
fi

"$NLSR" help > "$T/h" || fail "help: exit $?"
for c in inspect dump rewrite run prepare apply rollback amplify plan synth bench; do
    grep -q "^  $c " "$T/h" || fail "nlsr help does not list $c"
done
"$NLSR" help no-such-command > /dev/null 2>&1; [ $? = 2 ] || fail "help of an unknown command is not exit 2"

# bench's --io is a list and its --json a file; the other commands' stay one backend and a flag.
"$NLSR" help bench | grep -q -- "--json FILE" || fail "bench --help: no --json FILE"
"$NLSR" help run | grep -q -- "--json  " || fail "run --help: --json is no flag"
"$NLSR" bench --io uring,pread --json "$T/b.json" --help > /dev/null || fail "bench --io LIST --json FILE refused"
"$NLSR" bench --json > /dev/null 2> "$T/e"; [ $? = 2 ] || fail "bench --json without a file accepted"
grep -q -- "--json needs a value" "$T/e" || fail "bench --json: $(cat "$T/e")"
"$NLSR" run --io uring,pread > /dev/null 2>&1; [ $? = 2 ] || fail "run took --io uring,pread"
"$NLSR" run --reps 2 > /dev/null 2> "$T/e"; [ $? = 2 ] || fail "run took bench's --reps"
grep -q "run does not take --reps" "$T/e" || fail "run --reps: $(cat "$T/e")"
"$NLSR" bench --synth tiny --reps 0 > /dev/null 2>&1; [ $? = 2 ] || fail "bench --reps 0 accepted"
"$NLSR" bench --base "$DATA/sft" --layers 2 > /dev/null 2> "$T/e"; [ $? = 2 ] || fail "bench --layers without --synth"
grep -q -- "--layers goes with --synth" "$T/e" || fail "bench --layers: $(cat "$T/e")"
[ ! -e "$T/b.json" ] || fail "bench --help wrote its --json file"

# One spelling per value; io_uring stays an alias.
"$NLSR" run --io io_uring --help > /dev/null || fail "--io io_uring refused"
"$NLSR" run --io=uring --help > /dev/null || fail "--io=uring refused"
"$NLSR" run --io uring2 > /dev/null 2>&1; [ $? = 2 ] || fail "--io uring2 is not a usage error"
"$NLSR" amplify --sparsity 0.5 > /dev/null 2> "$T/e"; [ $? = 2 ] || fail "amplify took --sparsity"
grep -q "amplify does not take --sparsity" "$T/e" || fail "amplify --sparsity: $(cat "$T/e")"
"$NLSR" run --sparsity=1.5 > /dev/null 2> "$T/e"; [ $? = 2 ] || fail "--sparsity=1.5 accepted"
grep -q "sparsity must lie in \[0, 1\], got '1.5'" "$T/e" || fail "--sparsity=1.5: $(cat "$T/e")"
"$NLSR" run --force=yes > /dev/null 2>&1; [ $? = 2 ] || fail "--force=yes accepted"
"$NLSR" run --sparsity > /dev/null 2>&1; [ $? = 2 ] || fail "--sparsity without a value accepted"

# --opt=value means --opt value: the same plan (at a given budget: the default, auto, follows
# MemAvailable, which moves between the two runs).
B=$DATA/sft; A=$DATA/aligned; F=$DATA/finetuned
"$NLSR" plan --base "$B" --aligned "$A" --finetuned "$F" --no-time --json --targets q_proj \
    --mem-budget 1G > "$T/p1" || fail "plan: exit $?"
"$NLSR" plan --base="$B" --aligned="$A" --finetuned="$F" --no-time --json --targets=q_proj \
    --mem-budget=1G > "$T/p2" || fail "plan with =: exit $?"
cmp -s "$T/p1" "$T/p2" || fail "--opt=value and --opt value give different plans"
"$NLSR" plan --base "$B" --aligned "$A" --finetuned "$F" --no-time --json > "$T/p3"
[ "$(val bytes_read "$T/p1")" -lt "$(val bytes_read "$T/p3")" ] ||
    fail "plan --targets q_proj reads no less than all targets"

# plan takes every option of a job's command line: run's, with plan for its command.
"$NLSR" plan --base "$B" --aligned "$A" --finetuned "$F" --out "$T/never" --report "$T/r.json" \
    --targets q_proj --sparsity 0.5 --beta 0.7 --select threshold --semantics authors \
    --prune-rate 0.4 --epsilon 0.1 --tau 0.3 --seed 9 --amplify authors --alpha 0.5 --force \
    --threads 2 --mem-budget 64M --io pread --drop-other-weights --progress-interval 5 -q \
    --no-time > "$T/pr" 2> "$T/e" || fail "plan with run's options: $(cat "$T/e")"
grep -q '^units:' "$T/pr" || fail "plan with run's options printed no plan"
[ ! -e "$T/never" ] && [ ! -e "$T/r.json" ] || fail "plan wrote the job's outputs"

# --config: the file's values, the command line over them; the report records them.
cat > "$T/c.json" <<'JSON'
{"sparsity": 0.5, "select": "threshold", "mem-budget": "4G", "targets": ["q_proj", "v_proj"],
 "tau": 0.25, "quiet": true}
JSON
"$NLSR" run --config "$T/c.json" --base "$B" --aligned "$A" --finetuned "$F" --out "$T/o1" \
    --report "$T/r1.json" 2> "$T/e" || fail "run --config: $(cat "$T/e")"
[ ! -s "$T/e" ] || fail "\"quiet\": true in the config did not quiet the run: $(cat "$T/e")"
[ "$(val sparsity "$T/r1.json")" = 0.5 ] || fail "report sparsity $(val sparsity "$T/r1.json"), want 0.5"
[ "$(val mode "$T/r1.json")" = threshold ] || fail "report mode $(val mode "$T/r1.json")"
[ "$(val tau "$T/r1.json")" = 0.25 ] || fail "report tau $(val tau "$T/r1.json")"
tr -d '\n\t ' < "$T/r1.json" | grep -q '"targets":\["q_proj","v_proj"\]' || fail "report targets"
"$NLSR" run --config="$T/c.json" --sparsity 0.3 --targets k_proj --base "$B" --aligned "$A" \
    --finetuned "$F" --out "$T/o2" --report "$T/r2.json" || fail "run --config + override: exit $?"
[ "$(val sparsity "$T/r2.json")" = 0.3 ] || fail "the command line did not override the config"
[ "$(val mode "$T/r2.json")" = threshold ] || fail "the config's select was lost"
tr -d '\n\t ' < "$T/r2.json" | grep -q '"targets":\["k_proj"\]' || fail "--targets did not override"
# The override is the same realignment as giving everything on the command line.
"$NLSR" run -q --sparsity 0.3 --select threshold --tau 0.25 --targets k_proj --mem-budget 4G \
    --base "$B" --aligned "$A" --finetuned "$F" --out "$T/o3" || fail "run: exit $?"
for f in "$T/o3"/*.safetensors; do
    cmp -s "$f" "$T/o2/$(basename "$f")" || fail "config + override wrote other bytes than the command line"
done
# Paths from a config file: inputs, the output and the report.
cat > "$T/paths.json" <<JSON
{"base": "$B", "aligned": "$A", "finetuned": "$F", "out": "$T/o7", "report": "$T/r7.json",
 "sparsity": 0.3, "select": "threshold", "tau": 0.25, "targets": "k_proj", "mem-budget": "4G",
 "quiet": true}
JSON
"$NLSR" run --config "$T/paths.json" || fail "run with paths from --config: exit $?"
for f in "$T/o3"/*.safetensors; do
    cmp -s "$f" "$T/o7/$(basename "$f")" || fail "paths from a config: other bytes"
done
[ "$(val sparsity "$T/r7.json")" = 0.3 ] || fail "config report path: no report"
# Errors: an unknown key (named with the file), a bad value, a FIFO, a non-object: one line.
echo '{"sparsity": 0.5, "sparsty": 0.4}' > "$T/bad.json"
"$NLSR" run --config "$T/bad.json" --base "$B" --aligned "$A" --finetuned "$F" --out "$T/x" \
    > /dev/null 2> "$T/e"; s=$?
[ $s = 2 ] || fail "unknown config key: exit $s"
grep -q "bad.json.*sparsty" "$T/e" || fail "unknown key message: $(cat "$T/e")"
[ "$(wc -l < "$T/e")" = 1 ] || fail "unknown key: more than one line"
echo '{"sparsity": 7}' > "$T/bad2.json"
"$NLSR" prepare --config "$T/bad2.json" --base "$B" --aligned "$A" --out "$T/x.nlsrp" \
    > /dev/null 2> "$T/e"; [ $? = 2 ] || fail "config sparsity 7 accepted"
grep -q "bad2.json: sparsity must lie in \[0, 1\], got '7'" "$T/e" || fail "config bound: $(cat "$T/e")"
echo '[1, 2]' > "$T/bad3.json"
"$NLSR" amplify --config "$T/bad3.json" --aligned "$A" --out "$T/x" > /dev/null 2> "$T/e"
[ $? != 0 ] && [ "$(wc -l < "$T/e")" = 1 ] || fail "a non-object config: $(cat "$T/e")"
if mkfifo "$T/fifo" 2>/dev/null; then
    timeout 20 "$NLSR" run --config "$T/fifo" --base "$B" --aligned "$A" --finetuned "$F" \
        --out "$T/x" > /dev/null 2> "$T/e"; s=$?
    [ $s != 0 ] && [ $s != 124 ] || fail "a FIFO config: exit $s (124: it blocked)"
    grep -q "fifo" "$T/e" || fail "a FIFO config: $(cat "$T/e")"
fi
[ ! -e "$T/x" ] && [ ! -e "$T/x.nlsrp" ] || fail "a refused config left an output"

# -v prints the effective parameters (config and defaults) on stderr; -q the run's nothing.
"$NLSR" run -v -q --config "$T/c.json" --base "$B" --aligned "$A" --finetuned "$F" \
    --out "$T/o4" 2> "$T/e" || fail "run -v: exit $?"
grep -q "sparsity = 0.5$" "$T/e" || fail "-v: no sparsity line: $(cat "$T/e")"
grep -q "beta = 0.9 (default)" "$T/e" || fail "-v: no default beta line"
"$NLSR" amplify -q --base "$B" --aligned "$A" --out "$T/o5" 2> "$T/e" || fail "amplify -q"
[ ! -s "$T/e" ] || fail "-q printed: $(cat "$T/e")"
"$NLSR" amplify --threads=2 --base "$B" --aligned "$A" --out "$T/o6" -q || fail "amplify --threads"

if [ "$fails" -eq 0 ]; then echo "1 passed, 0 failed"; exit 0; fi
echo "0 passed, $fails failed"
exit 1
