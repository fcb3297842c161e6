# SPDX-License-Identifier: Apache-2.0
# Helpers of the hostile-input suite (sourced by run.sh). A case works in a fresh sandbox $S
# (the inputs; every path in it is snapshotted) and a work folder $W beside it (logs, reference
# outputs, holders' ready files), runs nlsr under `timeout` and checks exit status, stderr and
# that nothing outside the intended output changed. fail() records a failure and goes on, so
# one run reports every broken expectation of its case.

FX=$DATA/hf-tiny-llama
TMO=${NLSR_HOSTILE_TIMEOUT:-30} # seconds per nlsr command; "a few seconds" is the promise
FAILS=0
HOLDERS=""
MOUNTS=""

fail() {
    echo "FAIL: $*" >&2
    FAILS=$((FAILS + 1))
}
skip() {
    echo "SKIP: $*" >&2
    exit 77
}
die() { # a broken precondition of the case itself (not nlsr's behaviour under test)
    echo "SETUP FAILED: $*" >&2
    exit 1
}

# ---- sandbox --------------------------------------------------------------------------------

cleanup() {
    local p m
    # A job left stopped at a test point (the case gave up on it) must not outlive the case.
    for p in ${PID:-} ${TPID:-}; do kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null; done
    for p in $HOLDERS; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    for m in $MOUNTS; do umount -l "$m" 2>/dev/null; done
    if [ -n "${NLSR_HOSTILE_KEEP:-}" ] && [ "$FAILS" -gt 0 ]; then
        echo "sandbox kept: $ROOT" >&2
    elif [ -n "${ROOT:-}" ]; then
        rm -rf "$ROOT"
    fi
}

new_sandbox() {
    local base=${NLSR_HOSTILE_TMP:-${TMPDIR:-/tmp}}
    ROOT=$(mktemp -d "$base/nlsr-hostile-$CASE-XXXXXX") || die "mktemp"
    S=$ROOT/s
    W=$ROOT/w
    mkdir "$S" "$W" || die "mkdir"
    trap cleanup EXIT
}

# Inputs under the names the cases use: sft (base), aligned, ft (fine-tune); lora_align, lora_ft.
setup_full() { cp -r "$FX/sft" "$S/sft" && cp -r "$FX/aligned" "$S/aligned" &&
    cp -r "$FX/finetuned" "$S/ft" || die "copy fixtures"; }
setup_lora() { cp -r "$FX/lora_align" "$S/lora_align" &&
    cp -r "$FX/lora_finetuned" "$S/lora_ft" || die "copy LoRA fixtures"; }
