/* SPDX-License-Identifier: Apache-2.0 */
/* Durability of in-place jobs, beyond kill-safety. The SIGKILL tests (test_inplace.c) keep the
 * page cache, so a missing fsync passes them; here the order of writes and flushes is traced
 * (NLSR_TEST_IO_TRACE, src/common/testhook.h: a build with -DNLSR_TEST_HOOKS=ON) for apply
 * --in-place, run --in-place (single pass, and prepare + apply), a --force over a previous
 * realignment and a rollback, and checked per file against docs/JOURNAL.md "Write order":
 *
 *  - the journal's records are fsynced before the slot that arms them is written;
 *  - every byte of a data write lies in records that were fsynced, then armed by a slot that
 *    was fsynced in turn (the trace names each record's range; the journal's data writer may
 *    write an armed batch while the next batch's records are appended); a rollback's writes
 *    come after the fsync of the slot that marks it rolling back;
 *  - the journal's header block is fsynced, and its folder entry too, before any data write;
 *  - every data file written is fsynced before the state file is renamed into place and
 *    before the journal's last slot (complete) is written; that slot is fsynced;
 *  - a file's bytes are fsynced before it is renamed (the state file), and the folder is
 *    fsynced after every rename and unlink, before the job ends or the journal is completed;
 *  - rollback: the original bytes are fsynced before the journal is unlinked.
 * Without test hooks the test is skipped (exit 77). */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/io/file.h"
#include "../src/io/outpath.h"
#include "nlsr.h"
#include "test.h"
#include "test_files.h"

#ifndef NLSR_TEST_DATA
#error "NLSR_TEST_DATA must name tests/data"
#endif
#define FX NLSR_TEST_DATA "/hf-tiny-llama"
#define FT FX "/finetuned"

static char root[4096];

static char *join(const char *a, const char *b)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", a, b) < 0) abort();
    return p;
}

/* ---- the trace and its rules ------------------------------------------------------------- */

typedef struct ev {
    char op[16];
    char path[4096];
    uint64_t off, len;
} ev;

static ev *load_trace(const char *file, size_t *n)
{
    FILE *f = fopen(file, "r");
    ev *v = NULL;
    size_t cap = 0;
    *n = 0;
    char line[8192];
    while (f && fgets(line, sizeof line, f)) {
        if (*n == cap) {
            cap = cap ? 2 * cap : 256;
            v = realloc(v, cap * sizeof *v);
            if (!v) abort();
        }
        ev *e = &v[*n];
        unsigned long long off, len;
        if (sscanf(line, "%15s %4095s %llu %llu", e->op, e->path, &off, &len) != 4) continue;
        e->off = off;
        e->len = len;
        (*n)++;
    }
    if (f) fclose(f);
    return v;
}

