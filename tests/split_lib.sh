# SPDX-License-Identifier: Apache-2.0
# Shared by the split jobs' shell tests (test_split_cli.sh, test_split_apply_cli.sh,
# test_split_run_cli.sh): sourced, not run.

fail() { echo "FAIL: $*"; exit 1; }

# Two output folders hold the same files with the same bytes (the marker file aside).
cmpdir() {
    [ "$(cd "$1" && ls)" = "$(cd "$2" && ls)" ] || return 1
    for f in "$1"/*; do cmp -s "$f" "$2/$(basename "$f")" || return 1; done
}

# expect STATUS PATTERN CMD...: the exit status and a pattern of its stderr.
expect() {
    local want=$1 pat=$2
    shift 2
    "$@" >out.txt 2>err.txt
    local got=$?
    [ "$got" = "$want" ] || fail "$* exited $got, not $want: $(cat err.txt)"
    grep -qE -- "$pat" err.txt || fail "$*: stderr lacks '$pat': $(cat err.txt)"
}
