#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# examples/systemd/nlsr-sweep.service and .timer pass `systemd-analyze verify` without a word
# (it exits 0 on some errors it only prints, so its output must be empty too), with the
# Documentation= page found: nlsr(1) from man/.
# usage: test_systemd_units.sh SOURCE_DIR. Exit 0 pass, 1 fail, 77 skip (no systemd-analyze).
set -u
SRC=$1
command -v systemd-analyze >/dev/null 2>&1 || { echo "SKIP: no systemd-analyze"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/nlsr-test-units-XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/units" "$T/man/man1"
cp "$SRC/examples/systemd/nlsr-sweep.service" "$SRC/examples/systemd/nlsr-sweep.timer" "$T/units/"
cp "$SRC/man/nlsr.1" "$T/man/man1/"
man_opt=--man=no
command -v man >/dev/null 2>&1 && man_opt=--man=yes
MANPATH="$T/man" systemd-analyze verify "$man_opt" "$T/units/nlsr-sweep.service" \
    "$T/units/nlsr-sweep.timer" >"$T/out" 2>&1
rc=$?
if [ "$rc" -eq 0 ] && [ ! -s "$T/out" ]; then
    echo "1 passed, 0 failed"
    exit 0
fi
echo "FAIL: systemd-analyze verify exited $rc:" >&2
cat "$T/out" >&2
echo "0 passed, 1 failed"
exit 1
