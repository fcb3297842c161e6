/* SPDX-License-Identifier: Apache-2.0 */
/* Fixture acceptance, through the library and the `nlsr` program:
 *
 *  - every .safetensors file and every checkpoint folder under tests/data opens;
 *  - `nlsr dump` of each tensor of dtypes.safetensors prints the numbers of
 *    dtypes.expected.json;
 *  - `nlsr rewrite SRC OUT` of every checkpoint re-reads with identical tensor names, dtypes,
 *    shapes, metadata and data bytes, and identical side files;
 *  - `nlsr inspect --json` parses, has its keys, and gives absolute offsets that match the
 *    files' own headers and point at the right bytes;
 *  - exit status 1 with exactly one stderr line for a malformed file, 2 for usage errors, and
 *    a refused input leaves no output folder.
 *
 * Headers are re-read here with a few lines of independent code (8-byte length + cJSON), so
 * the comparisons do not trust the reader under test.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nlsr.h"
#include "test.h"
#include "test_cli.h"

#ifndef NLSR_TEST_DATA
#error "NLSR_TEST_DATA must name tests/data"
#endif
#ifndef NLSR_CLI
#error "NLSR_CLI must name the nlsr program"
#endif

#define FIXTURES NLSR_TEST_DATA "/hf-tiny-llama"
#define MAX_ITEMS 256

static char tmp_root[4096];

/* ---- small helpers ------------------------------------------------------------------------ */

static char *xstrdup(const char *s)
{
    char *p = strdup(s);
    if (!p) abort();
    return p;
}

static char *join(const char *a, const char *b)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", a, b) < 0) abort();
    return p;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int exists(const char *p)
{
    struct stat st;
    return lstat(p, &st) == 0;
}

/* Whole file into a NUL-terminated buffer (NULL if unreadable). */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0, r;
    char *buf = malloc(cap + 1);
    while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *q = realloc(buf, (cap *= 2) + 1);
            if (!q) free(buf);
            buf = q;
        }
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

static int read_at(const char *path, uint64_t off, void *buf, size_t len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    size_t done = 0;
    while (done < len) {
        ssize_t r = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
        if (r <= 0) break;
        done += (size_t)r;
    }
    close(fd);
    return done == len ? 0 : -1;
}

static void remove_tree(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
            char *p = join(path, de->d_name);
            struct stat st;
            if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) remove_tree(p);
            else unlink(p);
            free(p);
        }
        closedir(d);
    }
    rmdir(path);
}

/* ---- running the CLI ---------------------------------------------------------------------- */

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

/* Exit status 1, nothing on stdout, one line on stderr naming `path` and the problem. */
static void expect_cli_refusal(const char *const *args, const char *path, const char *what)
{
    cli_result r = cli_run(args);
    ASSERT_EQ_I(r.status, 1);
    ASSERT_EQ_I(count_lines(r.err), 1);
    ASSERT_TRUE(r.err[0] != '\0' && r.err[strlen(r.err) - 1] == '\n');
    ASSERT_CONTAINS(r.err, "nlsr: error: ");
    ASSERT_CONTAINS(r.err, path);
    ASSERT_CONTAINS(r.err, what);
    ASSERT_STR_EQ(r.out, "");
    if (test_cur_failed_) fprintf(stderr, "  %s %s: stderr \"%s\"\n", args[0], path, r.err);
    cli_result_free(&r);
}

/* ---- independent header reading -------------------------------------------------------- */

typedef struct raw_header {
    uint64_t n;    /* header length; data starts at 8 + n */
    uint64_t size; /* file size */
    cJSON *json;
} raw_header;

static int raw_header_read(const char *path, raw_header *h)
{
    memset(h, 0, sizeof *h);
    size_t len = 0;
    char *buf = slurp(path, &len);
    if (!buf || len < 8) {
        free(buf);
        return -1;
    }
    for (int i = 7; i >= 0; i--) h->n = (h->n << 8) | (unsigned char)buf[i];
    h->size = len;
    if (h->n > len - 8) {
        free(buf);
        return -1;
    }
    h->json = cJSON_ParseWithLength(buf + 8, (size_t)h->n);
    free(buf);
    return h->json ? 0 : -1;
}

/* A JSON number that is a non-negative integer; UINT64_MAX for anything else. */
static uint64_t json_u64(const cJSON *v)
{
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || v->valuedouble != floor(v->valuedouble))
        return UINT64_MAX;
    return (uint64_t)v->valuedouble;
}

