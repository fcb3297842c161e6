/* SPDX-License-Identifier: Apache-2.0 */
/* The report's audit record (audit.h): paths, times, host, and XXH64 fingerprints of the
 * bytes the job read and wrote. */
#define _GNU_SOURCE
#include "audit.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../io/file.h"
#include "../io/outpath.h"
#include "../io/patchfile.h"

/* A tail left unread by a job that read everything before it is read at the end up to this
 * size (a patch file's header and trailer); a larger gap stays "bytes read". */
#define TAIL_MAX (64ull << 20)
#define CHUNK (8u << 20)

typedef struct arange {
    uint64_t off, len;
} arange;

typedef struct afile {
    char *path, *resolved;
    char *src;      /* output: where its bytes are while the job runs (temporary folder) */
    dev_t dev;
    ino_t ino;
    uint64_t size;
    int input;
    nlsr_xxh64_state h;
    arange *order;  /* ranges hashed, in hashing order (adjacent ones merged) */
    size_t norder, cap_order;
    arange *seen;   /* the same bytes as a sorted, merged set */
    size_t nseen, cap_seen;
    int done;       /* output: hashed; input: tail read */
    int failed;     /* a read or an allocation failed: no fingerprint */
} afile;

typedef struct aentry {
    char *role, *given, *resolved;
    char *at;             /* output: the temporary folder holding it until the commit */
    int output, in_place;
    size_t first, nfiles; /* files[first .. first + nfiles) */
    int listed;           /* output: its files were listed */
} aentry;

struct nlsr_audit {
    char started[40], finished[40];
    aentry *e;
    size_t ne;
    afile *f;
    size_t nf;
    double out_seconds;
    int depth;
};

static void utc_now(char *buf, size_t cap)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char base[24];
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, cap, "%.19s.%03dZ", base, (int)((ts.tv_nsec / 1000000L) % 1000));
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void audit_free(struct nlsr_audit *a)
{
    if (!a) return;
    for (size_t i = 0; i < a->ne; i++) {
        free(a->e[i].role);
        free(a->e[i].given);
        free(a->e[i].resolved);
        free(a->e[i].at);
    }
    for (size_t i = 0; i < a->nf; i++) {
        free(a->f[i].path);
        free(a->f[i].resolved);
        free(a->f[i].src);
        free(a->f[i].order);
        free(a->f[i].seen);
    }
    free(a->e);
    free(a->f);
    free(a);
}

static void tap_hook(nlsr_ctx *ctx, int fd, uint64_t off, const void *data, size_t len)
{
    nlsr_audit_tap(ctx, fd, off, data, len);
}

int nlsr_audit_begin(nlsr_ctx *ctx, const nlsr_realign_params *p)
{
    if (ctx->audit) {
        ctx->audit->depth++;
        return 0;
    }
    if (!p || (!p->report_path && !p->json_stdout)) return 0;
    struct nlsr_audit *a = calloc(1, sizeof *a);
    if (!a) return 0; /* no audit then: the report says so by lacking it */
    utc_now(a->started, sizeof a->started);
    a->depth = 1;
    ctx->audit = a;
    ctx->audit_free = audit_free;
    ctx->read_tap = tap_hook;
    return 1;
}

void nlsr_audit_end(nlsr_ctx *ctx, int token)
{
    if (!ctx->audit) return;
    if (!token) {
        if (ctx->audit->depth > 1) ctx->audit->depth--;
        return;
    }
    audit_free(ctx->audit);
    ctx->audit = NULL;
    ctx->read_tap = NULL;
}

/* ---- registration -------------------------------------------------------------------------- */

static aentry *add_entry(struct nlsr_audit *a, const char *role, const char *given, int output)
{
    aentry *e = realloc(a->e, (a->ne + 1) * sizeof *e);
    if (!e) return NULL;
    a->e = e;
    e = &a->e[a->ne];
    memset(e, 0, sizeof *e);
    e->role = strdup(role);
    e->given = strdup(given);
    e->resolved = realpath(given, NULL);
    if (!e->resolved && output) {
        /* Not created yet: where it will be (outpath.h's resolution). */
        nlsr_err err = {0, ""};
        (void)nlsr_out_resolve(&err, given, &e->resolved);
    }
    e->output = output;
    e->first = a->nf;
    if (!e->role || !e->given) {
        free(e->role);
        free(e->given);
        free(e->resolved);
        return NULL;
    }
    a->ne++;
    return e;
}

