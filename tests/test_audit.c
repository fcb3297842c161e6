/* SPDX-License-Identifier: Apache-2.0 */
/* The report's audit section, through the nlsr program over tests/data/hf-tiny-llama:
 *
 *  - tool version == what `nlsr --version` prints; the command line exactly as run; host ==
 *    gethostname; start <= end, both UTC ISO-8601 inside the test's own clock window;
 *  - inputs and outputs: paths as given and resolved, through a symbolic link to the
 *    fine-tune's folder (resolved to the real folder, files named through the link as given);
 *  - every fingerprint against an XXH64 computed here (tests/test_xxh64.h): "xxh64" over the
 *    whole file, "xxh64_of_bytes_read" over the listed ranges in their order (ranges disjoint,
 *    inside the file, bytes_hashed their sum); run (single pass and patch-file plan), prepare
 *    (the patch file as output), apply (the patch file as input, read whole), in place, LoRA
 *    (adapters read whole; --json on stdout carries the same audit);
 *  - no audit without a report; the report's other keys are still there.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../src/common/ctx.h"
#include "../src/io/file.h"
#include "../src/io/outpath.h"
#include "nlsr.h"
#include "test.h"
#include "test_cli.h"
#include "test_files.h"
#include "test_xxh64.h"

#ifndef NLSR_TEST_DATA
#error "NLSR_TEST_DATA must name tests/data"
#endif
#ifndef NLSR_CLI
#error "NLSR_CLI must name the nlsr program"
#endif

#define FX NLSR_TEST_DATA "/hf-tiny-llama"
#define SFT FX "/sft"
#define ALIGNED FX "/aligned"
#define FT FX "/finetuned"

static char root[4096];

static char *wpath(const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", root, name) < 0) abort();
    return p;
}


static cJSON *load_json(const char *path)
{
    size_t n = 0;
    char *t = (char *)read_all(path, &n);
    if (!t) return NULL;
    cJSON *j = cJSON_ParseWithLength(t, n);
    free(t);
    return j;
}

static const cJSON *get(const cJSON *o, const char *k)
{
    return cJSON_GetObjectItemCaseSensitive(o, k);
}

static const char *str(const cJSON *o, const char *k)
{
    const cJSON *v = get(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* "YYYY-MM-DDTHH:MM:SS.mmmZ" to seconds since the epoch (UTC); -1 if malformed. */
static double parse_utc(const char *s)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    int ms = 0;
    if (!s || strlen(s) != 24 || s[23] != 'Z' ||
        sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d.%3d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
               &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) != 7)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (double)timegm(&tm) + ms / 1000.0;
}

static uint64_t hex64(const char *s)
{
    if (!s || strlen(s) != 16) return 0;
    return strtoull(s, NULL, 16);
}

/* One file record: its fingerprint recomputed here from the file's bytes (from `orig`, a copy
 * of the file as it was before the job, where the job changed it in place). */
static void check_file_as(const cJSON *f, int want_whole, const char *orig)
{
    const char *path = str(f, "path");
    size_t n = 0;
    unsigned char *b = orig ? read_all(orig, &n) : path ? read_all(path, &n) : NULL;
    ASSERT_TRUE(b != NULL);
    if (!b) return;
    ASSERT_EQ_U((uint64_t)get(f, "bytes")->valuedouble, n);
    char *rp = realpath(path, NULL);
    ASSERT_STR_EQ(str(f, "resolved"), rp);
    free(rp);
    const char *whole = str(f, "xxh64"), *part = str(f, "xxh64_of_bytes_read");
    if (want_whole == 1) ASSERT_TRUE(whole != NULL);
    if (want_whole == 0) ASSERT_TRUE(part != NULL);
    ASSERT_TRUE(!whole != !part);
    if (whole) {
        ASSERT_EQ_U(hex64(whole), test_xxh64(b, n, 0));
    } else if (part) {
        const cJSON *rs = get(f, "ranges_read");
        ASSERT_TRUE(cJSON_IsArray(rs) && cJSON_GetArraySize(rs) > 0);
        unsigned char *cat = malloc(n + 1), *used = calloc(n + 1, 1);
        size_t k = 0;
        const cJSON *r;
        cJSON_ArrayForEach(r, rs)
        {
            uint64_t off = (uint64_t)cJSON_GetArrayItem(r, 0)->valuedouble;
            uint64_t len = (uint64_t)cJSON_GetArrayItem(r, 1)->valuedouble;
            ASSERT_TRUE(len > 0 && off + len <= n);
            if (len == 0 || off + len > n) break;
            for (uint64_t i = off; i < off + len; i++) {
                ASSERT_TRUE(!used[i]); /* each byte once */
                if (used[i]) break;
                used[i] = 1;
            }
            memcpy(cat + k, b + off, len);
            k += len;
        }
        ASSERT_EQ_U((uint64_t)get(f, "bytes_hashed")->valuedouble, k);
        ASSERT_TRUE(k < n); /* else it would be the whole file's "xxh64" */
        ASSERT_EQ_U(hex64(part), test_xxh64(cat, k, 0));
        free(cat);
        free(used);
    }
    free(b);
}