/* ---- fixture discovery ---------------------------------------------------------------- */

typedef struct fixtures {
    char *files[MAX_ITEMS]; /* every .safetensors file */
    size_t nfiles;
    char *ckpts[MAX_ITEMS]; /* checkpoint folders, then standalone files */
    size_t nckpts;
} fixtures;

static fixtures fx;

static int is_ckpt_dir(const char *dir)
{
    static const char *markers[] = {"model.safetensors", "model.safetensors.index.json",
                                    "adapter_model.safetensors"};
    for (size_t i = 0; i < 3; i++) {
        char *p = join(dir, markers[i]);
        int ok = exists(p);
        free(p);
        if (ok) return 1;
    }
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void walk(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    int ck = is_ckpt_dir(dir);
    if (ck && fx.nckpts < MAX_ITEMS) fx.ckpts[fx.nckpts++] = xstrdup(dir);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        char *p = join(dir, de->d_name);
        struct stat st;
        if (stat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
            walk(p);
            free(p);
        } else if (ends_with(de->d_name, ".safetensors") && fx.nfiles < MAX_ITEMS) {
            fx.files[fx.nfiles++] = p;
            /* A file outside a checkpoint folder is a checkpoint of its own. */
            if (!ck && fx.nckpts < MAX_ITEMS) fx.ckpts[fx.nckpts++] = xstrdup(p);
        } else {
            free(p);
        }
    }
    closedir(d);
}

static void discover(void)
{
    walk(FIXTURES);
    qsort(fx.files, fx.nfiles, sizeof fx.files[0], cmp_str);
    qsort(fx.ckpts, fx.nckpts, sizeof fx.ckpts[0], cmp_str);
}

/* The shard files of a checkpoint: the file itself, or its folder's .safetensors files. */
static size_t shard_files(const char *ck, char **out, size_t cap)
{
    struct stat st;
    if (stat(ck, &st) == 0 && !S_ISDIR(st.st_mode)) {
        out[0] = xstrdup(ck);
        return 1;
    }
    size_t n = 0;
    DIR *d = opendir(ck);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL && n < cap)
        if (ends_with(de->d_name, ".safetensors")) out[n++] = join(ck, de->d_name);
    if (d) closedir(d);
    qsort(out, n, sizeof out[0], cmp_str);
    return n;
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_every_fixture_opens(void)
{
    /* What the fixture set holds today; more is fine, less means files went missing. */
    ASSERT_TRUE(fx.nfiles >= 18);
    ASSERT_TRUE(fx.nckpts >= 12);
    nlsr_ctx *ctx = nlsr_ctx_create();
    for (size_t i = 0; i < fx.nfiles; i++) {
        nlsr_ckpt *ck = NULL;
        int rc = nlsr_ckpt_open(ctx, fx.files[i], &ck);
        if (rc != 0) FAILF("%s: %s", fx.files[i], nlsr_ctx_error(ctx));
        raw_header h;
        if (rc == 0 && raw_header_read(fx.files[i], &h) == 0) {
            size_t n = 0;
            for (const cJSON *it = h.json->child; it; it = it->next)
                n += strcmp(it->string, "__metadata__") != 0;
            ASSERT_EQ_U(nlsr_ckpt_tensor_count(ck), n);
            cJSON_Delete(h.json);
        }
        nlsr_ckpt_free(ck);
        nlsr_ctx_clear_error(ctx);
    }
    int npeft = 0, nsharded = 0;
    for (size_t i = 0; i < fx.nckpts; i++) {
        nlsr_ckpt *ck = NULL;
        int rc = nlsr_ckpt_open(ctx, fx.ckpts[i], &ck);
        if (rc != 0) {
            FAILF("%s: %s", fx.ckpts[i], nlsr_ctx_error(ctx));
            nlsr_ctx_clear_error(ctx);
            continue;
        }
        /* The tensor count is the sum over the shards' own headers. */
        char *sh[64];
        size_t ns = shard_files(fx.ckpts[i], sh, 64), total = 0;
        for (size_t s = 0; s < ns; s++) {
            raw_header h;
            if (raw_header_read(sh[s], &h) == 0) {
                for (const cJSON *it = h.json->child; it; it = it->next)
                    total += strcmp(it->string, "__metadata__") != 0;
                cJSON_Delete(h.json);
            }
            free(sh[s]);
        }
        ASSERT_EQ_U(nlsr_ckpt_tensor_count(ck), total);
        ASSERT_EQ_U(nlsr_ckpt_shard_count(ck), ns);
        nsharded += ns > 1;
        /* Tensors come in bytewise name order. */
        for (size_t t = 1; t < nlsr_ckpt_tensor_count(ck); t++) {
            nlsr_tensor_info a, b;
            nlsr_ckpt_tensor_info(ck, t - 1, &a);
            nlsr_ckpt_tensor_info(ck, t, &b);
            ASSERT_TRUE(strcmp(a.name, b.name) < 0);
        }
        char *cfg = join(fx.ckpts[i], "adapter_config.json");
        if (exists(cfg)) {
            npeft++;
            ASSERT_EQ_I(nlsr_ckpt_get_kind(ck), NLSR_CKPT_PEFT);
            char *text = slurp(cfg, NULL);
            cJSON *j = text ? cJSON_Parse(text) : NULL;
            const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "r");
            const cJSON *al = cJSON_GetObjectItemCaseSensitive(j, "lora_alpha");
            ASSERT_TRUE(cJSON_IsNumber(r) && cJSON_IsNumber(al));
            if (cJSON_IsNumber(r)) ASSERT_EQ_D(nlsr_ckpt_lora_r(ck), r->valuedouble);
            if (cJSON_IsNumber(al)) ASSERT_TRUE(nlsr_ckpt_lora_alpha(ck) == al->valuedouble);
            cJSON_Delete(j);
            free(text);
        } else {
            ASSERT_EQ_I(nlsr_ckpt_get_kind(ck), NLSR_CKPT_FULL);
            ASSERT_EQ_I(nlsr_ckpt_lora_r(ck), -1);
        }
        free(cfg);
        nlsr_ckpt_free(ck);
    }
    ASSERT_TRUE(npeft >= 5);
    ASSERT_TRUE(nsharded >= 3);
    nlsr_ctx_free(ctx);
}

