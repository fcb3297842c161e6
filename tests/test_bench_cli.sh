#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# `nlsr bench` on the tiny fixtures (sft = base, aligned, finetuned): two budgets, two backends,
# two jobs. The CSV and JSON rows follow the schema, their bytes are the jobs' own (each run
# again alone with --report / --json), the SVG is XML with one series per job and backend, the
# cold path is posix_fadvise as a non-root user (setpriv to nobody when run as root), and the
# scratch folder is gone afterwards; run against run-in-place with --after-each (each run's
# command line does the same job) and --config. Usage: test_bench_cli.sh NLSR TEST_DATA
set -eu
NLSR=$1
DATA=$2/hf-tiny-llama
command -v python3 >/dev/null 2>&1 || { echo "SKIP: no python3"; exit 77; }
T=$(mktemp -d /tmp/nlsr-bench-cli.XXXXXX)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# A world-readable copy of the inputs and the program, an output folder the bench user owns.
mkdir -p "$T/in" "$T/res"
for m in sft aligned finetuned; do cp -r "$DATA/$m" "$T/in/$m"; done
cp "$NLSR" "$T/nlsr"
chmod -R a+rX "$T"
AS=""
if [ "$(id -u)" = 0 ]; then
    command -v setpriv >/dev/null 2>&1 || { echo "SKIP: root without setpriv"; exit 77; }
    chown 65534:65534 "$T/res"
    AS="setpriv --reuid=65534 --regid=65534 --clear-groups"
fi
B="--base $T/in/sft --aligned $T/in/aligned --finetuned $T/in/finetuned"
# shellcheck disable=SC2086
$AS "$T/nlsr" bench $B --budgets 4M,1G --io uring,pread --jobs run,amplify -q \
    --csv "$T/res/b.csv" --json "$T/res/b.json" --plot "$T/res/b.svg" > "$T/table.txt" ||
    fail "bench failed"
ls "$T/res" | grep -q nlsr-bench && fail "the scratch folder was left behind: $(ls "$T/res")"
grep -q "^run  *1G  *uring" "$T/table.txt" || fail "no table on stdout: $(cat "$T/table.txt")"

# Each (job, budget, backend) alone, as a user would run it, for its own byte counts.
for bud in 4M 1G; do
    for io in uring pread; do
        "$T/nlsr" run $B --out "$T/o-$bud-$io" --mem-budget $bud --io $io -q \
            --report "$T/r-run-$bud-$io.json"
        "$T/nlsr" amplify --base "$T/in/sft" --aligned "$T/in/aligned" --out "$T/a-$bud-$io" \
            --mem-budget $bud --io $io -q --json > "$T/r-amplify-$bud-$io.json"
    done
done

python3 - "$T" "$(id -u)" <<'PY' || fail "see above"
import csv, json, sys, xml.etree.ElementTree as ET
T, uid = sys.argv[1], int(sys.argv[2])
bad = []
def check(c, msg):
    if not c: bad.append(msg)
HEAD = ("job,budget,budget_bytes,io,backend,rep,cache,status,wall_s,user_s,sys_s,cpu_s,"
        "peak_rss_bytes,plan,phase_similarities_s,phase_output_s,planned_bytes_read,"
        "planned_bytes_read_max,planned_bytes_written,bytes_read,bytes_written,min_io_s,ratio,"
        "predicted_s,predicted_ratio,error").split(",")
rows = list(csv.DictReader(open(f"{T}/res/b.csv")))
check(list(rows[0].keys()) == HEAD if rows else False, "CSV header")
want = {(j, b, i) for j in ("run", "amplify") for b in ("4M", "1G") for i in ("uring", "pread")}
check({(r["job"], r["budget"], r["io"]) for r in rows} == want and len(rows) == 8,
      f"CSV rows: {[(r['job'], r['budget'], r['io']) for r in rows]}")
doc = json.load(open(f"{T}/res/b.json"))
for k in ("cpu", "cpus", "memory_bytes", "kernel", "io_uring", "euid"):
    check(k in doc["machine"], f"machine.{k} missing")
# The bench ran as nobody when the test is root: fadvise, not drop_caches, and said so.
check(doc["machine"]["euid"] == (65534 if uid == 0 else uid), f"euid {doc['machine']['euid']}")
roles = "+".join(f["role"] for f in doc["filesystems"])
for r in ("base", "aligned", "finetuned", "scratch"):
    check(r in roles, f"no file system for {r}: {roles}")
for f in doc["filesystems"]:
    check(f["fstype"] not in ("", "?") and f["mount"].startswith("/"), f"file system {f}")