/* src: where the bytes are now, when not at path yet (an output before its commit). */
static afile *add_file_at(struct nlsr_audit *a, const char *path, const char *src, int input)
{
    afile *f = realloc(a->f, (a->nf + 1) * sizeof *f);
    if (!f) return NULL;
    a->f = f;
    f = &a->f[a->nf];
    memset(f, 0, sizeof *f);
    if (!(f->path = strdup(path))) return NULL;
    if (src && !(f->src = strdup(src))) return NULL;
    f->resolved = realpath(path, NULL);
    f->input = input;
    struct stat st;
    if (stat(src ? src : path, &st) == 0) {
        f->dev = st.st_dev;
        f->ino = st.st_ino;
        f->size = (uint64_t)st.st_size;
    } else {
        f->failed = 1;
    }
    nlsr_xxh64_init(&f->h, 0);
    a->nf++;
    return f;
}

static int push(arange **v, size_t *n, size_t *cap, size_t at, arange r)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 8;
        arange *x = realloc(*v, c * sizeof *x);
        if (!x) return -1;
        *v = x;
        *cap = c;
    }
    memmove(*v + at + 1, *v + at, (*n - at) * sizeof **v);
    (*v)[at] = r;
    (*n)++;
    return 0;
}

/* Adds [off, off + len) to the sorted merged set. */
static int seen_add(afile *f, uint64_t off, uint64_t len)
{
    uint64_t a = off, b = off + len;
    size_t i = 0;
    while (i < f->nseen && f->seen[i].off + f->seen[i].len < a) i++;
    size_t j = i;
    while (j < f->nseen && f->seen[j].off <= b) {
        if (f->seen[j].off < a) a = f->seen[j].off;
        if (f->seen[j].off + f->seen[j].len > b) b = f->seen[j].off + f->seen[j].len;
        j++;
    }
    if (j > i) {
        f->seen[i] = (arange){a, b - a};
        memmove(f->seen + i + 1, f->seen + j, (f->nseen - j) * sizeof *f->seen);
        f->nseen -= j - i - 1;
        return 0;
    }
    return push(&f->seen, &f->nseen, &f->cap_seen, i, (arange){a, b - a});
}

/* Hashes the bytes of [off, off + len) not hashed before, in increasing offset order. */
static void file_tap(afile *f, uint64_t off, const unsigned char *data, uint64_t len)
{
    if (f->failed || len == 0) return;
    uint64_t pos = off, end = off + len;
    size_t i = 0;
    while (i < f->nseen && f->seen[i].off + f->seen[i].len <= pos) i++;
    while (pos < end) {
        uint64_t stop = end;
        if (i < f->nseen && f->seen[i].off < end) stop = f->seen[i].off > pos ? f->seen[i].off : pos;
        if (stop > pos) {
            nlsr_xxh64_update(&f->h, data + (pos - off), (size_t)(stop - pos));
            arange *last = f->norder ? &f->order[f->norder - 1] : NULL;
            if (last && last->off + last->len == pos) last->len += stop - pos;
            else if (push(&f->order, &f->norder, &f->cap_order, f->norder,
                          (arange){pos, stop - pos}) < 0)
                f->failed = 1;
            pos = stop;
        }
        if (pos >= end || i >= f->nseen) continue;
        uint64_t se = f->seen[i].off + f->seen[i].len;
        if (f->seen[i].off <= pos) pos = se < end ? se : end;
        i++;
    }
    if (seen_add(f, off, len) < 0) f->failed = 1;
}

static afile *add_file(struct nlsr_audit *a, const char *path, int input)
{
    return add_file_at(a, path, NULL, input);
}