/* Parses one printed integer exactly (no fraction, no exponent). */
static int parse_int_line(const char *s, long long *v)
{
    char *end;
    errno = 0;
    *v = strtoll(s, &end, 10);
    return errno == 0 && end != s && *end == '\0' ? 0 : -1;
}

static void test_dump_matches_expected(void)
{
    const char *st = FIXTURES "/dtypes.safetensors";
    char *text = slurp(FIXTURES "/dtypes.expected.json", NULL);
    cJSON *exp = text ? cJSON_Parse(text) : NULL;
    free(text);
    raw_header h;
    ASSERT_TRUE(cJSON_IsObject(exp));
    ASSERT_EQ_I(raw_header_read(st, &h), 0);
    if (!cJSON_IsObject(exp) || !h.json) {
        cJSON_Delete(exp);
        return;
    }
    int ntensors = 0, nvalues = 0;
    for (const cJSON *t = h.json->child; t; t = t->next) {
        if (strcmp(t->string, "__metadata__") == 0) continue;
        ntensors++;
        const char *dtype = cJSON_GetObjectItemCaseSensitive(t, "dtype")->valuestring;
        int is_int = dtype[0] == 'I' || dtype[0] == 'U' || strcmp(dtype, "BOOL") == 0;
        const char *args[] = {"dump", st, t->string, NULL};
        cli_result r = cli_run(args);
        ASSERT_EQ_I(r.status, 0);
        ASSERT_STR_EQ(r.err, "");
        const cJSON *want = cJSON_GetObjectItemCaseSensitive(exp, t->string);
        if (strcmp(t->string, "i64") == 0) {
            /* I64 is left out of the JSON (it would not survive float32): compare with the
             * file's bytes, read at the offset its header gives. */
            ASSERT_TRUE(want == NULL);
            const cJSON *of = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
            int64_t raw[3];
            ASSERT_EQ_I(read_at(st, 8 + h.n + json_u64(of->child), raw, sizeof raw), 0);
            char expect[128];
            snprintf(expect, sizeof expect, "%lld\n%lld\n%lld\n", (long long)raw[0],
                     (long long)raw[1], (long long)raw[2]);
            ASSERT_STR_EQ(r.out, expect);
            ASSERT_STR_EQ(r.out, "-9223372036854775808\n9\n9223372036854775807\n");
            cli_result_free(&r);
            continue;
        }
        ASSERT_TRUE(cJSON_IsArray(want));
        if (!cJSON_IsArray(want)) {
            FAILF("dtypes.expected.json has no '%s'", t->string);
            cli_result_free(&r);
            continue;
        }
        int k = 0;
        const cJSON *w = want->child;
        for (char *save = NULL, *line = strtok_r(r.out, "\n", &save); line;
             line = strtok_r(NULL, "\n", &save), k++, w = w ? w->next : NULL) {
            if (!w) {
                FAILF("%s: more lines than expected values", t->string);
                break;
            }
            float wf = (float)w->valuedouble;
            if (is_int) {
                /* Integers are printed exactly. The JSON was written through float32, so
                 * e.g. its I32 value 2147483648.0 is float32(2147483647): compare the printed
                 * integer rounded to float32 with the expected value. */
                long long v;
                if (parse_int_line(line, &v) != 0) FAILF("%s[%d]: '%s' is not an integer",
                                                         t->string, k, line);
                else if ((float)v != wf)
                    FAILF("%s[%d]: printed %lld, expected %.9g", t->string, k, v, (double)wf);
            } else {
                char *end;
                double v = strtod(line, &end);
                if (*end != '\0' || (float)v != wf || !signbit(v) != !signbit(wf))
                    FAILF("%s[%d]: printed '%s', expected %.9g", t->string, k, line,
                          (double)wf);
            }
            nvalues++;
        }
        if (w) FAILF("%s: fewer lines (%d) than expected values", t->string, k);
        cli_result_free(&r);
    }
    /* Every expected entry names a tensor of the file. */
    for (const cJSON *w = exp->child; w; w = w->next)
        if (!cJSON_GetObjectItemCaseSensitive(h.json, w->string))
            FAILF("expected '%s' is not in dtypes.safetensors", w->string);
    ASSERT_EQ_I(ntensors, cJSON_GetArraySize(exp) + 1); /* + i64 */
    ASSERT_TRUE(nvalues >= 60);
    cJSON_Delete(h.json);
    cJSON_Delete(exp);
}

