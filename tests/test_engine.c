/* SPDX-License-Identifier: Apache-2.0 */
/* The streaming engine: I/O backends, the read stream (every backend, several depths, the
 * step-downs forced by fault injection and by a real seccomp filter), the sink, and the
 * planner (units cover every tensor exactly, budgets, byte counts). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/common/ctx.h"
#include "../src/io/checkpoint.h"
#include "../src/io/file.h"
#include "../src/io/outpath.h"
#include "../src/io/io.h"
#include "../src/io/io_sink.h"
#include "../src/io/safetensors.h"
#include "../src/plan/planner.h"
#include "../src/io/stream.h"
#include "test.h"

static char tmpdir[256];

static unsigned char pattern(uint64_t tensor, uint64_t i)
{
    uint64_t z = tensor * 0x9E3779B97F4A7C15ull + i;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (unsigned char)(z ^ (z >> 31));
}

typedef struct tspec {
    const char *name;
    nlsr_dtype dtype;
    int ndim;
    uint64_t shape[2];
} tspec;

/* A safetensors file whose tensor k has bytes pattern(salt + k, i). */
static void make_file(const char *path, const tspec *ts, size_t n, uint64_t salt)
{
    st_wtensor wt[16];
    for (size_t k = 0; k < n; k++) wt[k] = (st_wtensor){ts[k].name, ts[k].dtype, ts[k].ndim, ts[k].shape};
    nlsr_err e = {0};
    st_writer *w = NULL;
    ASSERT_EQ_I(st_writer_begin(path, wt, n, NULL, 0, &w, &e), 0);
    if (!w) return;
    unsigned char buf[4096];
    for (size_t k = 0; k < n; k++) {
        uint64_t nb = nlsr_dtype_size(ts[k].dtype);
        for (int d = 0; d < ts[k].ndim; d++) nb *= ts[k].shape[d];
        for (uint64_t i = 0; i < nb;) {
            size_t m = nb - i < sizeof buf ? (size_t)(nb - i) : sizeof buf;
            for (size_t j = 0; j < m; j++) buf[j] = pattern(salt + k, i + j);
            ASSERT_EQ_I(st_writer_write(w, buf, m), 0);
            i += m;
        }
    }
    ASSERT_EQ_I(st_writer_commit(w), 0);
}

static char *tpath(const char *name)
{
    return nlsr_path_join(tmpdir, name);
}

/* Two checkpoints (single files) with awkward sizes: rows that are not multiples of 4096,
 * several dtypes, an empty tensor, and tensors large enough for several chunks. */
static const tspec spec_a[] = {
    {"a.big", NLSR_DTYPE_BF16, 2, {333, 7777}},
    {"b.f32", NLSR_DTYPE_F32, 2, {129, 1031}},
    {"c.empty", NLSR_DTYPE_F16, 2, {0, 5}},
    {"d.vec", NLSR_DTYPE_F16, 1, {77, 0}},
};
static const tspec spec_b[] = {
    {"a.big", NLSR_DTYPE_F32, 2, {333, 7777}},
    {"b.f32", NLSR_DTYPE_BF16, 2, {129, 1031}},
};

static nlsr_ckpt *ck_a, *ck_b;
static nlsr_ctx *gctx;

static void setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/nlsr-test-engine-%ld", (long)getpid());
    mkdir(tmpdir, 0755);
    char *pa = tpath("a.safetensors"), *pb = tpath("b.safetensors");
    make_file(pa, spec_a, 4, 100);
    make_file(pb, spec_b, 2, 200);
    gctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(gctx, 1);
    ASSERT_EQ_I(nlsr_ckpt_open(gctx, pa, &ck_a), 0);
    ASSERT_EQ_I(nlsr_ckpt_open(gctx, pb, &ck_b), 0);
    free(pa);
    free(pb);
}

/* Bytes the pattern says a span must hold (salt + index in the file's data order). */
static int span_ok(const nlsr_span *sp, const unsigned char *data, uint64_t salt)
{
    const st_tensor *t = sp->ck->t[sp->tensor].t;
    /* Files are written in spec order, which is name order here: tensor index = spec index. */
    uint64_t es = nlsr_dtype_size(t->dtype);
    for (uint64_t i = 0; i < sp->count * es; i++)
        if (data[i] != pattern(salt + sp->tensor, sp->first * es + i)) return 0;
    return 1;
}