static void check_file(const cJSON *f, int want_whole)
{
    check_file_as(f, want_whole, NULL);
}

/* The entry of `role` in audit.inputs/outputs. */
static const cJSON *entry(const cJSON *audit, const char *list, const char *role)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, get(audit, list))
    if (str(e, "role") && !strcmp(str(e, "role"), role)) return e;
    return NULL;
}

/* Every file of every input and output checks out (an in-place job's folder is skipped: its
 * bytes changed since they were read). Returns the number of files checked. */
static int check_entries(const cJSON *audit, const char *list)
{
    int n = 0;
    const cJSON *e;
    const cJSON *ip = entry(audit, "outputs", "out");
    const char *changed = cJSON_IsTrue(get(ip, "in_place")) ? str(ip, "path") : NULL;
    cJSON_ArrayForEach(e, get(audit, list))
    {
        if (changed && str(e, "path") && !strcmp(str(e, "path"), changed)) continue;
        const char *path = str(e, "path");
        char *rp = path ? realpath(path, NULL) : NULL;
        ASSERT_STR_EQ(str(e, "resolved"), rp);
        free(rp);
        const cJSON *f;
        if (cJSON_IsTrue(get(e, "in_place"))) continue;
        ASSERT_TRUE(cJSON_GetArraySize(get(e, "files")) > 0);
        cJSON_ArrayForEach(f, get(e, "files"))
        {
            check_file(f, -1);
            n++;
        }
    }
    return n;
}

static char version[64];

/* The common part: tool, version, command line, host, times. */
static void check_head(const cJSON *audit, const char *const *args, time_t t0, time_t t1)
{
    ASSERT_STR_EQ(str(audit, "tool"), "nlsr");
    ASSERT_STR_EQ(str(audit, "version"), version);
    const cJSON *cl = get(audit, "command_line");
    int k = 0;
    for (; args[k]; k++) {
        const cJSON *a = cJSON_GetArrayItem(cl, k);
        ASSERT_STR_EQ(cJSON_IsString(a) ? a->valuestring : NULL, args[k]);
    }
    ASSERT_EQ_I(cJSON_GetArraySize(cl), k);
    char host[HOST_NAME_MAX + 1] = "";
    gethostname(host, sizeof host);
    ASSERT_STR_EQ(str(audit, "host"), host);
    double s = parse_utc(str(audit, "started_utc")), e = parse_utc(str(audit, "finished_utc"));
    ASSERT_TRUE(s > 0 && e >= s);
    ASSERT_TRUE(s >= (double)t0 - 1 && e <= (double)t1 + 1);
}

/* Runs args with --report into rep; the audit object (the root kept in *root_out). */
static const cJSON *run_report(const char *const *args, const char *rep, cJSON **root_out)
{
    time_t t0 = time(NULL);
    int rc = cli(args + 1, NULL); /* args[0] is the program */
    time_t t1 = time(NULL);
    ASSERT_EQ_I(rc, 0);
    cJSON *j = load_json(rep);
    ASSERT_TRUE(j != NULL);
    *root_out = j;
    const cJSON *a = get(j, "audit");
    ASSERT_TRUE(cJSON_IsObject(a));
    if (a) check_head(a, args, t0, t1);
    /* The report's own keys are still there. */
    ASSERT_TRUE(cJSON_IsObject(get(j, "params")) && cJSON_IsArray(get(j, "modules")));
    ASSERT_TRUE(cJSON_IsString(get(get(j, "summary"), "io_backend")));
    return a;
}

static void test_version_string(void)
{
    char *out = NULL;
    const char *args[] = {NLSR_CLI, "--version", NULL};
    ASSERT_EQ_I(cli(args + 1, &out), 0);
    ASSERT_TRUE(out && !strncmp(out, "nlsr ", 5));
    snprintf(version, sizeof version, "%s", out ? out + 5 : "");
    version[strcspn(version, "\n")] = '\0';
    ASSERT_TRUE(version[0] != '\0');
    free(out);
    ASSERT_TRUE(test_xxh64_selftest());
}