/* Compares two safetensors files tensor by tensor, independently of the reader. */
static void compare_files(const char *a, const char *b)
{
    raw_header ha, hb;
    ASSERT_EQ_I(raw_header_read(a, &ha), 0);
    ASSERT_EQ_I(raw_header_read(b, &hb), 0);
    if (!ha.json || !hb.json) {
        cJSON_Delete(ha.json);
        cJSON_Delete(hb.json);
        return;
    }
    ASSERT_EQ_I(cJSON_GetArraySize(ha.json), cJSON_GetArraySize(hb.json));
    ASSERT_EQ_U(ha.size - 8 - ha.n, hb.size - 8 - hb.n);
    for (const cJSON *ta = ha.json->child; ta; ta = ta->next) {
        const cJSON *tb = cJSON_GetObjectItemCaseSensitive(hb.json, ta->string);
        if (!tb) {
            FAILF("%s: '%s' missing from the rewrite %s", a, ta->string, b);
            continue;
        }
        if (strcmp(ta->string, "__metadata__") == 0) {
            /* Same pairs in the same order. */
            ASSERT_EQ_I(cJSON_GetArraySize(ta), cJSON_GetArraySize(tb));
            const cJSON *x = ta->child, *y = tb->child;
            for (; x && y; x = x->next, y = y->next) {
                ASSERT_STR_EQ(x->string, y->string);
                ASSERT_STR_EQ(x->valuestring, y->valuestring);
            }
            continue;
        }
        const cJSON *da = cJSON_GetObjectItemCaseSensitive(ta, "dtype");
        const cJSON *db = cJSON_GetObjectItemCaseSensitive(tb, "dtype");
        ASSERT_STR_EQ(da->valuestring, db->valuestring);
        char *sa = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(ta, "shape"));
        char *sb = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(tb, "shape"));
        ASSERT_STR_EQ(sa, sb);
        free(sa);
        free(sb);
        const cJSON *oa = cJSON_GetObjectItemCaseSensitive(ta, "data_offsets");
        const cJSON *ob = cJSON_GetObjectItemCaseSensitive(tb, "data_offsets");
        uint64_t ba = json_u64(oa->child), ea = json_u64(oa->child->next);
        uint64_t bb = json_u64(ob->child), eb = json_u64(ob->child->next);
        ASSERT_EQ_U(ea - ba, eb - bb);
        if (ea - ba != eb - bb || ea - ba > (64u << 20)) continue;
        size_t len = (size_t)(ea - ba);
        unsigned char *x = malloc(len ? len : 1), *y = malloc(len ? len : 1);
        ASSERT_EQ_I(read_at(a, 8 + ha.n + ba, x, len), 0);
        ASSERT_EQ_I(read_at(b, 8 + hb.n + bb, y, len), 0);
        if (memcmp(x, y, len) != 0) FAILF("%s: '%s' data differs in %s", a, ta->string, b);
        free(x);
        free(y);
    }
    cJSON_Delete(ha.json);
    cJSON_Delete(hb.json);
}