# The patch file of sft + aligned at PATH (default $S/p.nlsrp), made before the snapshot.
make_patch() {
    "$NLSR" prepare --base "$FX/sft" --aligned "$FX/aligned" --out "${1:-$S/p.nlsrp}" -q \
        >/dev/null 2>"$W/make_patch.err" || die "prepare: $(cat "$W/make_patch.err")"
}
# The realigned fine-tune from pristine fixtures, in $W/ref: what in place must give.
make_ref() {
    "$NLSR" run --base "$FX/sft" --aligned "$FX/aligned" --finetuned "$FX/finetuned" \
        --out "$W/ref" -q >/dev/null 2>"$W/make_ref.err" || die "run: $(cat "$W/make_ref.err")"
}
# A LoRA mask file (run --mask-out) at PATH.
make_mask() {
    "$NLSR" prepare --aligned "$FX/lora_align" --mask-out "$1" --out "$W/mask-p.nlsrp" -q \
        >/dev/null 2>"$W/make_mask.err" || die "mask: $(cat "$W/make_mask.err")"
}
# An activations file (docs/LOWRANK.md) for --targets q_proj of the tiny model: rows [1, 96] F32.
make_activations() {
    local f=$1 hdr="" off=0 l n
    for l in 0 1 2; do
        n=model.layers.$l.self_attn.q_proj.weight
        hdr="$hdr\"$n\":{\"dtype\":\"F32\",\"shape\":[1,96],\"data_offsets\":[$off,$((off + 384))]},"
        off=$((off + 384))
    done
    hdr="{${hdr%,}}"
    while [ $((${#hdr} % 8)) -ne 0 ]; do hdr="$hdr "; done
    { le64 ${#hdr}; printf '%s' "$hdr"; head -c $off /dev/zero | tr '\0' '\1'; } >"$f"
}
le64() { # N: 8 bytes little endian
    local n=$1 i
    for i in 0 1 2 3 4 5 6 7; do printf "\\$(printf %03o $(((n >> (8 * i)) & 255)))"; done
}

# ---- snapshots ------------------------------------------------------------------------------

# Every path under $S except the excluded ones (relative to $S, with their subtrees): type,
# mode, link target, sha256 of regular files. FIFOs, devices and sockets are never opened.
snap() { # OUTFILE EXCLUDED...
    local out=$1 ex prune=()
    shift
    for ex in "$@"; do prune+=(-path "./${ex%/}" -prune -o); done
    (cd "$S" && find . -mindepth 1 "${prune[@]}" -printf '%y %m %p -> %l\n' | LC_ALL=C sort |
        while IFS= read -r line; do
            case $line in
            "f "*)
                p=${line#f * ./}
                p=${p% -> }
                printf '%s %s\n' "$line" "$(sha256sum <"./$p" | cut -c1-64)"
                ;;
            *) printf '%s\n' "$line" ;;
            esac
        done) >"$out"
}
SNAP_EX=()
snap_before() { SNAP_EX=("$@"); snap "$W/snap.before" "$@"; }
snap_check() { # WHAT: fails when anything outside the exclusions changed since snap_before
    snap "$W/snap.after" "${SNAP_EX[@]}"
    if ! cmp -s "$W/snap.before" "$W/snap.after"; then
        fail "${1:-sandbox} changed outside the output:"
        diff "$W/snap.before" "$W/snap.after" | sed 's/^/    /' | head -20 >&2
    fi
}

# ---- running nlsr ---------------------------------------------------------------------------

# Sanitizer reports fail the case whatever the exit status (ASan's own status may collide with
# nlsr's 1).
sanitizer_check() { # ERRFILE
    if grep -qE 'AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:' "$1"; then
        fail "sanitizer report:"
        head -30 "$1" >&2
    fi
}

# nl EXPECTED ARGS...: runs nlsr under timeout in $S; EXPECTED is a status or a|b alternatives.
# Sets RC; stdout/stderr in $W/out, $W/err.
nl() {
    local exp=$1
    shift
    (cd "$S" && timeout -k 2 "$TMO" "$NLSR" "$@" >"$W/out" 2>"$W/err")
    RC=$?
    judge "$exp" "$*"
}
judge() { # EXPECTED DESCRIPTION
    sanitizer_check "$W/err"
    if [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ]; then
        fail "nlsr $2: exit $RC: timed out after ${TMO}s (a hang) or SIGKILL; stderr: $(head -3 "$W/err")"
    elif ! [[ "|$1|" == *"|$RC|"* ]]; then
        if [ "$RC" -ge 128 ]; then
            fail "nlsr $2: killed by signal $((RC - 128)) (exit $RC), expected $1; stderr: $(head -3 "$W/err")"
        else
            fail "nlsr $2: exit $RC, expected $1; stderr: $(head -5 "$W/err")"
        fi
    fi
}

# The error line: stderr is exactly one line starting "nlsr: error: " (in-place jobs may say
# "DIR: failed (exit N): " instead, their documented per-checkpoint line) containing every
# given string.
expect_err() {
    local n s line
    n=$(wc -l <"$W/err")
    line=$(head -1 "$W/err")
    if [ "$n" -ne 1 ]; then
        fail "stderr should be one line, is $n:"
        sed 's/^/    /' "$W/err" | head -8 >&2
        return
    fi
    case $line in
    "nlsr: error: "*) ;;
    *": failed (exit $RC): "*) ;;
    *) fail "stderr line does not start with 'nlsr: error: ': $line" ;;
    esac
    for s in "$@"; do
        [[ "$line" == *"$s"* ]] || fail "stderr line does not name '$s': $line"
    done
}
expect_absent() { # PATH...: nothing there, not even a link
    local p
    for p in "$@"; do
        if [ -e "$p" ] || [ -L "$p" ]; then fail "$p exists and should not"; fi
    done
}
expect_no_tmp() { # DIR: no *.nlsr-tmp-* left in DIR
    local left
    left=$(find "$1" -maxdepth 1 -name '*.nlsr-tmp-*' 2>/dev/null)
    [ -z "$left" ] || fail "temporary output left behind: $left"
}
# The checkpoint files (not nlsr's dot files) of two folders are identical.
same_ckpt() { # A B
    local f
    for f in "$2"/*; do
        cmp -s "$f" "$1/$(basename "$f")" || { fail "$1/$(basename "$f") differs from $f"; return; }
    done
    [ "$(ls "$1" | wc -l)" -eq "$(ls "$2" | wc -l)" ] || fail "$1 and $2 hold other files"
}

# ---- locks, mounts ------------------------------------------------------------------------

# hold MODE PATH: util-linux flock(1) takes MODE (-x or -s) on PATH (a folder: the directory
# itself) in a background process that keeps it until the case ends.
hold() {
    command -v flock >/dev/null || skip "no flock(1)"
    local ready=$W/held.$RANDOM
    (exec 9<"$2" && flock "$1" 9 && : >"$ready" && exec sleep 60) &
    HOLDERS="$HOLDERS $!"
    local i
    for i in $(seq 100); do [ -e "$ready" ] && return; sleep 0.05; done
    die "flock $1 $2 not taken"
}
# mount_tmpfs DIR SIZE / mount_ro SRC DIR: or skip (77) where mounting is not allowed.
mount_tmpfs() {
    mkdir -p "$1" && mount -t tmpfs -o "size=$2" nlsr-hostile "$1" 2>/dev/null ||
        skip "cannot mount a tmpfs here"
    MOUNTS="$1 $MOUNTS"
}
mount_ro() {
    mkdir -p "$2" && mount --bind -o ro "$1" "$2" 2>/dev/null || skip "cannot bind-mount here"
    MOUNTS="$2 $MOUNTS"
    if : 2>/dev/null >"$2/.probe"; then rm -f "$2/.probe"; skip "read-only bind mount is writable"; fi
}

# ---- test hooks (NLSR_TEST_STOP_AT) ---------------------------------------------------------

# Builds with -DNLSR_TEST_HOOKS=ON honour NLSR_TEST_STOP_AT=<point> (the program raises SIGSTOP
# on itself there); others skip these cases.
need_hooks() {
    case ${NLSR_HOOKS:-auto} in
    ON | on | 1 | TRUE | true | YES | yes | auto) ;;
    *) skip "nlsr built without -DNLSR_TEST_HOOKS=ON" ;;
    esac
    grep -qa NLSR_TEST_STOP_AT "$NLSR" || skip "this nlsr has no NLSR_TEST_STOP_AT hook"
}
proc_state() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1; }

# start_stopped POINT ARGS...: starts nlsr (under timeout, default signal dispositions) with
# NLSR_TEST_STOP_AT=POINT and waits until it has stopped there; sets TPID (timeout) and PID
# (nlsr). Returns 1 (after a fail) when it exits or never stops.
start_stopped() {
    local point=$1 i st
    shift
    (cd "$S" && exec env --default-signal NLSR_TEST_STOP_AT="$point" \
        timeout -k 2 "$TMO" "$NLSR" "$@" >"$W/out" 2>"$W/err") &
    TPID=$!
    PID=""
    # Up to 30 s: a loaded 2-core machine (a parallel build) can take seconds to start a job.
    for i in $(seq 600); do
        [ -z "$PID" ] && PID=$(pgrep -P "$TPID" 2>/dev/null | head -1)
        if [ -n "$PID" ]; then
            st=$(proc_state "$PID")
            [ "$st" = T ] && return 0
        fi
        if ! kill -0 "$TPID" 2>/dev/null; then
            wait "$TPID"
            RC=$?
            fail "nlsr $*: never stopped at '$point' (exit $RC); stderr: $(head -3 "$W/err")"
            return 1
        fi
        sleep 0.05
    done
    fail "nlsr $*: did not stop at '$point' within 30 s"
    kill -KILL "$PID" "$TPID" 2>/dev/null
    wait "$TPID"
    return 1
}
# resume [SIGNAL]: sends SIGNAL (if any) then SIGCONT, waits; sets RC.
resume() {
    [ -n "${1:-}" ] && kill -s "$1" "$PID"
    kill -s CONT "$PID"
    wait "$TPID"
    RC=$?
}
# The interrupted job's report: exit 128+n, one line "nlsr: interrupted by SIG<NAME>".
expect_interrupted() { # SIGNAME STATUS
    judge "$2" "stopped then SIG$1"
    local n
    n=$(wc -l <"$W/err")
    if [ "$n" -ne 1 ] || ! head -1 "$W/err" | grep -q "^nlsr: interrupted by SIG$1"; then
        fail "stderr should be one line 'nlsr: interrupted by SIG$1...', is:"
        sed 's/^/    /' "$W/err" | head -8 >&2
    fi
}
