#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The case names registered in tests/CMakeLists.txt (arguments) are exactly the case_* functions
# of tests/hostile/cases_*.sh: a case written but not registered would never run.
set -u
want=$(printf '%s\n' "$@" | LC_ALL=C sort)
have=$(bash "$(dirname "$0")/run.sh" --list | LC_ALL=C sort)
[ "$want" = "$have" ] && exit 0
echo "tests/CMakeLists.txt NLSR_HOSTILE_CASES and the case_* functions differ:" >&2
diff <(echo "$want") <(echo "$have") >&2
exit 1