/* Reads [off, off + len) of path and hashes it (headers, tails, outputs). */
static int file_read_tap(afile *f, uint64_t off, uint64_t len)
{
    int fd = open(f->src ? f->src : f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    unsigned char *buf = malloc(CHUNK);
    int rc = buf ? 0 : -1;
    nlsr_err e = {0, ""};
    while (rc == 0 && len > 0) {
        size_t n = len < CHUNK ? (size_t)len : CHUNK;
        rc = nlsr_pread_all(fd, buf, n, off, f->path, &e);
        if (rc == 0) file_tap(f, off, buf, n);
        off += n;
        len -= n;
    }
    free(buf);
    close(fd);
    return rc;
}

static int registered(const struct nlsr_audit *a, const char *role, const char *given)
{
    for (size_t i = 0; i < a->ne; i++)
        if (!strcmp(a->e[i].role, role) && !strcmp(a->e[i].given, given)) return 1;
    return 0;
}

void nlsr_audit_input_ckpt(nlsr_ctx *ctx, const char *role, const char *given,
                           const nlsr_ckpt *ck)
{
    struct nlsr_audit *a = ctx->audit;
    if (!a || a->depth != 1 || !ck || !given || registered(a, role, given)) return;
    aentry *e = add_entry(a, role, given, 0);
    if (!e) return;
    size_t ei = (size_t)(e - a->e);
    for (size_t s = 0; s < ck->nshards; s++) {
        const st_file *sf = ck->shards[s];
        afile *f = add_file(a, sf->path, 1);
        if (!f) break;
        a->e[ei].nfiles++;
        /* The header (8 + N bytes) was parsed at open; hashing it here reads it from the page
         * cache. The streams then deliver the data section. */
        if (!f->failed && file_read_tap(f, 0, sf->data_start) < 0) f->failed = 1;
    }
}

void nlsr_audit_input_file(nlsr_ctx *ctx, const char *role, const char *given)
{
    struct nlsr_audit *a = ctx->audit;
    if (!a || a->depth != 1 || !given || registered(a, role, given)) return;
    aentry *e = add_entry(a, role, given, 0);
    if (!e) return;
    size_t ei = (size_t)(e - a->e);
    afile *f = add_file(a, given, 1);
    if (!f) return;
    a->e[ei].nfiles = 1;
    /* A patch file's 16-byte preamble: its reader checks it by value and does not tap it. */
    if (!f->failed && file_read_tap(f, 0, f->size < 16 ? f->size : 16) < 0) f->failed = 1;
}

void nlsr_audit_output(nlsr_ctx *ctx, const char *role, const char *given, int in_place)
{
    struct nlsr_audit *a = ctx->audit;
    if (!a || a->depth != 1 || !given) return;
    aentry *e = add_entry(a, role, given, 1);
    if (e) e->in_place = in_place;
}

void nlsr_audit_output_at(nlsr_ctx *ctx, const char *given, const char *where)
{
    struct nlsr_audit *a = ctx->audit;
    if (!a || a->depth != 1 || !given || !where) return;
    for (size_t i = 0; i < a->ne; i++)
        if (a->e[i].output && strcmp(a->e[i].given, given) == 0 && !a->e[i].at)
            a->e[i].at = strdup(where);
}

void nlsr_audit_tap(nlsr_ctx *ctx, int fd, uint64_t off, const void *data, size_t len)
{
    struct nlsr_audit *a = ctx->audit;
    if (!a || !a->nf) return;
    struct stat st;
    if (fstat(fd, &st) != 0) return;
    for (size_t i = 0; i < a->nf; i++)
        if (a->f[i].input && a->f[i].dev == st.st_dev && a->f[i].ino == st.st_ino)
            file_tap(&a->f[i], off, data, len);
}

/* ---- the JSON ------------------------------------------------------------------------------ */

static int cmp_str(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && !strcmp(s + n - m, suf);
}

/* An output's weight files: the file itself, or a folder's *.safetensors, by name. */
static void list_output(struct nlsr_audit *a, size_t ei)
{
    aentry *e = &a->e[ei];
    e->listed = 1;
    e->first = a->nf;
    const char *src = e->at ? e->at : e->given;
    if (nlsr_is_dir(src) != 1) {
        if (nlsr_exists(src) && add_file_at(a, e->given, e->at, 0)) a->e[ei].nfiles = 1;
        return;
    }
    DIR *d = opendir(src);
    if (!d) return;
    char **names = NULL;
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.' && ends_with(de->d_name, ".safetensors")) {
            char **x = realloc(names, (n + 1) * sizeof *x);
            if (!x) break;
            names = x;
            if (!(names[n] = strdup(de->d_name))) break;
            n++;
        }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        char *p = nlsr_path_join(a->e[ei].given, names[i]);
        char *s = a->e[ei].at ? nlsr_path_join(a->e[ei].at, names[i]) : NULL;
        if (p && add_file_at(a, p, s, 0)) {
            afile *f = &a->f[a->nf - 1];
            if (!f->resolved && a->e[ei].resolved)
                f->resolved = nlsr_path_join(a->e[ei].resolved, names[i]);
            a->e[ei].nfiles++;
        }
        free(s);
        free(p);
        free(names[i]);
    }
    free(names);
}

static void finish_file(struct nlsr_audit *a, afile *f)
{
    if (f->done || f->failed) return;
    f->done = 1;
    if (!f->input) {
        double t0 = mono();
        if (file_read_tap(f, 0, f->size) < 0) f->failed = 1;
        a->out_seconds += mono() - t0;
        return;
    }
    /* Everything before a small unread tail was read in order: read the tail. */
    if (f->norder == 1 && f->order[0].off == 0 && f->order[0].len < f->size &&
        f->size - f->order[0].len <= TAIL_MAX)
        if (file_read_tap(f, f->order[0].len, f->size - f->order[0].len) < 0) f->failed = 1;
}

