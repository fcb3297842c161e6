#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# nlsr installs like a C library (README "Install"): `cmake --install` into a temporary prefix,
# moved elsewhere afterwards (nlsr.pc and the CMake package are relocatable), gives the program,
# libnlsr.so.0 (SONAME libnlsr.so.0) and libnlsr.a, the header, nlsr.pc, the CMake package, the
# man pages and the bash completion. examples/api.c is built against it four ways (pkg-config
# shared and static, find_package(nlsr) with nlsr::nlsr and nlsr::nlsr_static), each one runs
# on the fixtures (sft = base, aligned, finetuned), says as many patched modules as its report
# holds, and writes the same checkpoint as the installed `nlsr run`. Both man pages render
# without a warning.
# usage: test_install.sh BUILD_DIR SOURCE_DIR TESTS_DATA_DIR (env CC, CMAKE: the build's own).
# Exit 0 pass, 1 fail, 77 skip (no pkg-config).
set -u
BUILD=$(cd "$1" && pwd)
SRC=$(cd "$2" && pwd)
FX=$(cd "$3" && pwd)/hf-tiny-llama
CC=${CC:-cc}
CMAKE=${CMAKE:-cmake}
command -v pkg-config >/dev/null 2>&1 || { echo "SKIP: no pkg-config"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/nlsr-test-install-XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
fails=0
passes=0
ok() { passes=$((passes + 1)); }
fail() {
    echo "FAIL: $*" >&2
    fails=$((fails + 1))
}
check() { # NAME COMMAND...
    name=$1
    shift
    if "$@" >"$T/check.log" 2>&1; then ok; else
        fail "$name"
        sed 's/^/    /' "$T/check.log" >&2
    fi
}

# Installed to one prefix, used from another.
"$CMAKE" --install "$BUILD" --prefix "$T/staged" >"$T/install.log" 2>&1 || {
    cat "$T/install.log" >&2
    fail "cmake --install"
    exit 1
}
mv "$T/staged" "$T/prefix"
P=$T/prefix
LIBDIR=$(dirname "$(find "$P" -name libnlsr.so.0 | head -n 1)")
[ -n "$LIBDIR" ] && [ "$LIBDIR" != . ] || { fail "no libnlsr.so.0 installed"; exit 1; }

for f in bin/nlsr include/nlsr.h share/man/man1/nlsr.1 share/man/man3/nlsr.3 \
    share/bash-completion/completions/nlsr share/doc/nlsr/LICENSE; do
    if [ -f "$P/$f" ]; then ok; else fail "$f not installed"; fi
done
for f in libnlsr.a libnlsr.so libnlsr.so.0 pkgconfig/nlsr.pc cmake/nlsr/nlsrConfig.cmake \
    cmake/nlsr/nlsrConfigVersion.cmake cmake/nlsr/nlsrTargets.cmake; do
    if [ -e "$LIBDIR/$f" ]; then ok; else fail "lib/$f not installed"; fi
done
VERSION=$("$P/bin/nlsr" --version | sed 's/^nlsr //')
if [ -e "$LIBDIR/libnlsr.so.$VERSION" ]; then ok; else fail "no libnlsr.so.$VERSION"; fi
if command -v objdump >/dev/null 2>&1; then
    soname=$(objdump -p "$LIBDIR/libnlsr.so" | awk '$1 == "SONAME" { print $2 }')
    if [ "$soname" = "libnlsr.so.${VERSION%%.*}" ]; then ok; else fail "SONAME is '$soname'"; fi
fi

export PKG_CONFIG_PATH="$LIBDIR/pkgconfig"
if [ "$(pkg-config --modversion nlsr)" = "$VERSION" ]; then ok; else
    fail "pkg-config --modversion nlsr: $(pkg-config --modversion nlsr), nlsr --version: $VERSION"
fi
# The prefix comes from where nlsr.pc lies now, not from where it was installed.
if pkg-config --cflags nlsr | grep -q staged; then fail "nlsr.pc names the install prefix"; else ok; fi

# The reference: the installed program's own run.
"$P/bin/nlsr" run --base "$FX/sft" --aligned "$FX/aligned" --finetuned "$FX/finetuned" \
    --out "$T/ref" --report "$T/ref.json" -q || fail "nlsr run"

patched_in() { # REPORT: the number of modules the report says were patched
    python3 -c 'import json, sys; print(sum(1 for m in json.load(open(sys.argv[1]))["modules"] if m["patched"]))' "$1" 2>/dev/null ||
        tr -d ' \t\n' <"$1" | grep -o '"patched":true' | wc -l
}
NREF=$(patched_in "$T/ref.json")
[ "$NREF" -gt 0 ] || fail "the reference run patched nothing ($NREF)"

# try NAME PROGRAM SHARED(yes|no): runs the built example and checks what it did.
try() {
    name=$1 prog=$2 shared=$3
    [ -x "$prog" ] || { fail "$name: not built"; return; }
    if command -v objdump >/dev/null 2>&1; then
        needed=$(objdump -p "$prog" | awk '$1 == "NEEDED" && $2 ~ /^libnlsr/ { print $2 }')
        if [ "$shared" = yes ] && [ "$needed" != libnlsr.so.0 ]; then
            fail "$name: needs '$needed', not libnlsr.so.0"
        elif [ "$shared" = no ] && [ -n "$needed" ]; then
            fail "$name: linked statically but needs $needed"
        else ok; fi
    fi
    rm -rf "$T/out-$name" "$T/out-$name.json"
    if ! LD_LIBRARY_PATH="$LIBDIR" "$prog" "$FX/sft" "$FX/aligned" "$FX/finetuned" \
        "$T/out-$name" "$T/out-$name.json" >"$T/$name.log" 2>&1; then
        fail "$name: exit status $?"
        sed 's/^/    /' "$T/$name.log" >&2
        return
    fi
    said=$(sed -n 's/^patched modules: //p' "$T/$name.log")
    n=$(patched_in "$T/out-$name.json")
    if [ "$said" = "$n" ] && [ "$n" = "$NREF" ]; then ok; else
        fail "$name: printed '$said' patched modules, its report has $n, nlsr run's $NREF"
    fi
    if grep -q "^libnlsr $VERSION " "$T/$name.log"; then ok; else fail "$name: nlsr_version()"; fi
    # The progress callback: the single pass's two phases ended, in order.
    if [ "$(sed -n 's/^run \([a-z]*\): done.*/\1/p' "$T/$name.log" | tr '\n' ' ')" = \
        "similarities output " ]; then ok; else fail "$name: progress phases"; fi
    same=yes
    for f in "$T/ref"/*; do
        cmp -s "$f" "$T/out-$name/$(basename "$f")" || same=no
    done
    if [ "$same" = yes ]; then ok; else fail "$name: output differs from nlsr run's"; fi
}

# pkg-config, shared: the plain `pkg-config --cflags --libs nlsr` line.
"$CC" -Wall -Wextra -Werror -o "$T/api-pc-shared" "$SRC/examples/api.c" \
    $(pkg-config --cflags --libs nlsr) >"$T/cc.log" 2>&1 || { fail "pkg-config shared build"; cat "$T/cc.log" >&2; }
try pc-shared "$T/api-pc-shared" yes
# pkg-config, static: --static adds the private dependencies; -l:libnlsr.a picks the archive.
"$CC" -Wall -Wextra -Werror -o "$T/api-pc-static" "$SRC/examples/api.c" $(pkg-config --cflags nlsr) \
    $(pkg-config --static --libs nlsr | sed 's/-lnlsr\b/-l:libnlsr.a/') \
    >"$T/cc.log" 2>&1 || { fail "pkg-config static build"; cat "$T/cc.log" >&2; }
try pc-static "$T/api-pc-static" no
# find_package(nlsr): examples/CMakeLists.txt, with nlsr::nlsr and nlsr::nlsr_static.
for kind in shared static; do
    st=OFF
    [ "$kind" = static ] && st=ON
    if "$CMAKE" -S "$SRC/examples" -B "$T/cmake-$kind" -DCMAKE_PREFIX_PATH="$P" \
        -DCMAKE_C_COMPILER="$CC" -DNLSR_STATIC=$st >"$T/cmake.log" 2>&1 &&
        "$CMAKE" --build "$T/cmake-$kind" >>"$T/cmake.log" 2>&1; then
        ok
    else
        fail "find_package build ($kind)"
        tail -n 20 "$T/cmake.log" >&2
    fi
    [ "$kind" = shared ] && sh=yes || sh=no
    try "cmake-$kind" "$T/cmake-$kind/api" $sh
done
# A version the package does not offer is refused.
mkdir -p "$T/v9"
printf 'cmake_minimum_required(VERSION 3.18)\nproject(v LANGUAGES C)\nfind_package(nlsr %s.0 REQUIRED)\n' \
    "$(( ${VERSION%%.*} + 1 ))" >"$T/v9/CMakeLists.txt"
if "$CMAKE" -S "$T/v9" -B "$T/v9/b" -DCMAKE_PREFIX_PATH="$P" >/dev/null 2>&1; then
    fail "find_package(nlsr $(( ${VERSION%%.*} + 1 )).0) accepted version $VERSION"
else ok; fi

# The installed man pages render, at 80 columns, without a warning from groff.
if command -v man >/dev/null 2>&1 && command -v groff >/dev/null 2>&1; then
    for page in "$P/share/man/man1/nlsr.1" "$P/share/man/man3/nlsr.3"; do
        check "groff warnings: $page" sh -c '! groff -ww -z -man -Tutf8 "$1" 2>&1 | grep .' sh "$page"
        check "man -l warnings: $page" sh -c \
            '! LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l -Tutf8 -Z "$1" 2>&1 >/dev/null | grep .' sh "$page"
        LC_ALL=C.UTF-8 MANWIDTH=80 MAN_KEEP_FORMATTING= man -l "$page" 2>/dev/null | col -bx >"$T/page.txt"
        check "man -l renders $page" grep -q "^NAME" "$T/page.txt"
        check "man -l $page within 80 columns" sh -c '[ "$(awk "{ if (length > m) m = length } END { print m }" "$1")" -le 80 ]' sh "$T/page.txt"
    done
else
    echo "note: man or groff missing: the man pages were not rendered"
fi

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
