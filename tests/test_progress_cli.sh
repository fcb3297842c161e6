#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# The program's printer (README "Progress and logs"): with stderr in a file, one plain line per
# progress update at the interval (--progress-interval 0: every update) and a "done" line per
# phase, in the phases' order; on a terminal (script(1) gives one) a bar redrawn in place; -q
# prints neither, but warnings still. Tiny fixtures: the interval 0 makes a short job report
# many times, deterministically.
# usage: test_progress_cli.sh NLSR_PROGRAM TESTS_DATA_DIR. Exit 0 pass, 1 fail, 77 skip (no
# script(1)).
set -u
NLSR=$1
FX=$2/hf-tiny-llama
command -v script >/dev/null 2>&1 || { echo "SKIP: no script (util-linux)"; exit 77; }
BASE=/tmp
[ -w /dev/shm ] && BASE=/dev/shm
T=$(mktemp -d "$BASE/nlsr-test-progress-XXXXXX") || exit 1
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
count() { grep -c -E "$1" "$2"; } # REGEX FILE: matching lines
line_of() { grep -n -E "$1" "$2" | head -n 1 | cut -d: -f1; } # first matching line number
RUN="--base $FX/sft --aligned $FX/aligned --finetuned $FX/finetuned"

# stderr in a file, every update: "nlsr: run: similarities 130.50 KiB of 1.62 MiB (7%, 1 of
# 21 units), 24.29 MiB/s, ETA 1 s", then "nlsr: run: similarities done: ...", then output.
"$NLSR" run $RUN --progress-interval 0 --out "$T/o1" 2>"$T/e1"
check run_exit test $? -eq 0
SIZE='[0-9.]+ (B|KiB|MiB)'
SIM="^nlsr: run: similarities $SIZE of $SIZE \\([0-9]+%, [0-9]+ of 21 units\\), $SIZE/s, ETA [0-9]+ s$"
check similarities_lines test "$(count "$SIM" "$T/e1")" -ge 5
OUT="^nlsr: run: output $SIZE of $SIZE \\([0-9]+%, [0-9]+ of [0-9]+ units\\), $SIZE/s, ETA [0-9]+ s$"
check output_lines test "$(count "$OUT" "$T/e1")" -ge 3
check similarities_done test "$(count '^nlsr: run: similarities done: ' "$T/e1")" -eq 1
check output_done test "$(count '^nlsr: run: output done: ' "$T/e1")" -eq 1
s_done=$(line_of '^nlsr: run: similarities done' "$T/e1")
o_first=$(line_of '^nlsr: run: output ' "$T/e1")
o_done=$(line_of '^nlsr: run: output done' "$T/e1")
summary=$(line_of '^nlsr run: patched 10 of 21 target modules' "$T/e1")
check phase_order test "${s_done:-0}" -lt "${o_first:-0}"
check summary_after test "${o_done:-0}" -lt "${summary:-0}"
check no_carriage_return sh -c "! grep -q \"\$(printf '\\r')\" '$T/e1'"
check last_similarities_full grep -q -E "^nlsr: run: similarities ($SIZE) of \\1 \\(100%, 21 of 21 units\\)" "$T/e1"

# The patch-file plan (a test hook): prepare, then the apply's similarities and output.
if [ "${NLSR_HOOKS:-ON}" = ON ]; then
    NLSR_RUN_PLAN=patch-file "$NLSR" run $RUN --progress-interval=0 --out "$T/o2" 2>"$T/e2"
    check pf_exit test $? -eq 0
    p_done=$(line_of '^nlsr: run: prepare done' "$T/e2")
    s_first=$(line_of '^nlsr: run: similarities ' "$T/e2")
    check pf_prepare_lines test "$(count "^nlsr: run: prepare $SIZE of" "$T/e2")" -ge 5
    check pf_order test "${p_done:-0}" -gt 0 -a "${p_done:-0}" -lt "${s_first:-0}"
    check pf_output_done test "$(count '^nlsr: run: output done: ' "$T/e2")" -eq 1
fi

