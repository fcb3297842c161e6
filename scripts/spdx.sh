#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Puts the license line `SPDX-License-Identifier: Apache-2.0` at the top of every source file
# that lacks it (after a #! line and a Python coding line, as a comment of the file's kind),
# and changes nothing else. --check only lists the files that lack it (exit 1 if any).
set -euo pipefail
cd "$(dirname "$0")/.."
LINE='SPDX-License-Identifier: Apache-2.0'
check=0
[[ ${1-} == --check ]] && check=1

# The files: C sources and headers of the library, program, tests, fuzz targets, benchmarks and
# examples; shell and Python scripts; the completion, the crontab and the systemd units.
mapfile -t files < <(git ls-files -- 'src/*.c' 'src/*.h' 'include/*.h' 'tests/*.c' 'tests/*.h' \
    'fuzz/*.c' 'bench/*.c' 'examples/*.c' '*.sh' '*.py' .ci/run completions/nlsr \
    examples/crontab 'examples/systemd/*' | sort -u)

missing=0
for f in "${files[@]}"; do
    [[ -f $f ]] || continue
    head -n 5 "$f" | grep -q "$LINE" && continue
    missing=$((missing + 1))
    if ((check)); then
        echo "$f"
        continue
    fi
    case $f in
    *.c | *.h) comment="/* $LINE */" ;;
    *) comment="# $LINE" ;;
    esac
    # Lines that must stay first: a #! line, then (Python) a coding declaration.
    keep=0
    first=$(sed -n 1p "$f")
    [[ $first == '#!'* ]] && keep=1
    if [[ $f == *.py ]] && sed -n "$((keep + 1))p" "$f" | grep -Eq '^#.*coding[:=]'; then
        keep=$((keep + 1))
    fi
    tmp=$(mktemp "$f.XXXXXX")
    { head -n "$keep" "$f"; printf '%s\n' "$comment"; tail -n "+$((keep + 1))" "$f"; } >"$tmp"
    chmod --reference="$f" "$tmp"
    mv "$tmp" "$f"
done
if ((check)); then
    ((missing == 0)) || { echo "$missing file(s) without '$LINE'" >&2; exit 1; }
    exit 0
fi
echo "added '$LINE' to $missing file(s)"