/* A unit list mixing: row ranges of the same tensor from both checkpoints, adjacent spans of
 * one file (coalesced), empty spans, and whole small tensors. */
static size_t build_units(nlsr_unit *u, size_t cap)
{
    size_t n = 0;
    uint64_t row = 7777;
    for (uint64_t r = 0; r < 333 && n < cap; r += 41) {
        uint64_t rows = 333 - r < 41 ? 333 - r : 41;
        u[n] = (nlsr_unit){0};
        u[n].nspans = 2;
        u[n].span[0] = (nlsr_span){ck_a, 0, r * row, rows * row};
        u[n].span[1] = (nlsr_span){ck_b, 0, r * row, rows * row};
        u[n].tag = n;
        n++;
    }
    /* b.f32 in two adjacent halves in one unit (one read), then the empty and the vector. */
    u[n] = (nlsr_unit){0};
    u[n].nspans = 4;
    u[n].span[0] = (nlsr_span){ck_a, 1, 0, 60 * 1031};
    u[n].span[1] = (nlsr_span){ck_a, 1, 60 * 1031, 69 * 1031};
    u[n].span[2] = (nlsr_span){ck_a, 2, 0, 0};
    u[n].span[3] = (nlsr_span){ck_a, 3, 3, 70};
    u[n].tag = n;
    n++;
    u[n] = (nlsr_unit){0};
    u[n].nspans = 1;
    u[n].span[0] = (nlsr_span){ck_b, 1, 5, 1};
    u[n].tag = n;
    n++;
    return n;
}

static void run_stream(nlsr_io_kind kind, unsigned depth, nlsr_io_kind expect_used)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    nlsr_ctx_set_io(ctx, kind);
    nlsr_unit u[32];
    size_t n = build_units(u, 28);
    nlsr_stream *s = NULL;
    int rc = nlsr_stream_open(ctx, u, n, depth, &s);
    ASSERT_EQ_I(rc, 0);
    if (rc != 0) {
        fprintf(stderr, "%s\n", nlsr_ctx_error(ctx));
        nlsr_ctx_free(ctx);
        return;
    }
    ASSERT_EQ_U(ctx->budget.used, nlsr_stream_mem(u, n, depth));
    const nlsr_unit *got;
    const unsigned char *const *data;
    size_t k = 0;
    uint64_t bytes = 0;
    while ((rc = nlsr_stream_next(s, &got, &data)) == 1) {
        ASSERT_EQ_U(got->tag, k);
        for (int j = 0; j < got->nspans; j++) {
            uint64_t salt = got->span[j].ck == ck_a ? 100 : 200;
            if (!span_ok(&got->span[j], data[j], salt))
                FAILF("%s depth %u: unit %zu span %d differs", nlsr_io_kind_name(kind), depth, k,
                      j);
            bytes += nlsr_span_bytes(&got->span[j]);
        }
        k++;
    }
    ASSERT_EQ_I(rc, 0);
    if (rc < 0) fprintf(stderr, "%s\n", nlsr_ctx_error(ctx));
    ASSERT_EQ_U(k, n);
    ASSERT_EQ_U(ctx->bytes_read, bytes);
    ASSERT_EQ_I(nlsr_stream_backend(s), expect_used);
    ASSERT_EQ_I(nlsr_ctx_io_used(ctx), expect_used);
    nlsr_stream_close(s);
    ASSERT_EQ_U(ctx->budget.used, 0);
    nlsr_ctx_free(ctx);
}

static void test_stream_backends(void)
{
    unsigned depths[] = {1, 2, 3, 5};
    for (size_t d = 0; d < 4; d++) {
        run_stream(NLSR_IO_AUTO, depths[d], NLSR_IO_URING);
        run_stream(NLSR_IO_URING, depths[d], NLSR_IO_URING);
        run_stream(NLSR_IO_PREAD, depths[d], NLSR_IO_PREAD);
        run_stream(NLSR_IO_MMAP, depths[d], NLSR_IO_MMAP);
    }
}

