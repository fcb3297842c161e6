#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# The store sweep examples do what they say: examples/crontab's job line and
# examples/systemd/nlsr-sweep.service's ExecStart= line, run as written by /bin/sh with cron's
# short environment, only their paths moved to a temporary store (two copies of the fixtures'
# fine-tune), patches (prepared from sft and aligned) and log folder. Each realigns every
# checkpoint of the store in place, bit-identical to `nlsr apply --out`, writes its JSON summary
# where it says, and a second run skips them all.
# usage: test_sweep_examples.sh NLSR_PROGRAM SOURCE_DIR TESTS_DATA_DIR. Exit 0 pass, 1 fail.
set -u
NLSR=$1
SRC=$2
FX=$3/hf-tiny-llama
BASE=${TMPDIR:-/tmp}
[ -w /dev/shm ] && BASE=/dev/shm # the in-place runs fsync: a memory file system keeps it fast
T=$(mktemp -d "$BASE/nlsr-test-sweep-XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
BINDIR=$(cd "$(dirname "$NLSR")" && pwd)
[ "$(basename "$NLSR")" = nlsr ] || { echo "the program must be named nlsr" >&2; exit 1; }
fails=0
passes=0
ok() { passes=$((passes + 1)); }
fail() {
    echo "FAIL: $*" >&2
    fails=$((fails + 1))
}

"$NLSR" prepare --base "$FX/sft" --aligned "$FX/aligned" --out "$T/patches.nlsrp" -q || exit 1
"$NLSR" apply --patches "$T/patches.nlsrp" --finetuned "$FX/finetuned" --out "$T/ref" -q || exit 1

# The paths the examples use, moved under $T.
move_paths() {
    sed -e "s|/models/llama3-8b.nlsrp|$T/patches.nlsrp|g" -e "s|/models/store|$T/store|g" \
        -e "s|/var/log/nlsr|$T/log|g" -e "s|/usr/local/bin/nlsr|$BINDIR/nlsr|g"
}

new_store() {
    rm -rf "$T/store" "$T/log"
    mkdir -p "$T/store"
    for name in a b; do cp -R "$FX/finetuned" "$T/store/$name"; done
}

realigned_store() { # NAME: every checkpoint of the store equals the --out reference
    for name in a b; do
        for f in "$T/ref"/*; do
            cmp -s "$f" "$T/store/$name/$(basename "$f")" || {
                fail "$1: $name/$(basename "$f") differs from nlsr apply --out"
                return
            }
        done
    done
    ok
}

summary_says() { # NAME FILE STATUS: the JSON summary lists both checkpoints with STATUS
    if python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
st = sorted(c["status"] for c in s["checkpoints"])
sys.exit(0 if st == [sys.argv[2]] * 2 and s["summary"]["failed"] == 0 else 1)' "$2" "$3" 2>/dev/null; then
        ok
    elif ! command -v python3 >/dev/null 2>&1 && [ "$(grep -c "\"status\": \"$3\"" "$2")" -eq 2 ]; then
        ok
    else
        fail "$1: $2 does not list both checkpoints as $3"
        cat "$2" >&2
    fi
}

# ---- examples/crontab ---------------------------------------------------------------------
CRONTAB=$SRC/examples/crontab
cron_path=$(sed -n 's/^PATH=//p' "$CRONTAB")
# The job: the first line starting with a time field; the command is everything after the five
# times. cron turns an unescaped % into a newline and \% into %.
job=$(grep -E '^[0-9*@]' "$CRONTAB" | head -n 1)
cmd=$(printf '%s\n' "$job" | sed -E 's/^([^ ]+ +){5}//')
if printf '%s\n' "$cmd" | sed 's/\\%//g' | grep -q %; then fail "crontab: an unescaped % in the job"; fi
cmd=$(printf '%s\n' "$cmd" | sed 's/\\%/%/g' | move_paths)
case $cmd in *"$T/store/"*) ok ;; *) fail "crontab: the job does not sweep /models/store" ;; esac

new_store
env -i HOME="$T" PATH="$BINDIR:$cron_path" SHELL=/bin/sh sh -c "$cmd"
rc=$?
[ "$rc" -eq 0 ] && ok || fail "crontab: the job exited $rc ($(cat "$T/log/sweep.log" 2>/dev/null))"
json="$T/log/sweep-$(date +%F).json"
if [ -s "$json" ]; then
    ok
    summary_says crontab "$json" realigned
else
    fail "crontab: no $json"
fi
realigned_store crontab
# One line per checkpoint on the log (stderr with --json, -q keeps only these).
[ "$(grep -c ': realigned: ' "$T/log/sweep.log" 2>/dev/null)" -eq 2 ] && ok ||
    fail "crontab: sweep.log has not one line per checkpoint"
# The next night: nothing to do, exit 0.
env -i HOME="$T" PATH="$BINDIR:$cron_path" SHELL=/bin/sh sh -c "$cmd"
rc=$?
[ "$rc" -eq 0 ] && ok || fail "crontab: the second run exited $rc"
summary_says "crontab (second run)" "$json" already
realigned_store "crontab (second run)"

# ---- examples/systemd/nlsr-sweep.service's ExecStart= --------------------------------------
exec_line=$(sed -n 's/^ExecStart=//p' "$SRC/examples/systemd/nlsr-sweep.service" | move_paths)
case $exec_line in
"/bin/sh -c '"*"'") ok ;;
*) fail "service: ExecStart= is not one /bin/sh -c '...' line: $exec_line" ;;
esac
inner=${exec_line#/bin/sh -c \'}
inner=${inner%\'}
new_store
mkdir -p "$T/log"
env -i HOME="$T" PATH=/usr/bin:/bin /bin/sh -c "$inner" >"$T/log/service.json" 2>"$T/log/service.err"
rc=$?
[ "$rc" -eq 0 ] && ok || fail "service: ExecStart exited $rc ($(cat "$T/log/service.err"))"
summary_says service "$T/log/service.json" realigned
realigned_store service

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