check(len(doc["runs"]) == 8, "JSON runs")
for r, j in zip(rows, doc["runs"]):
    key = (r["job"], r["budget"], r["io"])
    check(r["status"] == "0" and j["status"] == 0, f"{key} failed: {r['error']}")
    check(r["cache"] == "fadvise" and j["cache"] == "fadvise", f"{key} cache {r['cache']}")
    check(r["backend"] == r["io"], f"{key} used {r['backend']}")
    check(float(r["wall_s"]) > 0 and int(r["peak_rss_bytes"]) > 1 << 20, f"{key} time/RSS")
    check(r["budget_bytes"] == str({"4M": 4 << 20, "1G": 1 << 30}[r["budget"]]), f"{key} budget")
    for k in ("bytes_read", "bytes_written", "peak_rss_bytes"):
        check(int(r[k]) == j[k], f"{key} {k}: CSV {r[k]}, JSON {j[k]}")
    alone = json.load(open(f"{T}/r-{r['job']}-{r['budget']}-{r['io']}.json"))
    s = alone.get("summary", alone)
    for k in ("bytes_read", "bytes_written"):
        check(int(r[k]) == s[k], f"{key} {k}: bench {r[k]}, the job alone {s[k]}")
    if r["job"] == "run":
        check(r["plan"] == s["plan"], f"{key} plan {r['plan']} vs {s['plan']}")
        # The plan's bytes are what the job read and wrote.
        check(int(r["planned_bytes_read"]) == s["bytes_read"], f"{key} planned read {r['planned_bytes_read']}")
        check(int(r["planned_bytes_written"]) == s["bytes_written"], f"{key} planned written")
        check(int(r["planned_bytes_read"]) <= int(r["planned_bytes_read_max"]), f"{key} read max")
        # The plan's predicted time (with compute) beside the measured one, and their ratio.
        p = float(r["predicted_s"] or 0)
        check(p > 0 and abs(p - j["predicted_s"]) <= 2e-6 + 1e-6 * p, f"{key} predicted_s {r['predicted_s']}")
        check(abs(float(r["predicted_ratio"] or 0) - j["wall_s"] / j["predicted_s"]) <= 1e-5 +
              1e-5 * j["predicted_ratio"], f"{key} predicted_ratio {r['predicted_ratio']}")
    else:
        # amplify has no run plan to predict: empty in the CSV, null in the JSON.
        check(r["predicted_s"] == "" and j["predicted_s"] is None, f"{key} predicted_s {r['predicted_s']}")
svg = ET.parse(f"{T}/res/b.svg").getroot()
ns = "{http://www.w3.org/2000/svg}"
check(svg.tag == ns + "svg", f"root {svg.tag}")
series = [(g.get("data-job"), g.get("data-io")) for g in svg.iter(ns + "g")
          if g.get("class") == "series" and g.get("data-value") == "wall_s"]
check(sorted(series) == sorted({(j, i) for j, _, i in want}), f"SVG series {series}")
check(len([g for g in svg.iter(ns + "g") if g.get("class") == "min-io"]) == 2, "SVG min-io lines")
for line in bad: print("FAIL:", line, file=sys.stderr)
sys.exit(1 if bad else 0)
PY

# run against run --in-place with --after-each: the hook gets each run's command line, set up
# and cold again; that command, run by the hook, does the job the bench timed (the same bytes,
# the same plan). The plot has both jobs' series in both panels and each job's minimal I/O line.
# The options come from --config (bench's long option names), the command line overriding one.
cat > "$T/hook.sh" <<'HOOK'
set -eu
n=$(ls "$RES" | grep -c '^hook-' || true)
printf '%s\n%s %s %s %s %s\n' "$NLSR_BENCH_COMMAND" "$NLSR_BENCH_JOB" "$NLSR_BENCH_BUDGET" \
    "$NLSR_BENCH_IO" "$NLSR_BENCH_REP" "$NLSR_BENCH_CACHE" > "$RES/hook-$n.txt"
# The command's report path is the bench's: take the report before the next run removes it.
eval "$BIN/$NLSR_BENCH_COMMAND"
rep=$(printf '%s' "$NLSR_BENCH_COMMAND" | sed -n 's/.* --report \([^ ]*\) .*/\1/p')
cp "$rep" "$RES/hook-$n.json"
HOOK
chmod a+r "$T/hook.sh"
printf '{"jobs": "run,run-in-place", "budgets": "16M,1G", "io": "pread", "reps": "2"}\n' > "$T/cfg.json"
chmod a+r "$T/cfg.json"
# shellcheck disable=SC2086
$AS env RES="$T/res" BIN="$T" "$T/nlsr" bench $B --config "$T/cfg.json" --io uring -q \
    --json "$T/res/ip.json" --plot "$T/res/ip.svg" --after-each "sh $T/hook.sh" > /dev/null ||
    fail "bench --after-each failed"