static void test_stream_small_chunks(void)
{
    /* Many requests per unit and a queue shallower than one unit's requests. */
    setenv("NLSR_IO_CHUNK", "4096", 1);
    setenv("NLSR_IO_QD", "3", 1);
    run_stream(NLSR_IO_URING, 2, NLSR_IO_URING);
    run_stream(NLSR_IO_PREAD, 3, NLSR_IO_PREAD);
    setenv("NLSR_IO_DIRECT", "0", 1);
    run_stream(NLSR_IO_URING, 2, NLSR_IO_URING);
    setenv("NLSR_IO_DIRECT", "1", 1);
    unsetenv("NLSR_IO_CHUNK");
    unsetenv("NLSR_IO_QD");
}

/* Files in the page cache are read buffered (cachestat); the bytes are the same. */
static void test_stream_cached(void)
{
    unsetenv("NLSR_IO_DIRECT");
    run_stream(NLSR_IO_URING, 3, NLSR_IO_URING);
    run_stream(NLSR_IO_AUTO, 1, NLSR_IO_URING);
    setenv("NLSR_IO_DIRECT", "1", 1);
}

static void test_stream_fallback_env(void)
{
    setenv("NLSR_IO_FAULT", "uring-setup", 1);
    run_stream(NLSR_IO_AUTO, 2, NLSR_IO_PREAD);
    /* Forced io_uring does not step down: it fails with the setup error. */
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    nlsr_ctx_set_io(ctx, NLSR_IO_URING);
    nlsr_unit u[32];
    size_t n = build_units(u, 28);
    nlsr_stream *s = NULL;
    ASSERT_EQ_I(nlsr_stream_open(ctx, u, n, 2, &s), -ENOSYS);
    ASSERT_CONTAINS(nlsr_ctx_error(ctx), "io_uring");
    ASSERT_EQ_U(ctx->budget.used, 0);
    nlsr_ctx_free(ctx);
    setenv("NLSR_IO_FAULT", "uring-einval", 1);
    run_stream(NLSR_IO_AUTO, 3, NLSR_IO_PREAD);
    /* Forced io_uring, O_DIRECT refused: the read is retried buffered on io_uring. */
    run_stream(NLSR_IO_URING, 2, NLSR_IO_URING);
    /* Neither io_uring nor threads: mmap is the last resort. */
    setenv("NLSR_IO_FAULT", "uring-setup,pread-setup", 1);
    run_stream(NLSR_IO_AUTO, 2, NLSR_IO_MMAP);
    ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    nlsr_ctx_set_io(ctx, NLSR_IO_PREAD);
    ASSERT_EQ_I(nlsr_stream_open(ctx, u, n, 2, &s), -EAGAIN);
    ASSERT_CONTAINS(nlsr_ctx_error(ctx), "pread");
    nlsr_ctx_free(ctx);
    unsetenv("NLSR_IO_FAULT");
}

/* The same step-down as in Docker's default seccomp profile: io_uring_setup fails with EPERM.
 * Runs in a child, since a seccomp filter cannot be removed. */
static void test_stream_fallback_seccomp(void)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        struct sock_filter f[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = {(unsigned short)(sizeof f / sizeof f[0]), f};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
            prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
            _exit(77);
        test_cur_failed_ = 0;
        run_stream(NLSR_IO_AUTO, 2, NLSR_IO_PREAD);
        _exit(test_cur_failed_ ? 1 : 0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 77)
        TEST_SKIP("seccomp filters not permitted (the step-down is still covered by "
                  "NLSR_IO_FAULT in test_stream_fallback_env)");
    ASSERT_TRUE(WIFEXITED(st));
    ASSERT_EQ_I(WEXITSTATUS(st), 0);
}

static void test_stream_budget(void)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    nlsr_unit u[32];
    size_t n = build_units(u, 28);
    nlsr_ctx_set_mem_budget(ctx, nlsr_stream_mem(u, n, 2) - 1);
    nlsr_stream *s = NULL;
    ASSERT_EQ_I(nlsr_stream_open(ctx, u, n, 2, &s), NLSR_E_BUDGET);
    ASSERT_CONTAINS(nlsr_ctx_error(ctx), "read stream");
    ASSERT_EQ_U(ctx->budget.used, 0);
    /* Out-of-range spans are refused up front. */
    nlsr_ctx_clear_error(ctx);
    nlsr_ctx_set_mem_budget(ctx, 0);
    u[0].span[0].count = 1u << 30;
    ASSERT_EQ_I(nlsr_stream_open(ctx, u, n, 2, &s), NLSR_E_USAGE);
    ASSERT_CONTAINS(nlsr_ctx_error(ctx), "a.big");
    nlsr_ctx_free(ctx);
}