static cJSON *file_json(const afile *f)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "path", f->path);
    if (f->resolved) cJSON_AddStringToObject(o, "resolved", f->resolved);
    else cJSON_AddNullToObject(o, "resolved");
    cJSON_AddNumberToObject(o, "bytes", (double)f->size);
    if (f->failed) {
        cJSON_AddNullToObject(o, "xxh64");
        return o;
    }
    char hex[20];
    snprintf(hex, sizeof hex, "%016" PRIx64, nlsr_xxh64_digest(&f->h));
    uint64_t hashed = 0;
    for (size_t i = 0; i < f->norder; i++) hashed += f->order[i].len;
    int whole = (f->norder == 1 && f->order[0].off == 0 && f->order[0].len == f->size) ||
                (f->size == 0 && f->norder == 0);
    if (whole) {
        cJSON_AddStringToObject(o, "xxh64", hex);
        return o;
    }
    cJSON_AddStringToObject(o, "xxh64_of_bytes_read", hex);
    cJSON_AddNumberToObject(o, "bytes_hashed", (double)hashed);
    cJSON *r = cJSON_AddArrayToObject(o, "ranges_read");
    for (size_t i = 0; r && i < f->norder; i++) {
        cJSON *p = cJSON_CreateArray();
        if (!p) break;
        cJSON_AddItemToArray(p, cJSON_CreateNumber((double)f->order[i].off));
        cJSON_AddItemToArray(p, cJSON_CreateNumber((double)f->order[i].len));
        cJSON_AddItemToArray(r, p);
    }
    return o;
}

static cJSON *entries_json(struct nlsr_audit *a, int output)
{
    cJSON *arr = cJSON_CreateArray();
    if (!arr) return NULL;
    for (size_t i = 0; i < a->ne; i++) {
        if (a->e[i].output != output) continue;
        if (output && !a->e[i].listed && !a->e[i].in_place) list_output(a, i);
        const aentry *e = &a->e[i];
        cJSON *o = cJSON_CreateObject();
        if (!o) break;
        cJSON_AddItemToArray(arr, o);
        cJSON_AddStringToObject(o, "role", e->role);
        cJSON_AddStringToObject(o, "path", e->given);
        if (e->resolved) cJSON_AddStringToObject(o, "resolved", e->resolved);
        else {
            char *r = realpath(e->given, NULL); /* an output created since registration */
            if (r) cJSON_AddStringToObject(o, "resolved", r);
            else cJSON_AddNullToObject(o, "resolved");
            free(r);
        }
        if (e->in_place) cJSON_AddBoolToObject(o, "in_place", 1);
        cJSON *files = cJSON_AddArrayToObject(o, "files");
        for (size_t k = 0; files && k < e->nfiles; k++) {
            afile *f = &a->f[e->first + k];
            finish_file(a, f);
            cJSON *fj = file_json(f);
            if (fj) cJSON_AddItemToArray(files, fj);
        }
    }
    return arr;
}

cJSON *nlsr_audit_json(nlsr_ctx *ctx)
{
    struct nlsr_audit *a = ctx->audit;
    if (!a) return NULL;
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "tool", "nlsr");
    cJSON_AddStringToObject(o, "version", NLSR_VERSION);
    if (ctx->argv) {
        cJSON *cl = cJSON_AddArrayToObject(o, "command_line");
        for (int i = 0; cl && i < ctx->argc; i++)
            cJSON_AddItemToArray(cl, cJSON_CreateString(ctx->argv[i]));
    } else {
        cJSON_AddNullToObject(o, "command_line");
    }
    char host[HOST_NAME_MAX + 1] = "";
    if (gethostname(host, sizeof host) != 0) host[0] = '\0';
    host[HOST_NAME_MAX] = '\0';
    cJSON_AddStringToObject(o, "host", host);
    cJSON_AddStringToObject(o, "started_utc", a->started);
    cJSON *in = entries_json(a, 0), *out = entries_json(a, 1);
    /* The end: after the outputs were hashed, when the report is written. */
    if (!a->finished[0]) utc_now(a->finished, sizeof a->finished);
    cJSON_AddStringToObject(o, "finished_utc", a->finished);
    if (in) cJSON_AddItemToObject(o, "inputs", in);
    if (out) cJSON_AddItemToObject(o, "outputs", out);
    cJSON_AddItemToObject(o, "output_hash_seconds", cJSON_CreateNumber(a->out_seconds));
    cJSON_AddStringToObject(
        o, "fingerprints",
        "XXH64, seed 0, 16 hex digits. \"xxh64\": of the whole file; inputs hashed as the job "
        "read them, outputs read back once after writing. \"xxh64_of_bytes_read\": of the "
        "file's byte ranges in \"ranges_read\" ([offset, length]) concatenated in that order: "
        "the bytes the job read, where it read only part of the file");
    return o;
}