/* run through a symbolic link to the fine-tune, under every plan (row blocks read blocks of
 * base and aligned more than once). */
static void test_run_symlink(void)
{
    char *link = wpath("ft-link"), *out = wpath("run_out"), *rep = wpath("run.json");
    ASSERT_EQ_I(symlink(FT, link), 0);
    const char *plans[] = {"single", "patch-file", "rows", "rows-recompute"};
    for (int k = 0; k < 4; k++) {
        (void)nlsr_tree_remove(out);
        unlink(rep); /* an existing report is never replaced without --force */
        setenv("NLSR_RUN_PLAN", plans[k], 1);
        const char *args[] = {NLSR_CLI, "run", "--base", SFT, "--aligned", ALIGNED,
                              "--finetuned", link, "--out", out, "--report", rep, "-q", NULL};
        cJSON *j = NULL;
        const cJSON *a = run_report(args, rep, &j);
        unsetenv("NLSR_RUN_PLAN");
        if (!a) {
            cJSON_Delete(j);
            continue;
        }
        const cJSON *ft = entry(a, "inputs", "finetuned");
        ASSERT_STR_EQ(str(ft, "path"), link);
        char *real = realpath(FT, NULL);
        ASSERT_STR_EQ(str(ft, "resolved"), real);
        const cJSON *f;
        cJSON_ArrayForEach(f, get(ft, "files"))
        {
            /* named through the link as given, resolved to the real folder */
            ASSERT_TRUE(str(f, "path") && !strncmp(str(f, "path"), link, strlen(link)));
            ASSERT_TRUE(str(f, "resolved") && !strncmp(str(f, "resolved"), real, strlen(real)));
            /* run reads only the fine-tune's target tensors */
            ASSERT_TRUE(get(f, "xxh64_of_bytes_read") != NULL);
        }
        free(real);
        ASSERT_TRUE(entry(a, "inputs", "base") && entry(a, "inputs", "aligned"));
        ASSERT_TRUE(check_entries(a, "inputs") >= 6);
        const cJSON *o = entry(a, "outputs", "out");
        ASSERT_STR_EQ(str(o, "path"), out);
        cJSON_ArrayForEach(f, get(o, "files")) ASSERT_TRUE(get(f, "xxh64") != NULL);
        ASSERT_TRUE(check_entries(a, "outputs") >= 1);
        cJSON_Delete(j);
    }
    free(link);
    free(out);
    free(rep);
}

/* prepare writes the patch file (an output, hashed whole); apply reads it whole. */
static void test_prepare_apply(void)
{
    char *pf = wpath("fx.nlsrp"), *rep = wpath("prep.json"), *rep2 = wpath("apply.json"),
         *out = wpath("apply_out");
    const char *pargs[] = {NLSR_CLI, "prepare", "--base", SFT, "--aligned", ALIGNED,
                           "--out", pf, "--report", rep, "-q", NULL};
    cJSON *j = NULL;
    const cJSON *a = run_report(pargs, rep, &j);
    if (a) {
        const cJSON *o = entry(a, "outputs", "patches");
        ASSERT_EQ_I(cJSON_GetArraySize(get(o, "files")), 1);
        check_file(cJSON_GetArrayItem(get(o, "files"), 0), 1);
        check_entries(a, "inputs");
    }
    cJSON_Delete(j);
    const char *aargs[] = {NLSR_CLI, "apply", "--patches", pf, "--finetuned", FT,
                           "--out", out, "--report", rep2, "-q", NULL};
    a = run_report(aargs, rep2, &j);
    if (a) {
        const cJSON *in = entry(a, "inputs", "patches");
        /* every block is read in pass 1, in file order; header and trailer at the end */
        check_file(cJSON_GetArrayItem(get(in, "files"), 0), 1);
        check_entries(a, "inputs");
        check_entries(a, "outputs");
    }
    cJSON_Delete(j);
    free(pf);
    free(rep);
    free(rep2);
    free(out);
}