static void compare_text_files(const char *a, const char *b)
{
    size_t la = 0, lb = 0;
    char *x = slurp(a, &la), *y = slurp(b, &lb);
    ASSERT_TRUE(x && y);
    if (x && y && (la != lb || memcmp(x, y, la) != 0)) FAILF("%s differs from %s", b, a);
    free(x);
    free(y);
}

static void test_rewrite_round_trip(void)
{
    for (size_t i = 0; i < fx.nckpts; i++) {
        char name[64];
        snprintf(name, sizeof name, "rewrite-%zu", i);
        char *out = join(tmp_root, name);
        const char *args[] = {"rewrite", fx.ckpts[i], out, NULL};
        cli_result r = cli_run(args);
        ASSERT_EQ_I(r.status, 0);
        if (r.status != 0) FAILF("rewrite %s: %s", fx.ckpts[i], r.err);
        cli_result_free(&r);
        /* Every shard file is rewritten under its own name and compares equal. */
        char *src[64];
        size_t ns = shard_files(fx.ckpts[i], src, 64);
        for (size_t s = 0; s < ns; s++) {
            const char *base = strrchr(src[s], '/') + 1;
            char *dst = join(out, base);
            ASSERT_TRUE(exists(dst));
            if (exists(dst)) compare_files(src[s], dst);
            free(dst);
            free(src[s]);
        }
        /* Side files (index, configs) come along byte for byte. */
        struct stat st;
        if (stat(fx.ckpts[i], &st) == 0 && S_ISDIR(st.st_mode)) {
            DIR *d = opendir(fx.ckpts[i]);
            struct dirent *de;
            while (d && (de = readdir(d)) != NULL) {
                if (!ends_with(de->d_name, ".json")) continue;
                char *a = join(fx.ckpts[i], de->d_name), *b = join(out, de->d_name);
                compare_text_files(a, b);
                free(a);
                free(b);
            }
            if (d) closedir(d);
            /* And the rewrite opens as the same kind of checkpoint. */
            nlsr_ctx *ctx = nlsr_ctx_create();
            nlsr_ckpt *a = NULL, *b = NULL;
            ASSERT_EQ_I(nlsr_ckpt_open(ctx, fx.ckpts[i], &a), 0);
            ASSERT_EQ_I(nlsr_ckpt_open(ctx, out, &b), 0);
            if (a && b) {
                ASSERT_EQ_I(nlsr_ckpt_get_kind(a), nlsr_ckpt_get_kind(b));
                ASSERT_EQ_U(nlsr_ckpt_tensor_count(a), nlsr_ckpt_tensor_count(b));
                ASSERT_EQ_U(nlsr_ckpt_shard_count(a), nlsr_ckpt_shard_count(b));
            }
            nlsr_ckpt_free(a);
            nlsr_ckpt_free(b);
            nlsr_ctx_free(ctx);
        }
        /* A second rewrite into the same place is refused without --force. */
        if (i == 0) {
            const char *again[] = {"rewrite", fx.ckpts[i], out, NULL};
            expect_cli_refusal(again, out, "exists");
            const char *forced[] = {"rewrite", fx.ckpts[i], out, "--force", NULL};
            cli_result rf = cli_run(forced);
            ASSERT_EQ_I(rf.status, 0);
            cli_result_free(&rf);
        }
        remove_tree(out);
        free(out);
    }
}

static const cJSON *get(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) FAILF("inspect JSON lacks '%s'", key);
    return v;
}