/* Reads a whole small file back. */
static unsigned char *slurp(const char *path, size_t *len)
{
    char *buf = NULL;
    nlsr_err e = {0};
    if (nlsr_read_small_file(path, 1u << 28, &buf, len, &e) != 0) return NULL;
    return (unsigned char *)buf;
}

static void sink_case(nlsr_io_kind kind, uint64_t size, size_t chunk)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    nlsr_sink *s = NULL;
    ASSERT_EQ_I(nlsr_sink_create(ctx, kind, chunk, 3, &s), 0);
    if (!s) {
        nlsr_ctx_free(ctx);
        return;
    }
    ASSERT_EQ_U(ctx->budget.used, nlsr_sink_mem(chunk, 3));
    char *p = tpath("sink.out");
    unlink(p);
    ASSERT_EQ_I(nlsr_sink_begin(s, p, size), 0);
    /* Alternate copies and in-place fills of odd lengths. */
    uint64_t at = 0;
    int turn = 0;
    while (at < size) {
        if (turn++ & 1) {
            unsigned char tmp[777];
            size_t m = size - at < sizeof tmp ? (size_t)(size - at) : sizeof tmp;
            for (size_t j = 0; j < m; j++) tmp[j] = pattern(9, at + j);
            ASSERT_EQ_I(nlsr_sink_write(s, tmp, m), 0);
            at += m;
        } else {
            unsigned char *q;
            size_t avail;
            ASSERT_EQ_I(nlsr_sink_reserve(s, &q, &avail), 0);
            size_t m = avail < 5000 ? avail : 5000;
            if (m > size - at) m = (size_t)(size - at);
            for (size_t j = 0; j < m; j++) q[j] = pattern(9, at + j);
            ASSERT_EQ_I(nlsr_sink_commit(s, m), 0);
            at += m;
        }
    }
    ASSERT_EQ_I(nlsr_sink_end(s), 0);
    size_t len = 0;
    unsigned char *got = slurp(p, &len);
    ASSERT_TRUE(got != NULL);
    ASSERT_EQ_U(len, size);
    for (size_t j = 0; got && j < len; j++)
        if (got[j] != pattern(9, j)) {
            FAILF("%s size %llu: byte %zu differs", nlsr_io_kind_name(kind),
                  (unsigned long long)size, j);
            break;
        }
    free(got);
    ASSERT_EQ_U(ctx->bytes_written, size);
    /* A cancelled file leaves nothing behind, not even its temporary. */
    char *q = tpath("sink.cancel");
    ASSERT_EQ_I(nlsr_sink_begin(s, q, 100), 0);
    ASSERT_EQ_I(nlsr_sink_write(s, "abc", 3), 0);
    nlsr_sink_cancel(s);
    ASSERT_TRUE(!nlsr_exists(q));
    /* A short file is refused at the end and removed. */
    ASSERT_EQ_I(nlsr_sink_begin(s, q, 100), 0);
    ASSERT_EQ_I(nlsr_sink_write(s, "abc", 3), 0);
    ASSERT_EQ_I(nlsr_sink_end(s), NLSR_E_USAGE);
    ASSERT_TRUE(!nlsr_exists(q));
    nlsr_sink_free(s);
    ASSERT_EQ_U(ctx->budget.used, 0);
    unlink(p);
    free(p);
    free(q);
    nlsr_ctx_free(ctx);
}