static const char *base(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

#define MAXF 64
/* Per file: bytes written since its last fsync. */
typedef struct fstate {
    char path[4096];
    int dirty;
} fstate;

static fstate *fget(fstate *fs, size_t *nf, const char *path)
{
    for (size_t i = 0; i < *nf; i++)
        if (strcmp(fs[i].path, path) == 0) return &fs[i];
    if (*nf == MAXF) abort();
    snprintf(fs[*nf].path, sizeof fs[*nf].path, "%s", path);
    fs[*nf].dirty = 0;
    return &fs[(*nf)++];
}

static int is_journal(const char *p)
{
    return strcmp(base(p), ".nlsr-journal") == 0;
}

static int is_data(const char *p)
{
    size_t n = strlen(p);
    return n > 12 && strcmp(p + n - 12, ".safetensors") == 0 && !strstr(p, ".nlsr-inplace");
}

/* A journal record and how far it got: 0 appended, 1 fsynced, 2 armed by a slot written after
 * that, 3 that slot fsynced (the record now protects its range). */
typedef struct jrec {
    const char *path;
    uint64_t off, len;
    int st;
} jrec;

static int cmp_rec_off(const void *a, const void *b)
{
    const jrec *x = *(const jrec *const *)a, *y = *(const jrec *const *)b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* 1 when [off, off + len) of path lies in the union of the records of state 3. */
static int covered(jrec *r, size_t nr, const char *path, uint64_t off, uint64_t len)
{
    jrec **in = malloc((nr ? nr : 1) * sizeof *in);
    if (!in) abort();
    size_t k = 0;
    for (size_t i = 0; i < nr; i++)
        if (r[i].st == 3 && strcmp(r[i].path, path) == 0 && r[i].off < off + len &&
            r[i].off + r[i].len > off)
            in[k++] = &r[i];
    qsort(in, k, sizeof *in, cmp_rec_off);
    uint64_t at = off;
    for (size_t i = 0; i < k && at < off + len; i++)
        if (in[i]->off <= at && in[i]->off + in[i]->len > at) at = in[i]->off + in[i]->len;
    free(in);
    return at >= off + len;
}

/* Checks the rules over one job's trace; `what` names the job in failures. Returns the number
 * of data writes seen (a test that traced nothing would prove nothing).
 *
 * A realignment's data writes are checked against the journal's records ("record" events: the
 * range each one protects): every byte written must lie in records that were fsynced, then
 * armed by a slot, which was fsynced in turn. Its batches' data may be written while the next
 * batch's records are appended (the journal's data writer), so "no record pending at a data
 * write" is not the rule; "every written byte protected" is. A rollback appends no record: its
 * writes must follow the fsync of the slot that marks it rolling back. */
static int check_trace(const char *file, const char *what)
{
    size_t n = 0;
    ev *v = load_trace(file, &n);
    fstate fs[MAXF];
    size_t nf = 0;
    int rec_dirty = 0, slot_dirty = 0, dir_pending = 0, data_writes = 0, journal_created = 0;
    const char *dir_pending_why = "";
    size_t last_slot = SIZE_MAX;
    jrec *recs = calloc(n ? n : 1, sizeof *recs);
    if (!recs) abort();
    size_t nrec = 0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].op, "pwrite") == 0 && is_journal(v[i].path) && v[i].len == 64 &&
            (v[i].off == 512 || v[i].off == 1024))
            last_slot = i;
    for (size_t i = 0; i < n; i++) {
        const ev *e = &v[i];
        fstate *f = fget(fs, &nf, e->path);
        if (strcmp(e->op, "record") == 0) {
            recs[nrec++] = (jrec){e->path, e->off, e->len, 0};
        } else if (strcmp(e->op, "create") == 0) {
            if (is_journal(e->path)) {
                journal_created = 1;
                nrec = 0; /* a new journal: the records before were another's */
            }
            dir_pending = 1;
            dir_pending_why = "the journal's creation";
        } else if (strcmp(e->op, "pwrite") == 0) {
            if (is_journal(e->path)) {
                int slot = e->len == 64 && (e->off == 512 || e->off == 1024);
                if (slot && rec_dirty)
                    FAILF("%s: event %zu: a slot armed records that were not fsynced", what, i);
                if (slot && i == last_slot) {
                    /* the journal's last slot: complete (a realignment) or rolling back */
                    for (size_t k = 0; k < nf; k++)
                        if (fs[k].dirty && is_data(fs[k].path))
                            FAILF("%s: event %zu: the journal's last slot before %s was fsynced",
                                  what, i, fs[k].path);
                    if (dir_pending)
                        FAILF("%s: event %zu: the journal's last slot before the folder was "
                              "fsynced after %s", what, i, dir_pending_why);
                }
                if (slot) {
                    slot_dirty = 1;
                    for (size_t k = 0; k < nrec; k++)
                        if (recs[k].st == 1) recs[k].st = 2;
                }
                else if (e->off >= 4096) rec_dirty = 1;
                f->dirty = 1;
            } else if (is_data(e->path)) {
                data_writes++;
                if (nrec && !covered(recs, nrec, e->path, e->off, e->len))
                    FAILF("%s: event %zu: data written at %llu (%llu bytes) of %s outside the "
                          "records armed by a fsynced slot", what, i, (unsigned long long)e->off,
                          (unsigned long long)e->len, base(e->path));
                if (!nrec && (rec_dirty || slot_dirty))
                    FAILF("%s: event %zu: data written at %llu of %s before the journal's %s "
                          "was fsynced", what, i, (unsigned long long)e->off, base(e->path),
                          rec_dirty ? "records" : "slot");
                if (journal_created && dir_pending)
                    FAILF("%s: event %zu: data written before the folder was fsynced after %s",
                          what, i, dir_pending_why);
                fstate *j = NULL;
                for (size_t k = 0; k < nf; k++)
                    if (is_journal(fs[k].path)) j = &fs[k];
                if (j && j->dirty && !slot_dirty && !rec_dirty)
                    FAILF("%s: event %zu: data written while the journal's header was not "
                          "fsynced", what, i);
                f->dirty = 1;
            } else {
                f->dirty = 1; /* the state file's temporary */
            }
        } else if (strcmp(e->op, "fsync") == 0) {
            f->dirty = 0;
            if (is_journal(e->path)) {
                rec_dirty = slot_dirty = 0;
                for (size_t k = 0; k < nrec; k++)
                    if (recs[k].st == 0 || recs[k].st == 2) recs[k].st++;
            }
        } else if (strcmp(e->op, "fsyncdir") == 0) {
            dir_pending = 0;
        } else if (strcmp(e->op, "rename") == 0) {
            for (size_t k = 0; k < nf; k++)
                if (fs[k].dirty && (is_data(fs[k].path) || strstr(fs[k].path, ".nlsr-state")))
                    FAILF("%s: event %zu: %s renamed into place before %s was fsynced", what, i,
                          base(e->path), base(fs[k].path));
            dir_pending = 1;
            dir_pending_why = "the state file's rename";
        } else if (strcmp(e->op, "unlink") == 0) {
            if (is_journal(e->path))
                for (size_t k = 0; k < nf; k++)
                    if (fs[k].dirty && is_data(fs[k].path))
                        FAILF("%s: event %zu: the journal removed before %s was fsynced", what,
                              i, base(fs[k].path));
            dir_pending = 1;
            dir_pending_why = "an unlink";
        }
    }
    if (last_slot != SIZE_MAX && (rec_dirty || slot_dirty))
        FAILF("%s: the journal's last write was never fsynced", what);
    if (dir_pending) FAILF("%s: the job ended before the folder was fsynced after %s", what,
                           dir_pending_why);
    for (size_t k = 0; k < nf; k++)
        if (fs[k].dirty && is_data(fs[k].path))
            FAILF("%s: the job ended with %s not fsynced", what, base(fs[k].path));
    free(recs);
    free(v);
    return data_writes;
}

