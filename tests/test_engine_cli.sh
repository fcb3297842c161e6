#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# The engine commands through the nlsr program: synth, amplify, plan. Usage:
#   test_engine_cli.sh NLSR TEST_DATA
set -eu
NLSR=$1
DATA=$2/hf-tiny-llama
T=$(mktemp -d /tmp/nlsr-engine-cli.XXXXXX)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
# A number from a JSON object: the first "key": value.
num() { tr -d '\n' < "$2" | sed -n "s/.*\"$1\":[[:space:]]*\([0-9.e+]*\).*/\1/p"; }
str() { tr -d '\n' < "$2" | sed -n "s/.*\"$1\":[[:space:]]*\"\([^\"]*\)\".*/\1/p"; }
same_dir() { for f in "$1"/*; do cmp -s "$f" "$2/$(basename "$f")" || return 1; done; }

# synth: sharded differently per role, deterministic.
"$NLSR" synth --preset tiny --role base --seed 3 --shard-size 300K --out "$T/b" -q
"$NLSR" synth --preset tiny --role aligned --seed 3 --shard-size 200K --out "$T/a" -q
"$NLSR" synth --preset tiny --role aligned --seed 3 --shard-size 200K --out "$T/a2" -q --io mmap
[ -f "$T/a/model.safetensors.index.json" ] || fail "synth wrote no index"
[ -f "$T/a/config.json" ] || fail "synth wrote no config.json"
same_dir "$T/a" "$T/a2" || fail "synth is not deterministic across backends"

# An output under folders that do not exist yet: they are created (mkdir -p), the output is
# the same as anywhere else.
"$NLSR" synth --preset tiny --role base --seed 3 --shard-size 300K --out "$T/new/deeper/b" -q
same_dir "$T/b" "$T/new/deeper/b" || fail "synth into new parent folders differs"
"$NLSR" prepare --base "$DATA/sft" --aligned "$DATA/aligned" --out "$T/new2/p/x.nlsrp" -q
[ -s "$T/new2/p/x.nlsrp" ] || fail "prepare into new parent folders wrote no patch file"

# plan --json and the run's --json summary agree on bytes (the spec allows 1%; they are equal).
"$NLSR" plan --base "$T/b" --aligned "$T/a" --mem-budget 512K --bandwidth 1G,500M --json > "$T/plan.json"
"$NLSR" amplify --base "$T/b" --aligned "$T/a" --out "$T/o" --mem-budget 512K --json -q > "$T/run.json"
for k in bytes_read bytes_written; do
    p=$(num $k "$T/plan.json"); r=$(num $k "$T/run.json")
    [ -n "$p" ] && [ "$p" = "$r" ] || fail "plan $k=$p but the run's is $r"
done
[ "$(num peak_rss_bytes "$T/run.json")" -gt 0 ] || fail "no peak RSS in the summary"
[ "$(str backend "$T/run.json")" = io_uring ] || fail "backend $(str backend "$T/run.json")"
# io_backend, the key every command's JSON uses (the report's too), says the same.
[ "$(str io_backend "$T/run.json")" = io_uring ] || fail "io_backend $(str io_backend "$T/run.json")"
for io in uring pread mmap; do
    "$NLSR" plan --base "$T/b" --aligned "$T/a" --mem-budget 512K --measure-read --io $io \
        --json -q > "$T/read.json"
    [ "$(num bytes_read "$T/read.json")" = "$(num bytes_read "$T/plan.json")" ] ||
        fail "--measure-read --io $io read $(num bytes_read "$T/read.json") bytes"
done
"$NLSR" plan --base "$T/b" --aligned "$T/a" --bandwidth 1G > "$T/plan.txt"
grep -q '^units:' "$T/plan.txt" || fail "human plan has no units line"
grep -q 'read ranges' "$T/plan.txt" || fail "human plan has no read ranges"

# Every backend writes the same bytes; -q prints nothing on stderr.
for io in pread mmap uring; do
    "$NLSR" amplify --base "$T/b" --aligned "$T/a" --out "$T/o-$io" --io $io -q 2> "$T/err"
    [ ! -s "$T/err" ] || fail "-q printed: $(cat "$T/err")"
    same_dir "$T/o" "$T/o-$io" || fail "--io $io wrote other bytes"
done

# Fallback: io_uring refused as under Docker's seccomp profile -> pread, said once, same bytes
# (forced with a test hook: builds with -DNLSR_TEST_HOOKS=ON only).
if [ "${NLSR_HOOKS:-ON}" = ON ]; then
NLSR_IO_FAULT=uring-setup "$NLSR" amplify --base "$T/b" --aligned "$T/a" --out "$T/o-fb" \
    --json > "$T/fb.json" 2> "$T/fb.err"
grep -q 'using pread' "$T/fb.err" || fail "no fallback notice: $(cat "$T/fb.err")"
[ "$(grep -c 'io_uring unavailable' "$T/fb.err")" = 1 ] || fail "notice not said once"
[ "$(str backend "$T/fb.json")" = pread ] || fail "fallback backend $(str backend "$T/fb.json")"
[ "$(str io_backend "$T/fb.json")" = pread ] || fail "fallback io_backend $(str io_backend "$T/fb.json")"
same_dir "$T/o" "$T/o-fb" || fail "fallback wrote other bytes"
# Quiet: a step-down is a notice, not a warning, so -q keeps it off stderr.
NLSR_IO_FAULT=uring-setup "$NLSR" amplify --base "$T/b" --aligned "$T/a" --out "$T/o-fbq" \
    -q 2> "$T/fbq.err"
[ ! -s "$T/fbq.err" ] || fail "-q printed the step-down: $(cat "$T/fbq.err")"
else
    echo "skipped the forced step-down (a build without -DNLSR_TEST_HOOKS=ON)"
fi

# The fixtures: amplify runs; an existing output is refused; bad options are usage errors.
"$NLSR" amplify --base "$DATA/sft" --aligned "$DATA/aligned" --out "$T/fx" -q
set +e
"$NLSR" amplify --base "$DATA/sft" --aligned "$DATA/aligned" --out "$T/fx" -q 2> "$T/err"
[ $? = 1 ] || fail "existing output not refused"
"$NLSR" amplify --base "$DATA/sft" --aligned "$DATA/aligned" --out "$T/x" --io nope 2> "$T/err"
[ $? = 2 ] || fail "--io nope is not a usage error"
"$NLSR" amplify --base "$DATA/sft" --aligned "$DATA/aligned" --out "$T/x" --mem-budget 1Q 2> "$T/err"
[ $? = 2 ] || fail "--mem-budget 1Q is not a usage error"
"$NLSR" amplify --base "$DATA/sft" --aligned "$DATA/aligned" --out "$T/x" --mem-budget 40K 2> "$T/err"
[ $? = 1 ] || fail "a 40K budget was not refused"
grep -q 'at least' "$T/err" || fail "budget refusal does not name the minimum: $(cat "$T/err")"
[ ! -e "$T/x" ] || fail "a refused run left an output"
set -e

# The default budget is auto: derived from the machine, said in the run's report with the plan
# it allowed; an explicit budget is kept as given, a hard limit.
"$NLSR" run --base "$DATA/sft" --aligned "$DATA/aligned" --finetuned "$DATA/finetuned" \
    --out "$T/ra" --json -q > "$T/ra.json"
[ "$(str mem_budget "$T/ra.json")" = auto ] || fail "default budget is not auto: $(cat "$T/ra.json")"
str mem_budget_reason "$T/ra.json" | grep -q 'MemAvailable\|cgroup\|default' ||
    fail "auto budget without a reason"
[ "$(num mem_budget_bytes "$T/ra.json")" -ge 268435456 ] || fail "auto budget below the floor"
[ "$(str plan "$T/ra.json")" = "single pass" ] || fail "auto budget did not take the single pass"
"$NLSR" run --base "$DATA/sft" --aligned "$DATA/aligned" --finetuned "$DATA/finetuned" \
    --out "$T/rg" --mem-budget 6M --json -q > "$T/rg.json"
[ "$(str mem_budget "$T/rg.json")" = given ] || fail "an explicit budget is reported as $(str mem_budget "$T/rg.json")"
[ "$(num mem_budget_bytes "$T/rg.json")" = 6291456 ] || fail "explicit budget not kept"
[ "$(num budget_peak_bytes "$T/rg.json")" -le 6291456 ] || fail "explicit budget passed"
"$NLSR" run --base "$DATA/sft" --aligned "$DATA/aligned" --finetuned "$DATA/finetuned" \
    --out "$T/rb" --mem-budget auto 2> "$T/rb.err"
grep -q '^  budget auto: .*; plan: single pass' "$T/rb.err" || fail "summary: $(cat "$T/rb.err")"
echo "test_engine_cli: ok"