static void test_inspect_json(void)
{
    int checked_bytes = 0;
    for (size_t i = 0; i < fx.nckpts; i++) {
        const char *args[] = {"inspect", "--json", fx.ckpts[i], NULL};
        cli_result r = cli_run(args);
        ASSERT_EQ_I(r.status, 0);
        cJSON *j = cJSON_Parse(r.out);
        ASSERT_TRUE(cJSON_IsObject(j));
        cli_result_free(&r);
        if (!cJSON_IsObject(j)) {
            cJSON_Delete(j);
            continue;
        }
        struct stat st;
        int isdir = stat(fx.ckpts[i], &st) == 0 && S_ISDIR(st.st_mode);
        char *cfg = join(fx.ckpts[i], "adapter_config.json");
        int peft = isdir && exists(cfg);
        free(cfg);
        const cJSON *kind = get(j, "kind"), *path = get(j, "path"), *ts = get(j, "tensors");
        const cJSON *tot = get(j, "totals");
        ASSERT_TRUE(cJSON_IsString(kind) && !strcmp(kind->valuestring, peft ? "peft" : "full"));
        ASSERT_TRUE(cJSON_IsString(path) && !strcmp(path->valuestring, fx.ckpts[i]));
        ASSERT_TRUE(cJSON_IsArray(ts) && cJSON_IsObject(tot));
        if (!cJSON_IsArray(ts) || !cJSON_IsObject(tot)) {
            cJSON_Delete(j);
            continue;
        }
        const char *tkeys[] = {"tensors", "parameters", "bytes", "shards", "layers",
                               "target_tensors"};
        for (size_t k = 0; k < 6; k++) ASSERT_TRUE(cJSON_IsNumber(get(tot, tkeys[k])));
        ASSERT_TRUE(cJSON_IsArray(get(tot, "target_modules")));
        if (peft) {
            const cJSON *l = get(j, "lora");
            ASSERT_TRUE(cJSON_IsNumber(get(l, "r")) && cJSON_IsNumber(get(l, "lora_alpha")));
        } else {
            ASSERT_TRUE(cJSON_GetObjectItemCaseSensitive(j, "lora") == NULL);
        }
        uint64_t params = 0, bytes = 0;
        const char *last_name = "";
        for (const cJSON *t = ts->child; t; t = t->next) {
            const cJSON *nm = get(t, "name"), *dt = get(t, "dtype"), *sh = get(t, "shape");
            const cJSON *fl = get(t, "file"), *of = get(t, "offset"), *nb = get(t, "nbytes");
            if (!cJSON_IsString(nm) || !cJSON_IsString(dt) || !cJSON_IsArray(sh) ||
                !cJSON_IsString(fl) || !cJSON_IsNumber(of) || !cJSON_IsNumber(nb)) {
                FAILF("%s: malformed tensor entry", fx.ckpts[i]);
                continue;
            }
            ASSERT_TRUE(strcmp(last_name, nm->valuestring) < 0);
            last_name = nm->valuestring;
            /* The offset is absolute: 8 + header length + the begin of data_offsets in the
             * file's own header. */
            raw_header h;
            if (raw_header_read(fl->valuestring, &h) != 0) {
                FAILF("%s: cannot read the header of %s", fx.ckpts[i], fl->valuestring);
                continue;
            }
            const cJSON *e = cJSON_GetObjectItemCaseSensitive(h.json, nm->valuestring);
            ASSERT_TRUE(e != NULL);
            if (e) {
                const cJSON *o = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
                uint64_t b = json_u64(o->child), en = json_u64(o->child->next);
                ASSERT_EQ_U(json_u64(of), 8 + h.n + b);
                ASSERT_EQ_U(json_u64(nb), en - b);
                ASSERT_STR_EQ(dt->valuestring,
                              cJSON_GetObjectItemCaseSensitive(e, "dtype")->valuestring);
                char *s1 = cJSON_PrintUnformatted(sh);
                char *s2 = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(e, "shape"));
                ASSERT_STR_EQ(s1, s2);
                free(s1);
                free(s2);
                ASSERT_TRUE(json_u64(of) + json_u64(nb) <= h.size);
            }
            uint64_t numel = 1;
            for (const cJSON *d = sh->child; d; d = d->next) numel *= json_u64(d);
            params += numel;
            bytes += json_u64(nb);
            cJSON_Delete(h.json);

            /* For dtypes.safetensors, decode the bytes at that offset here and compare them
             * with the expected values: the offset points at the tensor's data. */
            if (ends_with(fx.ckpts[i], "/dtypes.safetensors") && json_u64(nb) > 0 &&
                (!strcmp(dt->valuestring, "F32") || !strcmp(dt->valuestring, "I16"))) {
                unsigned char buf[64];
                size_t n = (size_t)json_u64(nb);
                ASSERT_TRUE(n <= sizeof buf);
                if (n > sizeof buf || read_at(fl->valuestring, json_u64(of), buf, n) != 0)
                    continue;
                char *text = slurp(FIXTURES "/dtypes.expected.json", NULL);
                cJSON *exp = text ? cJSON_Parse(text) : NULL;
                const cJSON *w = cJSON_GetObjectItemCaseSensitive(exp, nm->valuestring);
                size_t es = dt->valuestring[0] == 'F' ? 4 : 2;
                ASSERT_EQ_I(cJSON_GetArraySize(w), (int)(n / es));
                size_t k = 0;
                for (const cJSON *x = w ? w->child : NULL; x && k < n / es; x = x->next, k++) {
                    double v;
                    if (es == 4) {
                        float f;
                        memcpy(&f, buf + 4 * k, 4);
                        v = f;
                    } else {
                        int16_t s;
                        memcpy(&s, buf + 2 * k, 2);
                        v = s;
                    }
                    if (v != x->valuedouble)
                        FAILF("%s[%zu] at offset %llu: %g, expected %g", nm->valuestring, k,
                              (unsigned long long)json_u64(of), v, x->valuedouble);
                    checked_bytes++;
                }
                cJSON_Delete(exp);
                free(text);
            }
        }
        ASSERT_EQ_U(json_u64(get(tot, "tensors")), (uint64_t)cJSON_GetArraySize(ts));
        ASSERT_EQ_U(json_u64(get(tot, "parameters")), params);
        ASSERT_EQ_U(json_u64(get(tot, "bytes")), bytes);
        char *sh[64];
        size_t ns = shard_files(fx.ckpts[i], sh, 64);
        for (size_t s = 0; s < ns; s++) free(sh[s]);
        ASSERT_EQ_U(json_u64(get(tot, "shards")), ns);
        cJSON_Delete(j);

        /* The human listing works too. */
        const char *human[] = {"inspect", fx.ckpts[i], NULL};
        cli_result rh = cli_run(human);
        ASSERT_EQ_I(rh.status, 0);
        ASSERT_CONTAINS(rh.out, "tensors: ");
        cli_result_free(&rh);
    }
    ASSERT_TRUE(checked_bytes >= 11); /* f32 (8) and i16 (3) were decoded at their offsets */
}