static void test_sink(void)
{
    uint64_t sizes[] = {0, 1, 4095, 4096, 3 * 16384 + 17, 200001};
    nlsr_io_kind kinds[] = {NLSR_IO_AUTO, NLSR_IO_URING, NLSR_IO_PREAD, NLSR_IO_MMAP};
    for (size_t k = 0; k < 4; k++)
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) sink_case(kinds[k], sizes[i], 16384);
#ifdef NLSR_TEST_HOOKS /* the step-downs, forced (src/common/testhook.h) */
    setenv("NLSR_IO_FAULT", "uring-einval", 1);
    sink_case(NLSR_IO_AUTO, 200001, 16384);
    setenv("NLSR_IO_DIRECT", "0", 1);
    sink_case(NLSR_IO_AUTO, 200001, 16384); /* buffered io_uring refused: steps down to pread */
    setenv("NLSR_IO_DIRECT", "1", 1);
    setenv("NLSR_IO_FAULT", "uring-setup", 1);
    sink_case(NLSR_IO_AUTO, 200001, 16384);
    unsetenv("NLSR_IO_FAULT");
#endif
}

#ifndef NLSR_TEST_DATA
#define NLSR_TEST_DATA "tests/data"
#endif

/* Units cover every tensor of the layout exactly once, in file order per shard; targets read
 * the same rows from every checkpoint; ranges are sorted, disjoint, and add up to the bytes. */
static void check_plan(const nlsr_plan *p, const nlsr_ckpt *L)
{
    uint64_t *covered = calloc(L->n, sizeof *covered);
    uint64_t last_off[64] = {0};
    for (size_t i = 0; i < p->nunits; i++) {
        const nlsr_unit *u = &p->units[i];
        const nlsr_plan_unit *in = &p->info[i];
        ASSERT_EQ_U(u->tag, i);
        if (in->kind == NLSR_PLAN_TARGET) {
            const nlsr_span *la = &u->span[p->span_of[1]];
            ASSERT_TRUE(la->ck == L);
            covered[la->tensor] += la->count;
            for (int k = 0; k < u->nspans; k++) {
                ASSERT_EQ_U(u->span[k].first, la->first);
                ASSERT_EQ_U(u->span[k].count, la->count);
                ASSERT_STR_EQ(u->span[k].ck->t[u->span[k].tensor].t->name, L->t[la->tensor].t->name);
            }
        } else {
            for (int k = 0; k < u->nspans; k++) covered[u->span[k].tensor] += u->span[k].count;
        }
        /* Front to back through each output shard. */
        const nlsr_span *s0 = in->kind == NLSR_PLAN_TARGET ? &u->span[p->span_of[1]] : &u->span[0];
        uint64_t off = L->t[s0->tensor].t->begin + s0->first * nlsr_dtype_size(L->t[s0->tensor].t->dtype);
        ASSERT_EQ_U(L->t[s0->tensor].shard, in->shard);
        if (in->shard < 64) {
            ASSERT_TRUE(off >= last_off[in->shard]);
            last_off[in->shard] = off;
        }
        ASSERT_TRUE(nlsr_stream_unit_bytes(u) <= p->max_unit_bytes);
    }
    for (size_t t = 0; t < L->n; t++) ASSERT_EQ_U(covered[t], L->t[t].t->numel);
    uint64_t per[NLSR_PLAN_MAX_CK] = {0};
    for (size_t i = 0; i < p->nranges; i++) {
        per[p->ranges[i].ck] += p->ranges[i].len;
        if (i > 0 && p->ranges[i].ck == p->ranges[i - 1].ck &&
            p->ranges[i].shard == p->ranges[i - 1].shard)
            ASSERT_TRUE(p->ranges[i].off > p->ranges[i - 1].off + p->ranges[i - 1].len);
    }
    for (int k = 0; k < NLSR_PLAN_MAX_CK; k++) ASSERT_EQ_U(per[k], p->read_bytes[k]);
    if (p->job.budget) ASSERT_TRUE(p->peak_mem <= p->job.budget);
    ASSERT_EQ_U(p->stream_mem, nlsr_stream_mem(p->units, p->nunits, p->depth));
    free(covered);
}