python3 - "$T" <<'PY' || fail "see above"
import glob, json, sys, xml.etree.ElementTree as ET
T = sys.argv[1]
bad = []
def check(c, msg):
    if not c: bad.append(msg)
runs = json.load(open(f"{T}/res/ip.json"))["runs"]
want = [(j, b, "uring", r) for j in ("run", "run-in-place") for b in ("16M", "1G") for r in (1, 2)]
check([(r["job"], r["budget"], r["io"], r["rep"]) for r in runs] == want,
      f"--config then --io: runs {[(r['job'], r['budget'], r['io'], r['rep']) for r in runs]}")
hooks = sorted(glob.glob(f"{T}/res/hook-*.txt"), key=lambda p: int(p.split("-")[-1][:-4]))
check(len(hooks) == len(runs), f"{len(hooks)} --after-each calls for {len(runs)} runs")
for r, h in zip(runs, hooks):
    key = (r["job"], r["budget"], r["rep"])
    cmd, env = open(h).read().splitlines()
    check(r["status"] == 0, f"{key} failed: {r.get('error')}")
    check(cmd == r["command"], f"{key}: hook got {cmd!r}, JSON says {r['command']!r}")
    check(("--in-place" in cmd) == (r["job"] == "run-in-place"), f"{key} command {cmd}")
    check(f"--mem-budget {r['budget']} --io uring " in cmd, f"{key} command {cmd}")
    check(env.split() == [r["job"], r["budget"], "uring", str(r["rep"]), "fadvise"], f"{key} env {env}")
    hand = json.load(open(h[:-4] + ".json"))["summary"]
    for k in ("bytes_read", "bytes_written", "plan"):
        check(hand[k] == r[k], f"{key} {k}: the command {hand[k]}, the bench {r[k]}")
svg = ET.parse(f"{T}/res/ip.svg").getroot()
ns = "{http://www.w3.org/2000/svg}"
groups = [g for g in svg.iter(ns + "g")]
for value in ("wall_s", "peak_rss_mib"):
    ser = sorted((g.get("data-job"), g.get("data-io")) for g in groups
                 if g.get("class") == "series" and g.get("data-value") == value)
    check(ser == [("run", "uring"), ("run-in-place", "uring")], f"SVG {value} series {ser}")
    for g in groups:
        if g.get("class") == "series" and g.get("data-value") == value:
            pts = g.find(ns + "polyline").get("points").split()
            check(len(pts) == 2, f"SVG {value} {g.get('data-job')}: {len(pts)} points, not one per budget")
minio = {g.get("data-job"): g.find(ns + "polyline").get("points").split() for g in groups
         if g.get("class") == "min-io"}
check(sorted(minio) == ["run", "run-in-place"], f"SVG min-io lines {sorted(minio)}")
check(all(len(p) == 2 for p in minio.values()), f"SVG min-io points {minio}")
for line in bad: print("FAIL:", line, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
# A failing --after-each command stops the bench with one line naming the run.
st=0; "$T/nlsr" bench $B --budgets 1G --io pread -q --scratch "$T/res" --after-each 'exit 3' \
    2>"$T/err" >/dev/null || st=$?
[ "$st" != 0 ] && grep -q "after-each.*status 3 after run 1G pread rep 1" "$T/err" ||
    fail "--after-each 'exit 3': exit $st $(cat "$T/err")"
ls "$T/res" | grep -q nlsr-bench && fail "a stopped bench left its scratch folder"

# Usage errors: one line, exit 2, nothing made.
st=0; "$T/nlsr" bench --synth tiny --base "$T/in/sft" -q 2>"$T/err" || st=$?
[ "$st" = 2 ] || fail "--synth with --base: exit $st"
st=0; "$T/nlsr" bench $B --jobs run,bogus -q --scratch "$T/res" 2>"$T/err" || st=$?
[ "$st" = 2 ] && grep -q "bogus" "$T/err" || fail "--jobs bogus: exit $st $(cat "$T/err")"
st=0; "$T/nlsr" bench $B --io mmap,floppy -q --scratch "$T/res" 2>"$T/err" || st=$?
[ "$st" = 2 ] && grep -q "floppy" "$T/err" || fail "--io floppy: exit $st"
st=0; "$T/nlsr" bench $B -q --scratch "$T/res" --csv "$T/nowhere/b.csv" 2>"$T/err" || st=$?
[ "$st" = 2 ] && grep -q "nowhere/b.csv" "$T/err" || fail "--csv into a missing folder: exit $st"
ls "$T/res" | grep -q nlsr-bench && fail "a refused bench made a scratch folder"
echo "1 passed, 0 failed"