/* In place: the folder is an input (bytes read) and the output (not hashed again). */
static void test_inplace(void)
{
    char *dir = wpath("ip"), *rep = wpath("ip.json"), *pf = wpath("fx.nlsrp");
    mkdir(dir, 0755);
    const char *names[] = {"config.json", "model.safetensors.index.json",
                           "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                           "model-00003-of-00003.safetensors"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char *s = NULL, *d = NULL;
        if (asprintf(&s, "%s/%s", FT, names[i]) < 0 || asprintf(&d, "%s/%s", dir, names[i]) < 0)
            abort();
        nlsr_err e = {0};
        if (nlsr_exists(s)) nlsr_copy_file(s, d, &e);
        free(s);
        free(d);
    }
    const char *args[] = {NLSR_CLI, "apply", "--patches", pf, "--in-place", dir,
                          "--report", rep, "-q", NULL};
    cJSON *j = NULL;
    const cJSON *a = run_report(args, rep, &j);
    if (a) {
        const cJSON *o = entry(a, "outputs", "out");
        ASSERT_TRUE(cJSON_IsTrue(get(o, "in_place")));
        ASSERT_STR_EQ(str(o, "path"), dir);
        check_entries(a, "outputs");
        /* The inputs as read: the shards before they were patched (the fixture's). */
        check_entries(a, "inputs"); /* (the patch file) */
        const cJSON *ft = entry(a, "inputs", "finetuned"), *f;
        ASSERT_EQ_I(cJSON_GetArraySize(get(ft, "files")), 3);
        cJSON_ArrayForEach(f, get(ft, "files"))
        {
            const char *name = strrchr(str(f, "path"), '/');
            char *orig = NULL;
            if (!name || asprintf(&orig, "%s%s", FT, name) < 0) abort();
            check_file_as(f, 0, orig);
            free(orig);
        }
    }
    cJSON_Delete(j);
    free(dir);
    free(rep);
    free(pf);
}

/* LoRA adapters are read whole and in order: file hashes. --json on stdout carries the same
 * audit as the report file (the outputs are hashed once). */
static void test_lora(void)
{
    char *out = wpath("lora_out"), *rep = wpath("lora.json"), *so = NULL;
    const char *args[] = {NLSR_CLI, "run", "--aligned", FX "/lora_align", "--finetuned",
                          FX "/lora_finetuned", "--out", out, "--report", rep, "--json", "-q",
                          NULL};
    time_t t0 = time(NULL);
    ASSERT_EQ_I(cli(args + 1, &so), 0);
    time_t t1 = time(NULL);
    cJSON *j = load_json(rep), *js = so ? cJSON_Parse(so) : NULL;
    const cJSON *a = get(j, "audit");
    ASSERT_TRUE(cJSON_IsObject(a));
    if (a) {
        check_head(a, args, t0, t1);
        const char *roles[] = {"aligned", "finetuned"};
        for (int k = 0; k < 2; k++) {
            const cJSON *e = entry(a, "inputs", roles[k]);
            ASSERT_EQ_I(cJSON_GetArraySize(get(e, "files")), 1);
            check_file(cJSON_GetArrayItem(get(e, "files"), 0), 1);
        }
        ASSERT_TRUE(check_entries(a, "outputs") == 1);
        ASSERT_TRUE(cJSON_Compare(a, get(js, "audit"), 1));
    }
    cJSON_Delete(j);
    cJSON_Delete(js);
    free(so);
    free(out);
    free(rep);
}

/* Without --report or --json nothing is hashed, and a library caller without a command line
 * gets null there. */
static void test_library(void)
{
    char *out = wpath("lib_out"), *rep = wpath("lib.json");
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    ASSERT_EQ_I(nlsr_run(ctx, SFT, ALIGNED, NULL, FT, out, &p), 0);
    ASSERT_TRUE(ctx->audit == NULL);
    /* Hashing changes no output byte: the same as the CLI run with a report. */
    char *run_out = wpath("run_out");
    ASSERT_TRUE(folders_equal(out, run_out));
    free(run_out);
    (void)nlsr_tree_remove(out);
    p.report_path = rep;
    ASSERT_EQ_I(nlsr_run(ctx, SFT, ALIGNED, NULL, FT, out, &p), 0);
    ASSERT_TRUE(ctx->audit == NULL); /* ended with the job */
    nlsr_ctx_free(ctx);
    cJSON *j = load_json(rep);
    const cJSON *a = get(j, "audit");
    ASSERT_TRUE(cJSON_IsNull(get(a, "command_line")));
    ASSERT_TRUE(check_entries(a, "outputs") >= 1);
    cJSON_Delete(j);
    free(out);
    free(rep);
}

int main(void)
{
    snprintf(root, sizeof root, "/tmp/nlsr-test-audit-XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    RUN_TEST(test_version_string);
    RUN_TEST(test_run_symlink);
    RUN_TEST(test_prepare_apply);
    RUN_TEST(test_inplace);
    RUN_TEST(test_lora);
    RUN_TEST(test_library);
    int rc = test_finish();
    if (rc == 0) (void)nlsr_tree_remove(root);
    else fprintf(stderr, "work folder kept: %s\n", root);
    return rc;
}