/* Writes `hdr` + data_size bytes as a safetensors file. */
static void write_image(const char *path, const char *hdr, size_t data_size)
{
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)((uint64_t)strlen(hdr) >> (8 * i));
    fwrite(len, 1, 8, f);
    fwrite(hdr, 1, strlen(hdr), f);
    for (size_t i = 0; i < data_size; i++) fputc(0, f);
    fclose(f);
}

static void copy_file(const char *src, const char *dst)
{
    size_t n = 0;
    char *buf = slurp(src, &n);
    FILE *f = fopen(dst, "wb");
    if (!buf || !f || fwrite(buf, 1, n, f) != n) abort();
    fclose(f);
    free(buf);
}

static void test_cli_refusals(void)
{
    char *bad = join(tmp_root, "gap.safetensors");
    write_image(bad,
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]}}",
                6);
    char *out = join(tmp_root, "never-written");
    const char *inspect[] = {"inspect", bad, NULL};
    const char *inspect_json[] = {"inspect", "--json", bad, NULL};
    const char *dump[] = {"dump", bad, "a", NULL};
    const char *rewrite[] = {"rewrite", bad, out, NULL};
    expect_cli_refusal(inspect, bad, "tensor 'b': gap of 2 bytes");
    expect_cli_refusal(inspect_json, bad, "gap of 2 bytes");
    expect_cli_refusal(dump, bad, "gap of 2 bytes");
    expect_cli_refusal(rewrite, bad, "gap of 2 bytes");
    ASSERT_TRUE(!exists(out)); /* a refused input writes nothing */

    /* An unknown dtype is named. */
    char *bad2 = join(tmp_root, "dtype.safetensors");
    write_image(bad2, "{\"w\":{\"dtype\":\"F4\",\"shape\":[2],\"data_offsets\":[0,1]}}", 1);
    const char *inspect2[] = {"inspect", bad2, NULL};
    expect_cli_refusal(inspect2, bad2, "tensor 'w': unknown dtype 'F4'");

    /* A sharded checkpoint with one damaged shard: refused naming that shard, and rewrite
     * leaves no output folder behind. */
    char *ck = join(tmp_root, "damaged");
    mkdir(ck, 0755);
    const char *names[] = {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                           "model-00003-of-00003.safetensors", "model.safetensors.index.json",
                           "config.json"};
    for (size_t i = 0; i < 5; i++) {
        char *s = join(FIXTURES "/finetuned", names[i]), *d = join(ck, names[i]);
        copy_file(s, d);
        free(s);
        free(d);
    }
    char *shard2 = join(ck, names[1]);
    ASSERT_EQ_I(truncate(shard2, 4096), 0); /* cut inside the data */
    const char *rw2[] = {"rewrite", ck, out, NULL};
    expect_cli_refusal(rw2, shard2, "past the end of the file");
    ASSERT_TRUE(!exists(out));
    const char *dump2[] = {"dump", ck, "lm_head.weight", NULL};
    expect_cli_refusal(dump2, shard2, "past the end of the file");

    /* A shard the index names is missing. */
    unlink(shard2);
    const char *insp3[] = {"inspect", ck, NULL};
    expect_cli_refusal(insp3, "model.safetensors.index.json", "which does not exist");
    const char *rw3[] = {"rewrite", ck, out, NULL};
    expect_cli_refusal(rw3, names[1], "which does not exist");
    ASSERT_TRUE(!exists(out));

    /* A missing input and a missing tensor. */
    char *missing = join(tmp_root, "no-such-model");
    const char *insp4[] = {"inspect", missing, NULL};
    expect_cli_refusal(insp4, missing, "no such file or folder");
    const char *dump4[] = {"dump", FIXTURES "/dtypes.safetensors", "nope", NULL};
    expect_cli_refusal(dump4, "dtypes.safetensors", "no tensor named 'nope'");

    free(missing);
    free(shard2);
    free(ck);
    free(bad2);
    free(out);
    free(bad);
}

