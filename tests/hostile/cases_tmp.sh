# SPDX-License-Identifier: Apache-2.0
# Rule: temporary outputs are <dest>.nlsr-tmp-XXXXXX, unpredictable and created exclusively; a
# planted path with such a name is never followed, emptied or removed, unless it is a folder whose
# .nlsr-output marker proves it belongs to a dead nlsr run of this host (removed, said on stderr).

RUNT=(run --base sft --aligned aligned --finetuned ft -q)

# Links named after the pids the next runs will get (and a few random-looking names) pointing
# at a victim folder and a victim file: a guessable temp name would write through them.
plant_tmp_links() { # DEST VICTIM
    local next i
    next=$(cat /proc/sys/kernel/ns_last_pid 2>/dev/null || echo $$)
    for i in $(seq "$next" $((next + 150))); do ln -s "$2" "$S/$1.nlsr-tmp-$i"; done
    for i in XXXXXX 000000 aaaaaa tmp 0; do ln -s "$2" "$S/$1.nlsr-tmp-$i"; done
}

case_planted_tmp_links() {
    setup_full
    mkdir "$S/victim" && echo precious >"$S/victim/keep" && echo precious >"$S/victim.txt" || die "setup"
    plant_tmp_links out victim
    plant_tmp_links r.json victim.txt
    plant_tmp_links p.nlsrp victim.txt
    snap_before out r.json p.nlsrp
    nl 0 "${RUNT[@]}" --out out --report r.json
    nl 0 prepare --base sft --aligned aligned --out p.nlsrp -q
    [ -d "$S/out" ] && [ ! -L "$S/out" ] || fail "out is not a plain folder"
    [ -f "$S/p.nlsrp" ] && [ ! -L "$S/p.nlsrp" ] || fail "p.nlsrp is not a plain file"
    snap_check "planted links or their victims"
}

case_planted_tmp_foreign_folder() {
    setup_full
    mkdir "$S/out.nlsr-tmp-Ab12Cd" && echo precious >"$S/out.nlsr-tmp-Ab12Cd/keep" || die "setup"
    mkdir "$S/out.nlsr-tmp-x" && : >"$S/out.nlsr-tmp-x/.nlsr-output" || die "setup" # no valid marker
    echo precious >"$S/out.nlsr-tmp-file"
    snap_before out
    nl 0 "${RUNT[@]}" --out out
    snap_check "folders and files with temporary names that are not nlsr's"
}

marker_text() { # PID START [BOOT] [HOST]
    printf 'nlsr-output 1\nhost %s\nboot %s\npid %s\nstart %s\n' "${4:-$(hostname)}" \
        "${3:-$(cat /proc/sys/kernel/random/boot_id)}" "$1" "$2"
}
proc_start_time() { sed 's/^.*) //' "/proc/$1/stat" | cut -d' ' -f20; }

# A marker naming a live process (this shell) or another host: not a leftover, left alone.
case_planted_tmp_live_marker() {
    setup_full
    mkdir "$S/out.nlsr-tmp-live01" "$S/out.nlsr-tmp-host01" || die "mkdir"
    marker_text $$ "$(proc_start_time $$)" >"$S/out.nlsr-tmp-live01/.nlsr-output"
    marker_text 1 1 "" some-other-host >"$S/out.nlsr-tmp-host01/.nlsr-output"
    echo precious >"$S/out.nlsr-tmp-live01/keep"
    echo precious >"$S/out.nlsr-tmp-host01/keep"
    snap_before out
    nl 0 "${RUNT[@]}" --out out
    snap_check "a live run's temporary folder"
}

# A dead run's folder (its pid gone; or the pid reused by a process with another start time) is
# removed and said on stderr; the same name as a link to a marked folder is not followed.
case_stale_tmp_of_dead_run_removed() {
    setup_full
    local dead
    sleep 0 &
    dead=$!
    wait $dead
    mkdir "$S/out.nlsr-tmp-dead01" "$S/out.nlsr-tmp-reuse1" "$S/marked" || die "mkdir"
    marker_text "$dead" 12345 >"$S/out.nlsr-tmp-dead01/.nlsr-output"
    marker_text $$ 1 >"$S/out.nlsr-tmp-reuse1/.nlsr-output" # this shell did not start at tick 1
    echo stale >"$S/out.nlsr-tmp-dead01/model.safetensors"
    marker_text "$dead" 12345 >"$S/marked/.nlsr-output"
    echo precious >"$S/marked/keep"
    ln -s marked "$S/out.nlsr-tmp-link01"
    snap_before out out.nlsr-tmp-dead01 out.nlsr-tmp-reuse1
    (cd "$S" && timeout -k 2 "$TMO" "$NLSR" run --base sft --aligned aligned --finetuned ft --out out >"$W/out" 2>"$W/err")
    RC=$?
    judge 0 "run --out out"
    expect_absent "$S/out.nlsr-tmp-dead01" "$S/out.nlsr-tmp-reuse1"
    grep -q "out.nlsr-tmp-dead01.*died" "$W/err" || fail "the removal is not said on stderr: $(cat "$W/err")"
    snap_check "a link with a temporary name, or its marked target"
}

# Names with .nlsr-tmp- inside a checkpoint folder belong to its owner: in place keeps them.
inplace_keeps_tmp_names() { # COMMAND...
    setup_full
    echo mine >"$S/ft/.nlsr-tmp-foo"
    echo mine >"$S/ft/.nlsr-inplace.nlsr-tmp-abcdef"
    mkdir "$S/ft/notes.nlsr-tmp-123456" && echo mine >"$S/ft/notes.nlsr-tmp-123456/keep"
    snap_before ft/model-00001-of-00003.safetensors ft/model-00002-of-00003.safetensors \
        ft/model-00003-of-00003.safetensors ft/.nlsr.lock ft/.nlsr-journal ft/.nlsr-state.json
    nl 0 "$@"
    snap_check "the owner's files with temporary names"
}
case_inplace_run_keeps_tmp_named_files() { inplace_keeps_tmp_names "${RUNT[@]}" --in-place; }
case_inplace_apply_keeps_tmp_named_files() {
    make_patch "$W/p.nlsrp"
    inplace_keeps_tmp_names apply --patches "$W/p.nlsrp" --in-place ft -q
}
