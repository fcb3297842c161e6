#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# The shared library's ABI is include/nlsr.h and nothing else: `nm -D --defined-only` on
# libnlsr.so lists only nlsr_* names, each one a function the header declares, and every
# function the header declares is exported. The header's functions come from the compiler
# (gcc -aux-info writes every prototype it parsed), not from the version script's own parser.
# usage: test_exports.sh LIBNLSR_SO NLSR_H. Exit 0 pass, 1 fail, 77 skip (no gcc or nm).
set -u
LIB=$1
HEADER=$2
command -v nm >/dev/null 2>&1 || { echo "SKIP: no nm"; exit 77; }
command -v gcc >/dev/null 2>&1 || { echo "SKIP: no gcc (for -aux-info)"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/nlsr-test-exports-XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
fails=0
fail() {
    echo "FAIL: $*" >&2
    fails=$((fails + 1))
}

gcc -std=c11 -aux-info "$T/aux" -fsyntax-only -x c "$HEADER" || { fail "gcc cannot parse $HEADER"; exit 1; }
# Lines look like: /* /path/include/nlsr.h:38:NC */ extern const char *nlsr_strerror (int);
grep "$(basename "$HEADER"):[0-9]*:" "$T/aux" | sed 's/^\/\*[^*]*\*\/ *//' |
    sed -n 's/.*[^a-zA-Z0-9_]\([a-zA-Z_][a-zA-Z0-9_]*\) *(.*/\1/p' | sort -u >"$T/declared"
nm -D --defined-only "$LIB" | awk '{ print $NF }' | sort -u >"$T/exported"

[ "$(wc -l <"$T/declared")" -ge 40 ] || fail "only $(wc -l <"$T/declared") functions found in $HEADER"
[ -s "$T/exported" ] || fail "$LIB exports nothing"
grep -v '^nlsr_' "$T/declared" | while read -r n; do echo "FAIL: $HEADER declares $n, without the nlsr_ prefix" >&2; done
grep -v '^nlsr_' "$T/declared" | grep -q . && fails=$((fails + 1))
for n in $(grep -v '^nlsr_' "$T/exported"); do fail "$LIB exports $n, not an nlsr_ name"; done
for n in $(comm -23 "$T/exported" "$T/declared" | grep '^nlsr_'); do
    fail "$LIB exports $n, which $HEADER does not declare"
done
for n in $(comm -13 "$T/exported" "$T/declared"); do fail "$HEADER declares $n, which $LIB does not export"; done

echo "exports: $(wc -l <"$T/exported") symbols, header: $(wc -l <"$T/declared") functions"
if [ "$fails" -eq 0 ]; then echo "1 passed, 0 failed"; exit 0; fi
echo "0 passed, $fails failed"
exit 1