# In place, the single pass (whole modules, then row blocks at 3M): the same two phases, the
# output counting the patched tensors' bytes merged through the journal (10 tensors).
for b in auto 3M; do
    rm -rf "$T/ip$b" && cp -r "$FX/finetuned" "$T/ip$b"
    "$NLSR" run --base "$FX/sft" --aligned "$FX/aligned" --finetuned "$T/ip$b" --in-place \
        --mem-budget $b --progress-interval 0 >/dev/null 2>"$T/eip$b"
    check "ip_${b}_exit" test $? -eq 0
    check "ip_${b}_similarities" test "$(count "^nlsr: run: similarities $SIZE of $SIZE \\([0-9]+%, [0-9]+ of 21 units\\)" "$T/eip$b")" -ge 5
    check "ip_${b}_output" test "$(count "^nlsr: run: output $SIZE of $SIZE \\([0-9]+%, [0-9]+ of 10 units\\)" "$T/eip$b")" -ge 3
    check "ip_${b}_done" test "$(count '^nlsr: run: (similarities|output) done: ' "$T/eip$b")" -eq 2
    s_done=$(line_of '^nlsr: run: similarities done' "$T/eip$b")
    o_first=$(line_of '^nlsr: run: output ' "$T/eip$b")
    check "ip_${b}_order" test "${s_done:-0}" -gt 0 -a "${s_done:-0}" -lt "${o_first:-0}"
done

# The default interval (10 s) on a job shorter than that: the phases' "done" lines only.
"$NLSR" run $RUN --out "$T/o3" 2>"$T/e3"
check default_exit test $? -eq 0
check default_no_updates test "$(count 'ETA' "$T/e3")" -eq 0
check default_done test "$(count '^nlsr: run: (similarities|output) done: ' "$T/e3")" -eq 2

# Other jobs: synth and prepare report their phases too.
"$NLSR" synth --progress-interval 0 --preset tiny --role base --out "$T/syn" 2>"$T/e4"
check synth_exit test $? -eq 0
check synth_lines test "$(count "^nlsr: synth: write $SIZE of $SIZE" "$T/e4")" -ge 2
check synth_done test "$(count '^nlsr: synth: write done: ' "$T/e4")" -eq 1

# -q: neither progress nor summary.
"$NLSR" run $RUN --progress-interval 0 --out "$T/o5" -q 2>"$T/e5"
check quiet_exit test $? -eq 0
check quiet_silent test ! -s "$T/e5"

# A terminal: the bar, redrawn in place ("\r"), with the job, phase, bytes, rate and ETA; the
# summary after it.
script -qfec "'$NLSR' run $RUN --progress-interval 0 --out '$T/o6'" /dev/null >"$T/tty" 2>&1
check tty_exit test -d "$T/o6"
check tty_bar grep -q -E "run similarities \\[[#.]{24}\\] $SIZE / $SIZE  $SIZE/s  ETA" "$T/tty"
check tty_output_bar grep -q -E "run output \\[[#.]{24}\\]" "$T/tty"
check tty_redrawn test "$(tr -cd '\r' <"$T/tty" | wc -c)" -ge 10
check tty_no_lines test "$(count '^nlsr: run: similarities [0-9]' "$T/tty")" -eq 0
check tty_summary grep -q 'nlsr run: patched 10 of 21 target modules' "$T/tty"
script -qfec "'$NLSR' run $RUN --progress-interval 0 --out '$T/o7' -q" /dev/null >"$T/ttyq" 2>&1
check tty_quiet test "$(tr -d '\r\n' <"$T/ttyq" | wc -c)" -eq 0

# Warnings print with -q: a rollback that removes a damaged state file says so.
rm -rf "$T/ip" && cp -r "$FX/finetuned" "$T/ip"
"$NLSR" run --base "$FX/sft" --aligned "$FX/aligned" --finetuned "$T/ip" --in-place -q >/dev/null 2>&1
printf '{ not json' >"$T/ip/.nlsr-state.json"
"$NLSR" rollback "$T/ip" -q >/dev/null 2>"$T/e8"
check warn_exit test $? -eq 0
check warn_printed grep -q '^nlsr: warning: .*the rollback is complete, so it was removed' "$T/e8"

rm -rf "$T"
echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
