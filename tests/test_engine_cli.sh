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

# A run's plan predicts its time with compute (docs/DESIGN.md "Predicted time"): the phases
# sum to the total, read + compute + write - overlap is the total, the rates are the ones
# given, phase A reads what the run plan says it reads beside the fine-tune's shards.
"$NLSR" synth --preset tiny --role finetuned --seed 3 --shard-size 300K --out "$T/f" -q
for mode in out in-place; do
    ip=; [ $mode = in-place ] && ip=--in-place
    "$NLSR" plan --base "$T/b" --aligned "$T/a" --finetuned "$T/f" $ip --bandwidth 1G,500M \
        --json > "$T/pp-$mode.json" || fail "plan --json $ip"
done
"$NLSR" plan --base "$T/b" --aligned "$T/a" --finetuned "$T/f" --bandwidth 1G,500M \
    > "$T/pp.txt" || fail "plan (text) with --finetuned"
grep -q '^predicted: about [0-9.]* s for the single pass = read ' "$T/pp.txt" ||
    fail "no predicted line: $(grep -i predict "$T/pp.txt")"
"$NLSR" plan --base "$T/b" --aligned "$T/a" --finetuned "$T/f" --no-time --json > "$T/pn.json"
if command -v python3 >/dev/null 2>&1; then
    python3 - "$T" <<'PY' || fail "prediction fields: see above"
import json, os, sys
T = sys.argv[1]
bad = []
def check(c, msg):
    if not c: bad.append(msg)
ft = sum(os.path.getsize(f"{T}/f/{n}") for n in os.listdir(f"{T}/f") if n.endswith(".safetensors"))
for mode, plan in (("out", "single pass"), ("in-place", "single pass in place")):
    d = json.load(open(f"{T}/pp-{mode}.json"))
    p = d.get("prediction")
    if not p:
        bad.append(f"{mode}: no prediction object"); continue
    check(p["plan"] == plan and d["run"]["plan"] == "single pass", f"{mode}: plan {p['plan']}")
    t = p["seconds"]
    check(t > 0, f"{mode}: seconds {t}")
    for k in ("read_s", "compute_s", "write_s", "overlap_s"):
        check(p[k] >= 0, f"{mode}: {k} {p[k]}")
    check(abs(p["read_s"] + p["compute_s"] + p["write_s"] - p["overlap_s"] - t) <= 1e-9 * t,
          f"{mode}: parts do not add up to {t}")
    check(abs(sum(x["seconds"] for x in p["phases"]) - t) <= 1e-9 * t, f"{mode}: phases")
    for x in p["phases"]:
        check(x["seconds"] <= x["read_s"] + x["compute_s"] + x["write_s"] + 1e-12 and
              x["seconds"] >= max(x["read_s"], x["compute_s"], x["write_s"]) - 1e-12,
              f"{mode}: phase {x['name']} overlaps to {x['seconds']}")
    r = p["rates"]
    check(r["read_bps"] == 1 << 30 and r["write_bps"] == 500 << 20 and r["disk_source"] == "given",
          f"{mode}: rates {r}")
    k = r["kernels"]
    check(all(v > 0 for v in k["pass1_elems_per_s"][:1] + [k["pass3_elems_per_s"], k["xxh64_bps"]]),
          f"{mode}: kernel rates {k}")
    a = p["phases"][0]
    check(a["name"] == "similarities" and a["read_bytes"] + ft == d["run"]["bytes_read"],
          f"{mode}: phase A reads {a['read_bytes']} + {ft} vs the run plan's {d['run']['bytes_read']}")
    check(abs(a["read_s"] - a["read_bytes"] / (1 << 30)) <= 1e-9, f"{mode}: phase A read time")
    b = p["phases"][1]
    if mode == "out":
        check(b["write_bytes"] == d["bytes_written"], f"out: writes {b['write_bytes']}")
    else:
        check(0 < b["write_bytes"] < d["bytes_written"], f"in place writes {b['write_bytes']}")
check("prediction" not in json.load(open(f"{T}/pn.json")), "--no-time still predicts")
for line in bad: print("FAIL:", line, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
fi

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