static void test_planner(void)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ckpt *b = NULL, *a = NULL;
    ASSERT_EQ_I(nlsr_ckpt_open(ctx, NLSR_TEST_DATA "/hf-tiny-llama/sft", &b), 0);
    ASSERT_EQ_I(nlsr_ckpt_open(ctx, NLSR_TEST_DATA "/hf-tiny-llama/finetuned", &a), 0);
    if (!a || !b) {
        nlsr_ctx_free(ctx);
        return;
    }
    uint64_t budgets[] = {0, 1u << 30, 4u << 20, 700u << 10, 330u << 10};
    size_t prev_units = 0;
    for (size_t i = 0; i < 5; i++) {
        nlsr_ctx_set_mem_budget(ctx, budgets[i]);
        nlsr_plan p;
        ASSERT_EQ_I(nlsr_plan_amplify(ctx, b, a, NULL, &p), 0);
        check_plan(&p, a);
        ASSERT_TRUE(p.depth >= 2);
        ASSERT_EQ_U(p.ntarget_tensors, 21);
        ASSERT_TRUE(p.nunits >= prev_units); /* smaller budgets, smaller units */
        prev_units = p.nunits;
        nlsr_plan_free(&p);
    }
    /* Too small: refused with the minimum named, and that minimum is enough. */
    nlsr_ctx_set_mem_budget(ctx, 100u << 10);
    nlsr_plan p;
    ASSERT_EQ_I(nlsr_plan_amplify(ctx, b, a, NULL, &p), NLSR_E_BUDGET);
    const char *msg = nlsr_ctx_error(ctx);
    ASSERT_CONTAINS(msg, "at least");
    const char *k = strstr(msg, "--mem-budget ");
    unsigned long long kib = k ? strtoull(k + 13, NULL, 10) : 0;
    ASSERT_TRUE(kib > 100);
    nlsr_ctx_clear_error(ctx);
    nlsr_ctx_set_mem_budget(ctx, kib * 1024);
    ASSERT_EQ_I(nlsr_plan_amplify(ctx, b, a, NULL, &p), 0);
    if (!ctx->err.code) {
        check_plan(&p, a);
        nlsr_plan_free(&p);
    }
    /* A three-checkpoint job with a resident need per element: units shrink, memory holds. */
    nlsr_ckpt *f = NULL;
    ASSERT_EQ_I(nlsr_ckpt_open(ctx, NLSR_TEST_DATA "/hf-tiny-llama/finetuned_f32", &f), 0);
    nlsr_job_desc j = {0};
    j.name = "test";
    j.ck[0] = b;
    j.ck[1] = a;
    j.ck[2] = f;
    j.layout = 1;
    j.target_read = 7u;
    j.read_others = 1;
    j.passes = 2;
    j.writes = 1;
    j.scratch_per_elem = 8;
    j.resident_per_elem = 4;
    j.budget = 2u << 20;
    ASSERT_EQ_I(nlsr_plan_build(ctx, &j, &p), 0);
    if (!ctx->err.code) {
        ASSERT_EQ_I(p.span_of[0], 0);
        ASSERT_EQ_I(p.span_of[2], 2);
        ASSERT_EQ_U(p.resident_mem, 22272u * 4u); /* the largest target: 232 x 96 */
        ASSERT_TRUE(p.peak_mem <= j.budget);
        ASSERT_EQ_U(p.read_bytes[2], 2 * p.read_bytes[0]); /* F32 against BF16 */
        nlsr_plan_free(&p);
    }
    nlsr_ckpt_free(f);
    nlsr_ckpt_free(a);
    nlsr_ckpt_free(b);
    nlsr_ctx_free(ctx);
}

int main(int argc, char **argv)
{
    test_init(argc, argv);
    /* The files here were just written and sit in the page cache, where the stream would read
     * them buffered: force O_DIRECT so that its windows and step-downs are exercised. The
     * cached path runs in test_stream_small_chunks and test_stream_cached. */
    setenv("NLSR_IO_DIRECT", "1", 1);
    setup();
    RUN_TEST(test_stream_backends);
    RUN_TEST(test_stream_small_chunks);
    RUN_TEST(test_stream_cached);
    RUN_HOOK_TEST(test_stream_fallback_env);
    /* seccomp may not be permitted here: a CTest entry of its own, skipped (77) there. */
    RUN_TEST_ALONE(test_stream_fallback_seccomp);
    RUN_TEST(test_stream_budget);
    RUN_TEST(test_sink);
    RUN_TEST(test_planner);
    nlsr_ckpt_free(ck_a);
    nlsr_ckpt_free(ck_b);
    nlsr_ctx_free(gctx);
    (void)nlsr_tree_remove(tmpdir);
    return test_finish();
}
