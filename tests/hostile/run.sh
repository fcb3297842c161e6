#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The hostile-input suite: nlsr run as root over a store of other people's checkpoints, given
# links, FIFOs, hard links, planted temporary names, held locks, signals, truncated inputs,
# damaged state files and unwritable reports. One case per function (cases_*.sh); CTest runs
# each as its own test (tests/CMakeLists.txt).
# usage: run.sh NLSR_PROGRAM TESTS_DATA_DIR CASE   -> exit 0 pass, 1 fail, 77 skipped
#        run.sh --list                             -> the case names
# Environment: ASAN_OPTIONS/UBSAN_OPTIONS pass through to nlsr; NLSR_HOOKS (ON/OFF, from CMake)
# says whether the build has the NLSR_TEST_STOP_AT hook; NLSR_HOSTILE_TIMEOUT (seconds per
# command), NLSR_HOSTILE_TMP (where sandboxes go; default $TMPDIR or /tmp), NLSR_HOSTILE_KEEP=1
# (keep a failed case's sandbox).
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for f in "$HERE"/cases_*.sh; do . "$f"; done

if [ "${1:-}" = --list ]; then
    declare -F | sed -n 's/^declare -f case_//p'
    exit 0
fi
[ $# -eq 3 ] || { echo "usage: $0 NLSR DATA CASE | --list" >&2; exit 2; }
NLSR=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
DATA=$(cd "$2" && pwd)
CASE=$3
. "$HERE/lib.sh"
declare -F "case_$CASE" >/dev/null || { echo "no case $CASE" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || skip "these cases are about root (run them as root)"

# Sanitizer builds: keep the user's options, make sure reports reach stderr.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

new_sandbox
"case_$CASE"
if [ "$FAILS" -gt 0 ]; then
    echo "$CASE: $FAILS failure(s)" >&2
    exit 1
fi
echo "$CASE: pass"
exit 0