/* ---- jobs ------------------------------------------------------------------------------- */

static char trace[4200];

static void trace_begin(void)
{
    unlink(trace);
    setenv("NLSR_TEST_IO_TRACE", trace, 1);
}

static int trace_end(const char *what)
{
    unsetenv("NLSR_TEST_IO_TRACE");
    return check_trace(trace, what);
}

static nlsr_ctx *new_ctx(void)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    return ctx;
}

static int run_ip(const char *dir, const char *plan, nlsr_select_mode mode, int force)
{
    setenv("NLSR_RUN_PLAN", plan, 1);
    nlsr_ctx *ctx = new_ctx();
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    p.select.mode = mode;
    p.force = force;
    nlsr_inplace_result r;
    int rc = nlsr_run_inplace(ctx, FX "/sft", FX "/aligned", NULL, dir, &p, NULL, &r);
    if (rc < 0) fprintf(stderr, "  run in place: %s\n", nlsr_ctx_error(ctx));
    nlsr_ctx_free(ctx);
    unsetenv("NLSR_RUN_PLAN");
    return rc;
}

static void test_write_order(void)
{
#ifndef NLSR_TEST_HOOKS
    TEST_SKIP("the write trace needs a build with -DNLSR_TEST_HOOKS=ON");
#endif
    char *d = join(root, "ckpt"), *pf = join(root, "p.nlsrp");
    nlsr_ctx *ctx = new_ctx();
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    ASSERT_EQ_I(nlsr_prepare(ctx, FX "/sft", FX "/aligned", NULL, pf, &p), 0);
    nlsr_ctx_free(ctx);
    /* Small records: many batches, so every rule is exercised many times. The journal's data
     * writer (run --in-place's single pass) late: its writes then come after whatever the
     * caller does meanwhile, which the rules must still allow, and a caller that does not wait
     * for it (before the data files' fsync) fails them. */
    setenv("NLSR_TEST_JOURNAL_RECORD", "16384", 1);
    setenv("NLSR_TEST_JOURNAL_WRITER_DELAY", "1", 1);

    copy_dir(FT, d);
    trace_begin();
    ctx = new_ctx();
    nlsr_inplace_result r;
    ASSERT_EQ_I(nlsr_apply_inplace(ctx, pf, d, &p, NULL, &r), 0);
    nlsr_ctx_free(ctx);
    ASSERT_TRUE(trace_end("apply --in-place") > 0);

    trace_begin();
    nlsr_rollback_params rp = NLSR_ROLLBACK_PARAMS_DEFAULT;
    ctx = new_ctx();
    ASSERT_EQ_I(nlsr_rollback(ctx, d, &rp, &r), 0);
    nlsr_ctx_free(ctx);
    ASSERT_TRUE(trace_end("rollback") > 0);

    static const char *const plans[] = {"single", "recompute", "patch-file"};
    for (size_t i = 0; i < 3; i++) {
        copy_dir(FT, d);
        trace_begin();
        ASSERT_EQ_I(run_ip(d, plans[i], NLSR_SELECT_ADAPTIVE, 0), 0);
        char what[64];
        snprintf(what, sizeof what, "run --in-place (%s)", plans[i]);
        ASSERT_TRUE(trace_end(what) > 0);
    }
    /* --force over another realignment: its rollback, then this one. */
    ASSERT_EQ_I(run_ip(d, "single", NLSR_SELECT_ALL, 1), 0);
    trace_begin();
    ASSERT_EQ_I(run_ip(d, "single", NLSR_SELECT_ADAPTIVE, 1), 0);
    ASSERT_TRUE(trace_end("run --in-place --force") > 0);
    unsetenv("NLSR_TEST_JOURNAL_RECORD");
    unsetenv("NLSR_TEST_JOURNAL_WRITER_DELAY");
    free(pf);
    free(d);
}

int main(int argc, char **argv)
{
    test_init(argc, argv);
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(root, sizeof root, "%s/nlsr-test-durability-XXXXXX", tmp);
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(trace, sizeof trace, "%s/trace.txt", root);
    RUN_TEST(test_write_order);
    int rc = test_finish();
    if (rc == 0) (void)nlsr_tree_remove(root);
    else fprintf(stderr, "outputs kept in %s\n", root);
    return rc;
}