static void test_cli_usage(void)
{
    const char *dt = FIXTURES "/dtypes.safetensors";
    char *out = join(tmp_root, "usage-out");
    const char *const cases[][6] = {
        {NULL},                                  /* no command */
        {"frobnicate", NULL},                    /* unknown command */
        {"inspect", NULL},                       /* missing PATH */
        {"inspect", "--bogus", dt, NULL},        /* unknown option */
        {"inspect", dt, dt, NULL},               /* extra argument */
        {"dump", dt, NULL},                      /* missing TENSOR */
        {"dump", dt, "f32", "x", NULL},          /* extra argument */
        {"rewrite", dt, NULL},                   /* missing OUT */
        {"rewrite", dt, out, "x", NULL},         /* extra argument */
        {"rewrite", "--now", dt, out, NULL},     /* unknown option */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cli_result r = cli_run(cases[i]);
        if (r.status != 2)
            FAILF("usage case %zu (%s): exit %d, want 2", i, cases[i][0] ? cases[i][0] : "-",
                  r.status);
        ASSERT_STR_EQ(r.out, "");
        ASSERT_TRUE(r.err[0] != '\0');
        if (i > 0) { /* with no command at all, the whole usage text is printed */
            ASSERT_EQ_I(count_lines(r.err), 1);
            ASSERT_CONTAINS(r.err, "nlsr: usage error: ");
        }
        cli_result_free(&r);
    }
    ASSERT_TRUE(!exists(out));

    const char *help[] = {"help", NULL}, *version[] = {"version", NULL};
    cli_result r = cli_run(help);
    ASSERT_EQ_I(r.status, 0);
    ASSERT_CONTAINS(r.out, "usage: nlsr");
    cli_result_free(&r);
    r = cli_run(version);
    ASSERT_EQ_I(r.status, 0);
    ASSERT_STR_EQ(r.out, "nlsr " NLSR_VERSION "\n");
    cli_result_free(&r);
    free(out);
}

int main(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmp_root, sizeof tmp_root, "%s/nlsr-test-fx-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 1;
    }
    discover();
    RUN_TEST(test_every_fixture_opens);
    RUN_TEST(test_dump_matches_expected);
    RUN_TEST(test_rewrite_round_trip);
    RUN_TEST(test_inspect_json);
    RUN_TEST(test_cli_refusals);
    RUN_TEST(test_cli_usage);
    printf("%zu fixture files, %zu checkpoints\n", fx.nfiles, fx.nckpts);
    for (size_t i = 0; i < fx.nfiles; i++) free(fx.files[i]);
    for (size_t i = 0; i < fx.nckpts; i++) free(fx.ckpts[i]);
    remove_tree(tmp_root);
    return test_finish();
}
