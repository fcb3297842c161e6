/* SPDX-License-Identifier: Apache-2.0 */
/* The undo journal: writer, reader, rollback, and the durable-write helpers of in-place jobs.
 * The format and the reasoning behind the write order are in journal.h and docs/JOURNAL.md. */
#define _GNU_SOURCE
#include "../common/log.h"
#include "journal.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <zstd.h>

#include "file.h"
#include "jpayload.h"
#include "outpath.h"
#include "../common/testhook.h"
#include "patchfile.h" /* XXH64 */

#define PRE_MAGIC "NLSRJRNL"
#define SLOT_MAGIC "NLSRSLOT"
#define REC_MAGIC "NLSRJREC"
#define SLOT_A 512u
#define SLOT_B 1024u
#define SLOT_SIZE 64u
#define PRE_SIZE 64u
#define REC_HDR 96u
#define REC_RANGE 1u
#define REC_END 2u
#define MAX_NAME 4096u
#define MAX_END_JSON (16u << 20)
#define DEFAULT_RECORD (4u << 20)
#define DEFAULT_BATCH (64u << 20)
#define ZLEVEL NLSR_JOURNAL_ZLEVEL

/* ---- little-endian fields ---------------------------------------------------------------- */

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static uint64_t get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

const char *nlsr_journal_state_name(int state)
{
    switch (state) {
    case NLSR_JOURNAL_NONE: return "none";
    case NLSR_JOURNAL_WRITING: return "interrupted";
    case NLSR_JOURNAL_COMPLETE: return "complete";
    case NLSR_JOURNAL_ROLLING_BACK: return "rolling back";
    case NLSR_JOURNAL_TORN: return "torn at creation";
    }
    return "?";
}

/* ---- fault injection --------------------------------------------------------------------- */

/* Process-wide on purpose: the switch must reach every write of a job whichever object makes
 * it, and in-place jobs are single-threaded. It is a test hook, not a reporting channel. */
static struct {
    uint64_t count, kill_at, record;
    int torn;
} fault;

static uint64_t env_u64(const char *name)
{
    const char *s = nlsr_test_env(name);
    if (!s || !*s) return 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    return *end ? 0 : (uint64_t)v;
}

void nlsr_fault_reset(void)
{
    fault.count = 0;
    fault.kill_at = env_u64("NLSR_TEST_KILL_AFTER_WRITES");
    fault.torn = env_u64("NLSR_TEST_KILL_TORN") != 0;
    fault.record = env_u64("NLSR_TEST_JOURNAL_RECORD");
}

uint64_t nlsr_fault_count(void)
{
    return __atomic_load_n(&fault.count, __ATOMIC_RELAXED);
}

int nlsr_fault_armed(void)
{
    return fault.kill_at != 0;
}

uint64_t nlsr_fault_record_bytes(void)
{
    return fault.record;
}

static void fault_after(void)
{
    /* Atomic: the data writer's writes count too (never with a kill point armed: the writer
     * is then not used, and the points keep one order). */
    uint64_t c = __atomic_add_fetch(&fault.count, 1, __ATOMIC_RELAXED);
    if (fault.kill_at && c == fault.kill_at) raise(SIGKILL);
}

/* Bytes a write at the next point really writes: half of them when that point is the torn
 * kill point. */
static size_t fault_len(size_t len)
{
    if (fault.torn && fault.kill_at && fault.count + 1 == fault.kill_at && len > 1) return len / 2;
    return len;
}

/* ---- counted primitives ------------------------------------------------------------------- */

static int d_pwrite(nlsr_err *e, int fd, const void *buf, size_t len, uint64_t off,
                    const char *path)
{
    nlsr_test_trace("pwrite", path, off, len);
    int rc = nlsr_pwrite_all(fd, buf, fault_len(len), off, path, e);
    fault_after();
    return rc;
}

static int d_fsync(nlsr_err *e, int fd, const char *path)
{
    int rc = 0;
    nlsr_test_trace("fsync", path, 0, 0);
    if (fsync(fd) != 0) {
        rc = -errno;
        nlsr_fail(e, rc, "%s: fsync failed: %s", path, strerror(-rc));
    }
    fault_after();
    return rc;
}

static int d_fsync_dir(nlsr_err *e, const char *dir)
{
    nlsr_test_trace("fsyncdir", dir, 0, 0);
    int rc = nlsr_fsync_dir(dir, e);
    fault_after();
    return rc;
}

int nlsr_durable_write_file(nlsr_ctx *ctx, const char *dir, const char *name, const void *data,
                            size_t len)
{
    nlsr_err *e = &ctx->err;
    char *path = nlsr_path_join(dir, name);
    NLSR_FAIL_IF(!path, e, -ENOMEM, "out of memory");
    /* An unpredictable name created exclusively (outpath.h): a planted link or hard link at a
     * fixed temporary name would be truncated or followed. */
    char *tmp = NULL;
    int fd = -1;
    int rc = nlsr_tmp_file(e, path, &tmp, &fd);
    if (rc < 0) {
        free(path);
        return rc;
    }
    nlsr_test_trace("create", tmp, 0, 0);
    fault_after();
    if (rc == 0) rc = d_pwrite(e, fd, data, len, 0, tmp);
    if (rc == 0) rc = d_fsync(e, fd, tmp);
    if (fd >= 0) close(fd);
    if (rc == 0) {
        nlsr_test_trace("rename", path, 0, 0);
        if (rename(tmp, path) != 0) {
            rc = -errno;
            nlsr_fail(e, rc, "%s: rename to %s failed: %s", tmp, path, strerror(-rc));
        }
        fault_after();
    }
    if (rc == 0) rc = d_fsync_dir(e, dir);
    if (rc < 0) unlink(tmp);
    else ctx->bytes_written += len;
    nlsr_phase_tick(ctx);
    if (rc == 0) (void)lremovexattr(path, "user.nlsr.owner");
    free(tmp);
    free(path);
    return rc;
}

int nlsr_durable_unlink(nlsr_ctx *ctx, const char *dir, const char *name)
{
    nlsr_err *e = &ctx->err;
    char *path = nlsr_path_join(dir, name);
    NLSR_FAIL_IF(!path, e, -ENOMEM, "out of memory");
    int rc = 0;
    nlsr_test_trace("unlink", path, 0, 0);
    if (unlink(path) != 0 && errno != ENOENT) {
        rc = -errno;
        nlsr_fail(e, rc, "%s: cannot remove: %s", path, strerror(-rc));
    }
    fault_after();
    free(path);
    return rc < 0 ? rc : d_fsync_dir(e, dir);
}

static int plain_name(const char *s, size_t n)
{
    if (n == 0 || n > MAX_NAME || memchr(s, '\0', n) || memchr(s, '/', n)) return 0;
    return !(n == 1 && s[0] == '.') && !(n == 2 && s[0] == '.' && s[1] == '.');
}

/* ---- writer ------------------------------------------------------------------------------- */

typedef struct jfile {
    char *name, *path;
    int fd;
    uint64_t size;
    int dirty;
} jfile;

/* One record being built: what it holds, its buffers (charged) and the outcome. Building is
 * pure computation (payload, zstd, checksums, header) and may run on the builder thread;
 * appending it to the file stays on the caller's, in record order. */
typedef struct jbuild {
    uint32_t type;
    const jfile *f;
    uint64_t index, off;
    const unsigned char *src, *neu;
    size_t len, width;
    unsigned char *plane, *cbuf;
    size_t plane_cap, cbuf_cap;
    ZSTD_CCtx *cctx;
    unsigned char *copy_to; /* the worker copies the new bytes here too (the batch), or NULL */
    unsigned char *prev_to; /* and the piece before's (prev_len bytes from prev_src), or NULL */
    const unsigned char *prev_src;
    size_t prev_len;
    size_t total;       /* record bytes in cbuf */
    uint64_t h_new;     /* XXH64 of the new bytes (ranges) */
    size_t zerr;        /* a zstd error code, 0 if none */
} jbuild;

/* A thread that runs one job at a time for the caller: the builder (the second core builds one
 * record while the caller builds the one before it, nlsr_journal_stage; started on the first
 * range of two records or more) and the data writer (below). `run` does the posted job; what
 * it writes, the caller reads after jthread_wait (the mutex orders both). */
typedef struct jthread {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int started, quit, busy;
    void (*run)(nlsr_journal *j);
    nlsr_journal *j;
} jthread;

/* A piece of a range staged by the current call: one record's worth at most. `checks`: the
 * first piece of a range of stage_changed, which makes that range's checks (range_len bytes). */
typedef struct jpiece {
    uint64_t off;
    const unsigned char *o, *n;
    size_t len;
    int checks;
    size_t range_len;
    int copied; /* the worker puts its new bytes in the batch */
} jpiece;

typedef struct staged {
    uint32_t file;
    uint64_t off;
    size_t len, pos; /* bytes and their place in the batch buffer */
} staged;

/* The data writer: a thread that writes an armed batch's new bytes into the checkpoint files
 * (page-cache copies that took about a sixth of phase B on the caller's thread) while the
 * caller stages the next batch in the other half of the batch buffer. Started at the first
 * armed batch when the journal has two builders (two cores) and no kill point is armed. */
typedef struct jwriter {
    jthread t;
    uint64_t jobs;            /* batches taken so far */
    const staged *st;         /* the job: the batch's entries, and the half they point into */
    size_t nst;
    const unsigned char *buf;
    int rc;                   /* its first failure and message, until collected */
    nlsr_err err;
} jwriter;

struct nlsr_journal {
    nlsr_ctx *ctx;
    char *dir, *path;
    int fd;             /* -1 until the journal file is created */
    int follow;
    int failed;         /* first failure: every later call returns it */
    uint64_t id, seq;
    uint64_t end, last, nrec;
    size_t nfiles;
    jfile *files;
    size_t rec_cap;     /* original bytes per record */
    uint32_t version;   /* 2; 1 only in tests of old journals (NLSR_TEST_JOURNAL_VERSION) */
    unsigned char *batch;        /* where new bytes are staged: batch_mem, or one half of it */
    unsigned char *batch_mem;
    size_t batch_alloc, batch_cap, batch_used;
    int async;                   /* batches written by the data writer (halves of batch_mem) */
    jwriter wr;
    staged *st_w;                /* the entries the writer has (the other array) */
    size_t st_w_cap;
    jbuild bld[2];      /* [0] on the caller's thread, [1] on the worker's (if it has buffers) */
    int nbld;
    jthread wk;         /* the builder */
    jbuild *wk_job;     /* its record */
    staged *st;
    size_t nst, st_cap;
    jpiece *pc;         /* the pieces of the current stage call */
    size_t npc, pc_cap;
    nlsr_xxh64_state result;
    uint64_t data_bytes, journal_bytes, ranges;
};

static int jfail(nlsr_journal *j, int rc)
{
    if (rc < 0 && !j->failed) j->failed = rc;
    return rc;
}

static uint64_t new_id(void)
{
    uint64_t id = 0;
    if (getrandom(&id, sizeof id, GRND_NONBLOCK) != (ssize_t)sizeof id) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        id = nlsr_xxh64(&ts, sizeof ts, (uint64_t)getpid());
    }
    return id ? id : 1;
}

/* Version 2's payload before compression: a bitmap of the changed elements (one bit per
 * element, at most rec/8 bytes for width 1) and the changed elements' original bytes; and the
 * record with its compressed payload. */
static size_t plane_bytes(size_t rec)
{
    return rec + rec / 8 + 8;
}

static size_t cbuf_bytes(size_t rec)
{
    return REC_HDR + MAX_NAME + ZSTD_compressBound(plane_bytes(rec));
}

uint64_t nlsr_journal_buffer_bytes(uint64_t record_bytes, uint64_t batch_bytes, int builders)
{
    size_t rec = (size_t)record_bytes;
    return batch_bytes + (uint64_t)(builders >= 2 ? 2 : 1) * (plane_bytes(rec) + cbuf_bytes(rec));
}

int nlsr_journal_begin(nlsr_ctx *ctx, const char *dir, const nlsr_journal_opts *o,
                       nlsr_journal **out)
{
    nlsr_err *e = &ctx->err;
    *out = NULL;
    nlsr_journal *j = calloc(1, sizeof *j);
    NLSR_FAIL_IF(!j, e, -ENOMEM, "out of memory");
    j->ctx = ctx;
    j->fd = -1;
    j->follow = o && o->follow_links;
    j->id = new_id();
    j->dir = strdup(dir);
    j->path = nlsr_path_join(dir, NLSR_JOURNAL_NAME);
    uint64_t rec = o && o->record_bytes ? o->record_bytes : nlsr_fault_record_bytes();
    if (!rec) rec = DEFAULT_RECORD;
    /* Record, planes and compressed record take about three records' worth of memory: keep
     * them within a sixteenth of what the budget has left each. */
    const nlsr_budget *b = &ctx->budget;
    uint64_t room = nlsr_budget_room(b);
    if (!(o && o->record_bytes) && rec > room / 16) rec = room / 16 / 8 * 8;
    if (rec < 4096) rec = 4096;
    if (rec > NLSR_JOURNAL_MAX_RECORD) rec = NLSR_JOURNAL_MAX_RECORD;
    j->rec_cap = (size_t)rec;
    /* The batch holds new bytes until their records are armed: the larger it is, the fewer
     * fsyncs; it takes at most an eighth of what the budget has left, and one record at least. */
    uint64_t batch = o && o->batch_bytes ? o->batch_bytes : DEFAULT_BATCH;
    if (!(o && o->batch_bytes) && batch > room / 8) batch = room / 8;
    if (batch < rec) batch = rec;
    j->batch_cap = (size_t)batch;
    size_t plane_cap = plane_bytes(j->rec_cap), cbuf_cap = cbuf_bytes(j->rec_cap);
    j->version = NLSR_JOURNAL_VERSION;
    if (env_u64("NLSR_TEST_JOURNAL_VERSION") == 1) j->version = 1;
    nlsr_xxh64_init(&j->result, 0);
    int rc = 0;
    if (!j->dir || !j->path) rc = nlsr_fail(e, -ENOMEM, "out of memory");
    /* A second builder where asked for and the machine has a second core; then the data
     * writer too, the batch cut in two halves (the same memory), unless a kill point is armed
     * or the halves would be smaller than a record. */
    int cores = sysconf(_SC_NPROCESSORS_ONLN) >= 2;
    j->async = cores && o && o->builders >= 2 && !nlsr_fault_armed() && j->batch_cap / 2 >= rec;
    j->batch_alloc = j->batch_cap;
    if (j->async) j->batch_cap /= 2;
    if (rc == 0)
        rc = nlsr_budget_alloc(&ctx->budget, j->batch_alloc, "journal batch",
                               (void **)&j->batch_mem, e);
    j->batch = j->batch_mem;
    for (int k = 0; k < 2 && rc == 0; k++) {
        jbuild *bd = &j->bld[k];
        if (k == 1 && !(cores && o && o->builders >= 2)) break;
        rc = nlsr_budget_alloc(&ctx->budget, plane_cap, "journal planes", (void **)&bd->plane, e);
        if (rc == 0) bd->plane_cap = plane_cap;
        if (rc == 0)
            rc = nlsr_budget_alloc(&ctx->budget, cbuf_cap, "journal record", (void **)&bd->cbuf, e);
        if (rc == 0) bd->cbuf_cap = cbuf_cap;
        if (rc == 0 && !(bd->cctx = ZSTD_createCCtx())) rc = nlsr_fail(e, -ENOMEM, "out of memory");
        if (rc == 0) j->nbld = k + 1;
    }
    for (int k = 0; k < j->nbld; k++) {
        ZSTD_CCtx *cc = j->bld[k].cctx;
        ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, ZLEVEL);
        ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, 1);
        /* With a second core zstd compresses in its multi-threaded mode: its frames are the same
         * bytes for any number of workers (but not for none), so the journal's bytes do not
         * depend on whether the records are built on one thread or two. One worker each with
         * two builders, two with one (a payload past zstd's job size is then split over both
         * cores). A libzstd without threads refuses the parameter, and one thread does it
         * all. */
        if (cores) (void)ZSTD_CCtx_setParameter(cc, ZSTD_c_nbWorkers, j->nbld == 2 ? 1 : 2);
    }
    if (rc < 0) {
        nlsr_journal_close(j);
        return rc;
    }
    *out = j;
    return 0;
}

int nlsr_journal_add_file(nlsr_journal *j, const char *name, uint32_t *id)
{
    nlsr_err *e = &j->ctx->err;
    NLSR_FAIL_IF(!plain_name(name, strlen(name)), e, NLSR_E_USAGE,
                 "%s: '%s' is not a plain file name", j->dir, name);
    char *path = nlsr_path_join(j->dir, name);
    char *nm = strdup(name);
    jfile *nf = realloc(j->files, (j->nfiles + 1) * sizeof *nf);
    if (nf) j->files = nf;
    if (!path || !nm || !nf) {
        free(path);
        free(nm);
        return nlsr_fail(e, -ENOMEM, "out of memory");
    }
    int rc = 0, fd = -1;
    struct stat ls, st;
    if (lstat(path, &ls) != 0) {
        rc = -errno;
        nlsr_fail(e, rc, "%s: cannot stat: %s", path, strerror(-rc));
        goto fail;
    }
    if (S_ISLNK(ls.st_mode) && !j->follow) {
        char target[512];
        ssize_t n = readlink(path, target, sizeof target - 1);
        target[n > 0 ? n : 0] = '\0';
        rc = nlsr_fail(e, NLSR_E_USAGE,
                       "%s: is a symbolic link (to %s): it may point into a shared store such as "
                       "the Hugging Face cache, where other snapshots use the same file; copy the "
                       "checkpoint, or pass --follow-links to patch the file it points to",
                       path, target);
        goto fail;
    }
    rc = nlsr_open_regular(e, path, O_RDWR, j->follow, &fd);
    if (rc < 0) goto fail;
    if (fstat(fd, &st) != 0) {
        rc = -errno;
        nlsr_fail(e, rc, "%s: cannot stat: %s", path, strerror(-rc));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = nlsr_fail(e, NLSR_E_USAGE, "%s: not a regular file", path);
        goto fail;
    }
    /* Root may write anything: a file without any write bit was marked read-only on purpose. */
    if ((st.st_mode & 0222) == 0) {
        rc = nlsr_fail(e, -EACCES,
                       "%s: is read-only (mode %04o): make it writable (chmod u+w) to realign it in "
                       "place, or write a realigned copy with --out",
                       path, (unsigned)(st.st_mode & 07777));
        goto fail;
    }
    if (st.st_nlink > 1 && !j->follow) {
        rc = nlsr_fail(e, NLSR_E_USAGE,
                       "%s: has %lu hard links: other paths share its bytes; copy the checkpoint, or "
                       "pass --follow-links to patch the shared file",
                       path, (unsigned long)st.st_nlink);
        goto fail;
    }
    j->files[j->nfiles] = (jfile){nm, path, fd, (uint64_t)st.st_size, 0};
    *id = (uint32_t)j->nfiles++;
    return 0;
fail:
    if (fd >= 0) close(fd);
    free(path);
    free(nm);
    return rc;
}

static void fill_preamble(unsigned char *p, uint32_t version, uint64_t id, uint32_t flags)
{
    memcpy(p, PRE_MAGIC, 8);
    put32(p + 8, version);
    put32(p + 12, flags);
    put64(p + 16, id);
    put64(p + 24, (uint64_t)time(NULL));
    put64(p + 32, (uint64_t)getpid());
    put64(p + 56, nlsr_xxh64(p, 56, 0));
}

static void fill_slot(unsigned char *p, uint64_t seq, uint32_t state, uint64_t records,
                      uint64_t end, uint64_t last, uint64_t id)
{
    memset(p, 0, SLOT_SIZE);
    memcpy(p, SLOT_MAGIC, 8);
    put64(p + 8, seq);
    put32(p + 16, state);
    put64(p + 24, records);
    put64(p + 32, end);
    put64(p + 40, last);
    put64(p + 48, id);
    put64(p + 56, nlsr_xxh64(p, 56, 0));
}

static uint64_t slot_offset(uint64_t seq)
{
    return (seq & 1) ? SLOT_A : SLOT_B;
}

/* The next slot goes to the other place than the current one, so that a torn slot write
 * leaves the previous slot readable. */
static int write_slot(nlsr_journal *j, uint32_t state)
{
    unsigned char s[SLOT_SIZE];
    j->seq++;
    fill_slot(s, j->seq, state, j->nrec, j->end, j->last, j->id);
    return d_pwrite(&j->ctx->err, j->fd, s, SLOT_SIZE, slot_offset(j->seq), j->path);
}

/* Starts writing [off, off + len) back to the disk without waiting (sync_file_range): the
 * fsync that the write order needs later then finds most of it on disk already, so the disk
 * writes while the job computes. Durability still comes from that fsync alone. */
static void start_writeback(int fd, uint64_t off, uint64_t len)
{
    (void)sync_file_range(fd, (off_t)off, (off_t)len, SYNC_FILE_RANGE_WRITE);
}

/* Creates the journal file: the header block (preamble, slot A: writing, no records) made
 * durable, and the folder entry too, before any record exists. */
static int create(nlsr_journal *j)
{
    nlsr_err *e = &j->ctx->err;
    int flags = O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW;
    nlsr_test_trace("create", j->path, 0, 0);
    j->fd = open(j->path, flags, 0644);
    int rc = j->fd < 0 ? -errno : 0;
    fault_after();
    if (rc < 0) {
        if (rc == -EEXIST)
            return nlsr_fail(e, NLSR_E_JOURNAL, "%s: a journal appeared while this run prepared",
                             j->path);
        return nlsr_fail(e, rc, "%s: cannot create the journal: %s", j->path, strerror(-rc));
    }
    unsigned char *h = calloc(1, NLSR_JOURNAL_DATA_START);
    NLSR_FAIL_IF(!h, e, -ENOMEM, "out of memory");
    fill_preamble(h, j->version, j->id, j->follow ? NLSR_JOURNAL_FLAG_LINKS : 0);
    j->seq = 1;
    j->end = NLSR_JOURNAL_DATA_START;
    fill_slot(h + slot_offset(1), 1, NLSR_JOURNAL_WRITING, 0, j->end, 0, j->id);
    rc = d_pwrite(e, j->fd, h, NLSR_JOURNAL_DATA_START, 0, j->path);
    free(h);
    if (rc == 0) rc = d_fsync(e, j->fd, j->path);
    if (rc == 0) rc = d_fsync_dir(e, j->dir);
    if (rc == 0) {
        j->journal_bytes += NLSR_JOURNAL_DATA_START;
        j->ctx->bytes_written += NLSR_JOURNAL_DATA_START;
    }
    return rc;
}

/* Builds b's record in b->cbuf (header, name, zstd frame of the payload): no I/O and nothing
 * shared but read-only fields, so it runs on either thread. The payload is `src` as byte
 * planes (version 1, and the end record), or for a range of version 2 the sparse payload's
 * bitmap and changed elements (`neu`: the new bytes). */
static void build_record(uint32_t version, jbuild *b)
{
    size_t nlen = b->f ? strlen(b->f->name) : 0;
    const unsigned char *in = b->src;
    size_t in_len = b->len;
    b->zerr = 0;
    b->h_new = b->type == REC_RANGE ? nlsr_xxh64(b->neu, b->len, 0) : 0;
    if (b->type == REC_RANGE && version >= 2) {
        in_len = nlsr_jp_sparse(b->src, b->neu, b->len, b->width, b->plane);
        in = b->plane;
    } else if (b->width > 1) {
        nlsr_jp_to_planes(b->src, b->plane, b->len, b->width);
        in = b->plane;
    }
    unsigned char *h = b->cbuf, *pay = h + REC_HDR + nlen;
    size_t cs = ZSTD_compress2(b->cctx, pay, b->cbuf_cap - REC_HDR - nlen, in, in_len);
    if (ZSTD_isError(cs)) {
        b->zerr = cs;
        return;
    }
    memset(h, 0, REC_HDR);
    memcpy(h, REC_MAGIC, 8);
    put32(h + 8, b->type);
    put32(h + 12, (uint32_t)nlen);
    put64(h + 16, b->index);
    put64(h + 24, b->f ? b->f->size : 0);
    put64(h + 32, b->off);
    put64(h + 40, b->len);
    put64(h + 48, cs);
    put32(h + 56, (uint32_t)b->width);
    put64(h + 64, nlsr_xxh64(b->src, b->len, 0));
    put64(h + 72, b->h_new);
    put64(h + 80, nlsr_xxh64(pay, cs, 0));
    if (nlen) memcpy(h + REC_HDR, b->f->name, nlen);
    nlsr_xxh64_state hs;
    nlsr_xxh64_init(&hs, 0);
    nlsr_xxh64_update(&hs, h, 88);
    nlsr_xxh64_update(&hs, h + REC_HDR, nlen);
    put64(h + 88, nlsr_xxh64_digest(&hs));
    b->total = REC_HDR + nlen + cs;
}

/* Appends a built record at the journal's end (the caller's thread, in record order). */
static int append_built(nlsr_journal *j, const jbuild *b)
{
    nlsr_err *e = &j->ctx->err;
    NLSR_FAIL_IF(b->zerr, e, NLSR_E_FORMAT, "%s: zstd: %s", j->path, ZSTD_getErrorName(b->zerr));
    assert(b->index == j->nrec);
    NLSR_FORWARD(d_pwrite(e, j->fd, b->cbuf, b->total, j->end, j->path));
    /* The range the record protects, for the write-order test (it checks that every data
     * write lies in records that are armed and durable). */
    if (b->f) nlsr_test_trace("record", b->f->path, b->off, b->len);
    start_writeback(j->fd, j->end, b->total);
    j->last = j->end;
    j->end += b->total;
    j->nrec++;
    j->journal_bytes += b->total;
    j->ctx->bytes_written += b->total;
    nlsr_phase_tick(j->ctx);
    return 0;
}

/* ---- the job threads ---------------------------------------------------------------------- */

static void *jthread_main(void *arg)
{
    jthread *t = arg;
    pthread_mutex_lock(&t->mu);
    for (;;) {
        while (!t->busy && !t->quit) pthread_cond_wait(&t->cv, &t->mu);
        if (!t->busy) break;
        pthread_mutex_unlock(&t->mu);
        t->run(t->j);
        pthread_mutex_lock(&t->mu);
        t->busy = 0;
        pthread_cond_broadcast(&t->cv);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

/* 1 when the thread runs (started now if need be); 0: the caller does the work. A thread that
 * cannot be started costs only the speed. */
static int jthread_start(jthread *t, nlsr_journal *j, void (*run)(nlsr_journal *))
{
    if (t->started) return 1;
    t->run = run;
    t->j = j;
    if (pthread_mutex_init(&t->mu, NULL) != 0) return 0;
    if (pthread_cond_init(&t->cv, NULL) != 0) {
        pthread_mutex_destroy(&t->mu);
        return 0;
    }
    if (pthread_create(&t->th, NULL, jthread_main, t) != 0) {
        pthread_cond_destroy(&t->cv);
        pthread_mutex_destroy(&t->mu);
        return 0;
    }
    t->started = 1;
    return 1;
}

static void jthread_post(jthread *t)
{
    pthread_mutex_lock(&t->mu);
    t->busy = 1;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

static void jthread_wait(jthread *t)
{
    if (!t->started) return;
    pthread_mutex_lock(&t->mu);
    while (t->busy) pthread_cond_wait(&t->cv, &t->mu);
    pthread_mutex_unlock(&t->mu);
}

/* Waits for the job in hand, then ends the thread. */
static void jthread_stop(jthread *t)
{
    if (!t->started) return;
    jthread_wait(t);
    pthread_mutex_lock(&t->mu);
    t->quit = 1;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    pthread_join(t->th, NULL);
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
    t->started = 0;
}

/* ---- the builder ---------------------------------------------------------------------------- */

static void builder_run(nlsr_journal *j)
{
    jbuild *b = j->wk_job;
    build_record(j->version, b);
    if (b->prev_to) memcpy(b->prev_to, b->prev_src, b->prev_len);
    if (b->copy_to) memcpy(b->copy_to, b->neu, b->len);
}

/* 1 when the builder runs; 0: build on this thread. */
static int worker_ready(nlsr_journal *j)
{
    if (j->nbld < 2) return 0;
    if (jthread_start(&j->wk, j, builder_run)) return 1;
    j->nbld = 1;
    return 0;
}

static void worker_post(nlsr_journal *j, jbuild *b)
{
    j->wk_job = b;
    jthread_post(&j->wk);
}

/* ---- the data writer ---------------------------------------------------------------------- */

/* Writes one batch's entries (no shared state but the job and the files' fds and paths, which
 * do not change once staging began; counters and progress stay on the caller's thread). */
static int write_entries(const nlsr_journal *j, const staged *st, size_t n,
                         const unsigned char *buf, nlsr_err *e)
{
    for (size_t i = 0; i < n; i++) {
        const jfile *f = &j->files[st[i].file];
        NLSR_FORWARD(d_pwrite(e, f->fd, buf + st[i].pos, st[i].len, st[i].off, f->path));
        start_writeback(f->fd, st[i].off, st[i].len);
    }
    return 0;
}

static void writer_run(nlsr_journal *j)
{
    jwriter *w = &j->wr;
    /* Tests: the writer late, so that a caller that does not wait for it shows in the
     * write-order trace. */
    if (nlsr_test_env("NLSR_TEST_JOURNAL_WRITER_DELAY")) usleep(20000);
    nlsr_err e;
    memset(&e, 0, sizeof e);
    int rc = 0;
    /* Tests: this batch's first write fails as an I/O error would. */
    const char *fail_at = nlsr_test_env("NLSR_TEST_JOURNAL_WRITER_FAIL");
    if (fail_at && ++w->jobs == strtoull(fail_at, NULL, 10) && w->nst)
        rc = nlsr_fail(&e, -EIO, "%s: write of %zu bytes at offset %" PRIu64 " failed: %s",
                       j->files[w->st[0].file].path, w->st[0].len, w->st[0].off,
                       strerror(EIO));
    if (rc == 0 && !w->rc) rc = write_entries(j, w->st, w->nst, w->buf, &e);
    if (rc < 0) {
        w->rc = rc;
        w->err = e;
    }
}

/* Waits until the writer is idle; its failure (once) into the context's message. */
static int writer_collect(nlsr_journal *j)
{
    jwriter *w = &j->wr;
    jthread_wait(&w->t);
    if (w->rc < 0 && !j->failed) j->ctx->err = w->err;
    return jfail(j, w->rc);
}

/* Gives the armed batch to the writer (after its previous one is written) and stages the next
 * one in the other half; 0 when the writer cannot run (the caller writes the batch itself). */
static int writer_take(nlsr_journal *j, int *taken)
{
    *taken = 0;
    if (!j->async || !jthread_start(&j->wr.t, j, writer_run)) return 0;
    NLSR_FORWARD(writer_collect(j));
    jwriter *w = &j->wr;
    w->st = j->st;
    w->nst = j->nst;
    w->buf = j->batch;
    jthread_post(&w->t);
    staged *t = j->st;
    size_t tc = j->st_cap;
    j->st = j->st_w;
    j->st_cap = j->st_w_cap;
    j->st_w = t;
    j->st_w_cap = tc;
    j->batch = j->batch == j->batch_mem ? j->batch_mem + j->batch_cap : j->batch_mem;
    *taken = 1;
    return 0;
}

/* ---- staging ------------------------------------------------------------------------------ */

static void set_piece(jbuild *b, uint64_t index, const jfile *f, uint64_t off,
                      const unsigned char *o, const unsigned char *n, size_t len, size_t width)
{
    b->type = REC_RANGE;
    b->index = index;
    b->f = f;
    b->off = off;
    b->src = o;
    b->neu = n;
    b->len = len;
    b->width = width;
    b->copy_to = NULL;
    b->prev_to = NULL;
}

/* After its record is appended: a piece's new bytes into the batch, its entry and its part of
 * the result fingerprint. */
static int keep_piece(nlsr_journal *j, uint32_t id, const jbuild *b, int copied)
{
    assert(!b->copy_to || b->copy_to == j->batch + j->batch_used);
    nlsr_err *e = &j->ctx->err;
    if (j->nst == j->st_cap) {
        size_t cap = j->st_cap ? 2 * j->st_cap : 64;
        staged *ns = realloc(j->st, cap * sizeof *ns);
        NLSR_FAIL_IF(!ns, e, -ENOMEM, "out of memory");
        j->st = ns;
        j->st_cap = cap;
    }
    if (!b->copy_to && !copied) memcpy(j->batch + j->batch_used, b->neu, b->len);
    j->st[j->nst++] = (staged){id, b->off, b->len, j->batch_used};
    j->batch_used += b->len;
    /* The result fingerprint takes the new bytes' checksum rather than the bytes: one pass
     * over the data fewer, the same identity. */
    unsigned char le[24];
    put64(le, b->off);
    put64(le + 8, b->len);
    put64(le + 16, b->h_new);
    nlsr_xxh64_update(&j->result, b->f->name, strlen(b->f->name) + 1);
    nlsr_xxh64_update(&j->result, le, sizeof le);
    j->ranges++;
    return 0;
}

/* A staged range's checks, made when its first piece comes up (as each range's own call did
 * before ranges were built ahead): a safe point, and the range within its file. */
static int range_checks(nlsr_journal *j, const jfile *f, uint64_t off, size_t len)
{
    nlsr_err *e = &j->ctx->err;
    NLSR_FORWARD(nlsr_ctx_check_cancel(j->ctx));
    NLSR_FAIL_IF(off > f->size || len > f->size - off, e, NLSR_E_USAGE,
                 "%s: range at %" PRIu64 " of %zu bytes lies outside the file (%" PRIu64 " bytes)",
                 f->path, off, len, f->size);
    return 0;
}

/* Adds [off, off + len) to the pieces of this call, cut at record size (one record each). */
static int add_range(nlsr_journal *j, uint64_t off, const unsigned char *o, const unsigned char *n,
                     size_t len, size_t width, int checks)
{
    size_t piece_max = j->rec_cap / width * width;
    int first = 1;
    while (len > 0) {
        if (j->npc == j->pc_cap) {
            size_t cap = j->pc_cap ? 2 * j->pc_cap : 64;
            jpiece *np = realloc(j->pc, cap * sizeof *np);
            NLSR_FAIL_IF(!np, &j->ctx->err, -ENOMEM, "out of memory");
            j->pc = np;
            j->pc_cap = cap;
        }
        size_t k = len < piece_max ? len : piece_max;
        j->pc[j->npc++] = (jpiece){off, o, n, k, first && checks, len, 0};
        first = 0;
        o += k;
        n += k;
        off += k;
        len -= k;
    }
    return 0;
}

/* Gives piece i to the worker. When it and the piece before it (not kept yet) fit the batch,
 * the worker also puts both pieces' new bytes where they go: the batch is written out only
 * after the worker is waited for. Otherwise a batch is written out between or before them,
 * and this thread copies. */
static void post_piece(nlsr_journal *j, size_t i, const jfile *f, uint64_t first_index,
                       size_t width)
{
    const jpiece *p = &j->pc[i];
    jbuild *b = &j->bld[1];
    set_piece(b, first_index + i, f, p->off, p->o, p->n, p->len, width);
    size_t before = j->pc[i - 1].len;
    if (j->batch_used + before + p->len <= j->batch_cap) {
        b->copy_to = j->batch + j->batch_used + before;
        b->prev_to = j->batch + j->batch_used;
        b->prev_src = j->pc[i - 1].n;
        b->prev_len = before;
        j->pc[i - 1].copied = 1;
    }
    worker_post(j, b);
}

/* Journals the pieces gathered by this call, in order; each is: its range's checks (first
 * piece), the batch armed and written when its new bytes do not fit (nlsr_journal_flush), the
 * journal created before the first record, its record appended, its new bytes kept. With the
 * worker, the odd pieces' records are built there while this thread builds the even ones (and
 * writes out batches): the worker does no I/O, so the files see exactly the calls, in the
 * order, that one thread makes. The caller's buffers stay valid for the whole call, which is
 * what lets a piece be built ahead. */
static int run_pieces(nlsr_journal *j, uint32_t id, size_t width)
{
    const jfile *f = &j->files[id];
    size_t n = j->npc;
    int two = n > 1 && worker_ready(j), posted = 0, rc = 0;
    uint64_t first_index = j->nrec; /* flushes and the creation append no record */
    if (two) {
        post_piece(j, 1, f, first_index, width);
        posted = 1;
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        const jpiece *p = &j->pc[i];
        if (p->checks) rc = range_checks(j, f, p->off, p->range_len);
        if (rc == 0 && j->batch_used + p->len > j->batch_cap) rc = nlsr_journal_flush(j);
        if (rc == 0 && j->fd < 0) rc = create(j);
        if (rc < 0) break;
        jbuild *b = &j->bld[0];
        if (two && i % 2 == 1) {
            jthread_wait(&j->wk);
            posted = 0;
            b = &j->bld[1];
        } else {
            set_piece(b, first_index + i, f, p->off, p->o, p->n, p->len, width);
            build_record(j->version, b);
        }
        rc = append_built(j, b);
        if (rc == 0) rc = keep_piece(j, id, b, p->copied);
        if (rc == 0 && two && i % 2 == 1 && i + 2 < n) {
            post_piece(j, i + 2, f, first_index, width);
            posted = 1;
        }
    }
    /* The worker reads the caller's buffers: it is done before they are handed back. */
    if (posted) jthread_wait(&j->wk);
    j->npc = 0;
    return jfail(j, rc);
}

int nlsr_journal_stage(nlsr_journal *j, uint32_t id, uint64_t off, const void *orig,
                       const void *neu, size_t len, size_t width)
{
    if (j->failed) return j->failed;
    assert(id < j->nfiles);
    assert((width == 1 || width == 2 || width == 4 || width == 8) && len % width == 0);
    NLSR_FORWARD(jfail(j, range_checks(j, &j->files[id], off, len)));
    j->npc = 0;
    NLSR_FORWARD(jfail(j, add_range(j, off, orig, neu, len, width, 0)));
    return run_pieces(j, id, width);
}

int nlsr_journal_stage_changed(nlsr_journal *j, uint32_t id, uint64_t off, const void *orig,
                               const void *neu, size_t len, size_t width)
{
    if (j->failed) return j->failed;
    assert(id < j->nfiles);
    assert((width == 1 || width == 2 || width == 4 || width == 8) && len % width == 0);
    const unsigned char *o = orig, *n = neu;
    /* Grain edges at file offsets that are multiples of the grain, when that keeps every
     * edge on an element (the range starts on one); relative to the range otherwise. All the
     * runs of changed grains are gathered first, then journaled (two records at a time). */
    uint64_t base = off % width == 0 ? 0 : off % NLSR_JOURNAL_GRAIN;
    size_t pos = 0, run = SIZE_MAX;
    j->npc = 0;
    while (pos < len) {
        uint64_t at = off + pos;
        size_t step = (size_t)(NLSR_JOURNAL_GRAIN - (at - base) % NLSR_JOURNAL_GRAIN);
        if (step > len - pos) step = len - pos;
        int changed = memcmp(o + pos, n + pos, step) != 0;
        if (changed && run == SIZE_MAX) run = pos;
        if (!changed && run != SIZE_MAX) {
            NLSR_FORWARD(jfail(j, add_range(j, off + run, o + run, n + run, pos - run, width, 1)));
            run = SIZE_MAX;
        }
        pos += step;
    }
    if (run != SIZE_MAX)
        NLSR_FORWARD(jfail(j, add_range(j, off + run, o + run, n + run, len - run, width, 1)));
    NLSR_FORWARD(run_pieces(j, id, width));
    /* A range with nothing to change still passes a safe point. */
    return jfail(j, nlsr_ctx_check_cancel(j->ctx));
}

int nlsr_journal_flush(nlsr_journal *j)
{
    nlsr_err *e = &j->ctx->err;
    if (j->failed) return j->failed;
    if (j->nst == 0) return 0;
    /* Records durable, then the slot that arms them durable, then the data. */
    NLSR_FORWARD(jfail(j, d_fsync(e, j->fd, j->path)));
    NLSR_FORWARD(jfail(j, write_slot(j, NLSR_JOURNAL_WRITING)));
    NLSR_FORWARD(jfail(j, d_fsync(e, j->fd, j->path)));
    nlsr_test_point("journal");
    /* Counted when handed over: a write that fails fails the job, whose counts then do not
     * matter. */
    for (size_t i = 0; i < j->nst; i++) {
        const staged *s = &j->st[i];
        j->files[s->file].dirty = 1;
        j->data_bytes += s->len;
        j->ctx->bytes_written += s->len;
    }
    int taken = 0;
    NLSR_FORWARD(writer_take(j, &taken));
    if (!taken) NLSR_FORWARD(jfail(j, write_entries(j, j->st, j->nst, j->batch, e)));
    nlsr_phase_tick(j->ctx);
    j->nst = 0;
    j->batch_used = 0;
    return 0;
}

int nlsr_journal_sync(nlsr_journal *j)
{
    NLSR_FORWARD(nlsr_journal_flush(j));
    NLSR_FORWARD(writer_collect(j));
    for (size_t i = 0; i < j->nfiles; i++) {
        jfile *f = &j->files[i];
        if (!f->dirty) continue;
        NLSR_FORWARD(jfail(j, d_fsync(&j->ctx->err, f->fd, f->path)));
        f->dirty = 0;
    }
    return 0;
}

int nlsr_journal_complete(nlsr_journal *j, const char *json)
{
    nlsr_err *e = &j->ctx->err;
    NLSR_FORWARD(nlsr_journal_sync(j));
    size_t len = strlen(json);
    NLSR_FAIL_IF(len > MAX_END_JSON, e, jfail(j, NLSR_E_USAGE), "%s: state of %zu bytes is too long",
                 j->path, len);
    if (j->fd < 0) NLSR_FORWARD(jfail(j, create(j)));
    size_t cap = REC_HDR + ZSTD_compressBound(len);
    unsigned char *buf = malloc(cap);
    NLSR_FAIL_IF(!buf, e, jfail(j, -ENOMEM), "out of memory");
    jbuild b = j->bld[0]; /* its compression context, the record in buf */
    b.type = REC_END;
    b.index = j->nrec;
    b.f = NULL;
    b.off = 0;
    b.src = (const unsigned char *)json;
    b.neu = NULL;
    b.len = len;
    b.width = 1;
    b.cbuf = buf;
    b.cbuf_cap = cap;
    build_record(j->version, &b);
    int rc = append_built(j, &b);
    free(buf);
    if (rc == 0) rc = d_fsync(e, j->fd, j->path);
    if (rc == 0) rc = write_slot(j, NLSR_JOURNAL_COMPLETE);
    if (rc == 0) rc = d_fsync(e, j->fd, j->path);
    return jfail(j, rc);
}

uint64_t nlsr_journal_id(const nlsr_journal *j)
{
    return j->id;
}

int nlsr_journal_created(const nlsr_journal *j)
{
    return j->fd >= 0;
}

uint64_t nlsr_journal_result(const nlsr_journal *j)
{
    return nlsr_xxh64_digest(&j->result);
}

void nlsr_journal_counts(const nlsr_journal *j, uint64_t *data_bytes, uint64_t *journal_bytes,
                         uint64_t *ranges)
{
    if (data_bytes) *data_bytes = j->data_bytes;
    if (journal_bytes) *journal_bytes = j->journal_bytes;
    if (ranges) *ranges = j->ranges;
}

const char *nlsr_journal_file_path(const nlsr_journal *j, uint32_t id)
{
    return id < j->nfiles ? j->files[id].path : NULL;
}

void nlsr_journal_close(nlsr_journal *j)
{
    if (!j) return;
    nlsr_budget *b = &j->ctx->budget;
    /* The writer first: a failed job's rollback must not race with its writes. */
    jthread_stop(&j->wr.t);
    nlsr_budget_free(b, j->batch_mem, j->batch_alloc);
    jthread_stop(&j->wk);
    for (int k = 0; k < 2; k++) {
        nlsr_budget_free(b, j->bld[k].plane, j->bld[k].plane_cap);
        nlsr_budget_free(b, j->bld[k].cbuf, j->bld[k].cbuf_cap);
        ZSTD_freeCCtx(j->bld[k].cctx);
    }
    for (size_t i = 0; i < j->nfiles; i++) {
        close(j->files[i].fd);
        free(j->files[i].name);
        free(j->files[i].path);
    }
    free(j->files);
    free(j->st);
    free(j->st_w);
    free(j->pc);
    if (j->fd >= 0) close(j->fd);
    free(j->dir);
    free(j->path);
    free(j);
}

/* ---- reader -------------------------------------------------------------------------------- */

typedef struct slot {
    uint64_t seq, records, end, last, id;
    uint32_t state;
} slot;

typedef struct rec {
    uint32_t type, width;
    size_t namelen;
    uint64_t index, fsize, off, len, csize, h_orig, h_new, h_pay;
    char name[MAX_NAME + 1];
    uint64_t at, total;
} rec;

/* Growable buffers charged to the budget. */
typedef struct rbuf {
    unsigned char *p;
    size_t cap;
} rbuf;

static int rbuf_need(nlsr_ctx *ctx, rbuf *b, size_t n, const char *what)
{
    if (n <= b->cap) return 0;
    nlsr_budget_free(&ctx->budget, b->p, b->cap);
    b->p = NULL;
    b->cap = 0;
    NLSR_FORWARD(nlsr_budget_alloc(&ctx->budget, n, what, (void **)&b->p, &ctx->err));
    b->cap = n;
    return 0;
}

static void rbuf_free(nlsr_ctx *ctx, rbuf *b)
{
    nlsr_budget_free(&ctx->budget, b->p, b->cap);
    b->p = NULL;
    b->cap = 0;
}

static int parse_slot(const unsigned char *p, uint64_t id, slot *s)
{
    if (memcmp(p, SLOT_MAGIC, 8) != 0 || get64(p + 56) != nlsr_xxh64(p, 56, 0)) return 0;
    s->seq = get64(p + 8);
    s->state = get32(p + 16);
    s->records = get64(p + 24);
    s->end = get64(p + 32);
    s->last = get64(p + 40);
    s->id = get64(p + 48);
    if (s->id != id || s->seq == 0 || s->state < NLSR_JOURNAL_WRITING ||
        s->state > NLSR_JOURNAL_ROLLING_BACK || s->end < NLSR_JOURNAL_DATA_START)
        return 0;
    if (s->records == 0) return s->end == NLSR_JOURNAL_DATA_START && s->last == 0;
    return s->last >= NLSR_JOURNAL_DATA_START && s->last < s->end;
}

/* The header block: TORN when the journal never got past its creation (at most the header
 * block on disk: no record, so nothing was changed); otherwise the best slot. */
static int read_head(nlsr_ctx *ctx, int fd, const char *path, nlsr_journal_info *info, slot *best)
{
    nlsr_err *e = &ctx->err;
    struct stat st;
    NLSR_FAIL_IF(fstat(fd, &st) != 0, e, -errno, "%s: cannot stat: %s", path, strerror(errno));
    info->file_size = (uint64_t)st.st_size;
    unsigned char h[NLSR_JOURNAL_DATA_START];
    memset(h, 0, sizeof h);
    size_t n = info->file_size < sizeof h ? (size_t)info->file_size : sizeof h;
    NLSR_FORWARD(nlsr_pread_all(fd, h, n, 0, path, e));
    int pre_ok = n >= PRE_SIZE && memcmp(h, PRE_MAGIC, 8) == 0 &&
                 get64(h + 56) == nlsr_xxh64(h, 56, 0);
    slot a, b;
    int va = 0, vb = 0;
    if (pre_ok) {
        info->id = get64(h + 16);
        info->flags = get32(h + 12);
        info->created = get64(h + 24);
        info->version = get32(h + 8);
        /* Version 1 (whole original grains) is still read: a journal written by an older
         * nlsr rolls back with this one. */
        NLSR_FAIL_IF(info->version != 1 && info->version != NLSR_JOURNAL_VERSION, e,
                     NLSR_E_JOURNAL,
                     "%s: journal version %u is not supported (this nlsr reads versions 1 and "
                     "%u): roll it back with the nlsr that wrote it",
                     path, info->version, NLSR_JOURNAL_VERSION);
        va = parse_slot(h + SLOT_A, info->id, &a);
        vb = parse_slot(h + SLOT_B, info->id, &b);
    }
    if (!pre_ok || (!va && !vb)) {
        /* Records begin after the header block: a journal no longer than it holds none, and no
         * byte of the checkpoint was written before a record was armed. */
        NLSR_FAIL_IF(info->file_size > NLSR_JOURNAL_DATA_START, e, NLSR_E_CHECKSUM,
                     "%s: the journal's %s damaged (%s): its records cannot be trusted",
                     path, pre_ok ? "slots are" : "preamble is",
                     pre_ok ? "no slot passes its checksum" : "bad magic or checksum");
        info->state = NLSR_JOURNAL_TORN;
        return 0;
    }
    *best = va && (!vb || a.seq > b.seq) ? a : b;
    info->state = (nlsr_journal_state)best->state;
    info->records = best->records;
    return 0;
}

/* Largest decompressed payload of a record of len bytes: version 2's bitmap and every element
 * (width 1: len/8 bytes more), which bounds version 1's len too. */
static size_t payload_max(size_t len)
{
    return len + len / 8 + 8;
}

/* Reads a record header at `at`. 0: valid; 1: incomplete or invalid (*why says which);
 * < 0: I/O error. */
static int read_rec(nlsr_ctx *ctx, int fd, const char *path, uint64_t at, uint64_t fsize,
                    rec *r, const char **why)
{
    unsigned char h[REC_HDR];
    memset(r, 0, sizeof *r);
    r->at = at;
    if (at >= fsize || fsize - at < REC_HDR) {
        *why = "the journal ends inside its header";
        return 1;
    }
    NLSR_FORWARD(nlsr_pread_all(fd, h, REC_HDR, at, path, &ctx->err));
    if (memcmp(h, REC_MAGIC, 8) != 0) {
        *why = "bad record magic";
        return 1;
    }
    r->type = get32(h + 8);
    r->namelen = get32(h + 12);
    r->index = get64(h + 16);
    r->fsize = get64(h + 24);
    r->off = get64(h + 32);
    r->len = get64(h + 40);
    r->csize = get64(h + 48);
    r->width = get32(h + 56);
    r->h_orig = get64(h + 64);
    r->h_new = get64(h + 72);
    r->h_pay = get64(h + 80);
    if (r->namelen > MAX_NAME || fsize - at - REC_HDR < r->namelen) {
        *why = "the journal ends inside its file name";
        return 1;
    }
    if (r->namelen) NLSR_FORWARD(nlsr_pread_all(fd, r->name, r->namelen, at + REC_HDR, path, &ctx->err));
    r->name[r->namelen] = '\0';
    nlsr_xxh64_state hs;
    nlsr_xxh64_init(&hs, 0);
    nlsr_xxh64_update(&hs, h, 88);
    nlsr_xxh64_update(&hs, r->name, r->namelen);
    if (nlsr_xxh64_digest(&hs) != get64(h + 88)) {
        *why = "its header fails its checksum";
        return 1;
    }
    int wok = r->width == 1 || r->width == 2 || r->width == 4 || r->width == 8;
    uint64_t lim = r->type == REC_END ? MAX_END_JSON : NLSR_JOURNAL_MAX_RECORD;
    if ((r->type != REC_RANGE && r->type != REC_END) || !wok || r->len > lim ||
        r->len % r->width || r->csize > ZSTD_compressBound(payload_max((size_t)r->len)) ||
        (r->type == REC_RANGE && (!plain_name(r->name, r->namelen) || r->len == 0 ||
                                  r->off > r->fsize || r->len > r->fsize - r->off))) {
        *why = "its header holds impossible values";
        return 1;
    }
    if (fsize - at - REC_HDR - r->namelen < r->csize) {
        *why = "the journal ends inside its payload";
        return 1;
    }
    r->total = REC_HDR + r->namelen + r->csize;
    return 0;
}

/* Reads, checks and decodes the payload of a valid header into out->p (r->len bytes): the
 * original bytes of the range. A range of version 2 needs `cur`, the range's current bytes,
 * for the elements it does not hold. 0: valid; 1: damaged (*why); 2 (version 2 only): the
 * payload is intact but the original bytes rebuilt with the file's fail their checksum, so
 * elements the run did not change were changed since; < 0: error. */
static int read_payload(nlsr_ctx *ctx, int fd, const char *path, const rec *r, uint32_t version,
                        const unsigned char *cur, rbuf *cb, rbuf *pb, rbuf *out,
                        ZSTD_DCtx *dctx, const char **why)
{
    size_t len = (size_t)r->len;
    int sparse = version >= 2 && r->type == REC_RANGE;
    /* Version 2: the bitmap and at most every element; one byte more shows an overlong frame. */
    size_t pcap = sparse ? len + nlsr_jp_bitmap_bytes(len / r->width) : len;
    NLSR_FORWARD(rbuf_need(ctx, cb, (size_t)r->csize + 1, "journal payload"));
    NLSR_FORWARD(rbuf_need(ctx, pb, pcap + 1, "journal planes"));
    NLSR_FORWARD(rbuf_need(ctx, out, len + 1, "journal original bytes"));
    NLSR_FORWARD(nlsr_pread_all(fd, cb->p, (size_t)r->csize, r->at + REC_HDR + r->namelen, path,
                                &ctx->err));
    if (nlsr_xxh64(cb->p, (size_t)r->csize, 0) != r->h_pay) {
        *why = "its payload fails its checksum";
        return 1;
    }
    size_t d = ZSTD_decompressDCtx(dctx, pb->p, pcap + 1, cb->p, (size_t)r->csize);
    if (sparse) {
        if (ZSTD_isError(d) || d > pcap ||
            nlsr_jp_sparse_restore(pb->p, d, cur, len, r->width, out->p) != 0) {
            *why = "its payload does not decompress to a bitmap and the elements it names";
            return 1;
        }
        if (nlsr_xxh64(out->p, len, 0) != r->h_orig) {
            *why = "the original bytes rebuilt from it and the range's unchanged elements fail "
                   "their checksum";
            return 2;
        }
        return 0;
    }
    if (ZSTD_isError(d) || d != len) {
        *why = "its payload does not decompress to the recorded length";
        return 1;
    }
    if (r->width > 1) nlsr_jp_from_planes(pb->p, out->p, len, r->width);
    else memcpy(out->p, pb->p, len);
    if (nlsr_xxh64(out->p, len, 0) != r->h_orig) {
        *why = "its original bytes fail their checksum";
        return 1;
    }
    return 0;
}

void nlsr_journal_info_free(nlsr_journal_info *info)
{
    if (!info) return;
    free(info->end_json);
    info->end_json = NULL;
}

static int open_journal(nlsr_ctx *ctx, const char *dir, int flags, char **path, int *fd)
{
    *fd = -1;
    *path = nlsr_path_join(dir, NLSR_JOURNAL_NAME);
    NLSR_FAIL_IF(!*path, &ctx->err, -ENOMEM, "out of memory");
    struct stat st;
    if (lstat(*path, &st) != 0 && errno == ENOENT) return 0;
    NLSR_FORWARD(nlsr_open_regular(&ctx->err, *path, flags & ~(O_CREAT | O_EXCL), 0, fd));
    return 0;
}

/* The end record of a complete journal, whose start the best slot names. */
static int read_end(nlsr_ctx *ctx, int fd, const char *path, const slot *s,
                    nlsr_journal_info *info)
{
    rec r;
    const char *why = NULL;
    rbuf cb = {0}, pb = {0}, ob = {0};
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    NLSR_FAIL_IF(!dctx, &ctx->err, -ENOMEM, "out of memory");
    int rc = read_rec(ctx, fd, path, s->last, info->file_size, &r, &why);
    if (rc == 0 && (r.type != REC_END || r.at + r.total != s->end)) {
        why = "it is not the end record the slot names";
        rc = 1;
    }
    if (rc == 0) rc = read_payload(ctx, fd, path, &r, info->version, NULL, &cb, &pb, &ob, dctx, &why);
    if (rc == 1)
        rc = nlsr_fail(&ctx->err, NLSR_E_CHECKSUM,
                       "%s: the end record at offset %" PRIu64 " is damaged: %s", path, s->last,
                       why);
    if (rc == 0) {
        info->end_json = malloc((size_t)r.len + 1);
        if (!info->end_json) rc = nlsr_fail(&ctx->err, -ENOMEM, "out of memory");
        else {
            memcpy(info->end_json, ob.p, (size_t)r.len);
            info->end_json[r.len] = '\0';
        }
    }
    rbuf_free(ctx, &cb);
    rbuf_free(ctx, &pb);
    rbuf_free(ctx, &ob);
    ZSTD_freeDCtx(dctx);
    return rc;
}

int nlsr_journal_inspect(nlsr_ctx *ctx, const char *dir, nlsr_journal_info *info)
{
    memset(info, 0, sizeof *info);
    char *path = NULL;
    int fd;
    int rc = open_journal(ctx, dir, O_RDONLY, &path, &fd);
    slot best;
    if (rc == 0 && fd >= 0) rc = read_head(ctx, fd, path, info, &best);
    if (rc == 0 && fd >= 0 && info->state == NLSR_JOURNAL_COMPLETE)
        rc = read_end(ctx, fd, path, &best, info);
    if (fd >= 0) close(fd);
    free(path);
    return rc;
}

/* ---- rollback ------------------------------------------------------------------------------ */

typedef struct rfile {
    char *name, *path;
    int fd;
    uint64_t size;
} rfile;

typedef struct rb {
    nlsr_ctx *ctx;
    const char *dir, *path;
    int fd, follow;
    uint32_t version;
    uint64_t jsize;
    rfile *files;
    size_t nfiles;
    rbuf cb, pb, ob, cur;
    ZSTD_DCtx *dctx;
    uint64_t *todo; /* offsets of the records to restore */
    size_t ntodo, todo_cap;
    uint64_t todo_bytes;     /* the ranges' bytes (progress) */
} rb;

static int rb_file(rb *R, const rec *r, rfile **out)
{
    nlsr_err *e = &R->ctx->err;
    for (size_t i = 0; i < R->nfiles; i++)
        if (strcmp(R->files[i].name, r->name) == 0) {
            *out = &R->files[i];
            goto check;
        }
    rfile *nf = realloc(R->files, (R->nfiles + 1) * sizeof *nf);
    NLSR_FAIL_IF(!nf, e, -ENOMEM, "out of memory");
    R->files = nf;
    rfile *f = &R->files[R->nfiles];
    f->name = strdup(r->name);
    f->path = nlsr_path_join(R->dir, r->name);
    f->fd = -1;
    R->nfiles++;
    NLSR_FAIL_IF(!f->name || !f->path, e, -ENOMEM, "out of memory");
    NLSR_FORWARD(nlsr_open_regular(e, f->path, O_RDWR, R->follow, &f->fd));
    struct stat st;
    NLSR_FAIL_IF(fstat(f->fd, &st) != 0, e, -errno, "%s: cannot stat: %s", f->path,
                 strerror(errno));
    f->size = (uint64_t)st.st_size;
    *out = f;
check:
    NLSR_FAIL_IF((*out)->size != r->fsize, e, NLSR_E_MISMATCH,
                 "%s: is %" PRIu64 " bytes but was %" PRIu64 " when journal record %" PRIu64
                 " was written: it is not the file the journal protects; nothing was restored",
                 (*out)->path, (*out)->size, r->fsize, r->index);
    return 0;
}

/* XXH64 of the range's current bytes. */
static int rb_current(rb *R, const rfile *f, const rec *r, uint64_t *h)
{
    NLSR_FORWARD(rbuf_need(R->ctx, &R->cur, (size_t)r->len + 1, "journal check buffer"));
    NLSR_FORWARD(nlsr_pread_all(f->fd, R->cur.p, (size_t)r->len, r->off, f->path, &R->ctx->err));
    *h = nlsr_xxh64(R->cur.p, (size_t)r->len, 0);
    return 0;
}

static int rb_push(rb *R, uint64_t at)
{
    if (R->ntodo == R->todo_cap) {
        size_t cap = R->todo_cap ? 2 * R->todo_cap : 256;
        uint64_t *t = realloc(R->todo, cap * sizeof *t);
        NLSR_FAIL_IF(!t, &R->ctx->err, -ENOMEM, "out of memory");
        R->todo = t;
        R->todo_cap = cap;
    }
    R->todo[R->ntodo++] = at;
    return 0;
}

/* Pass 1: every armed record must be intact; records past them are restored too when intact
 * (they hold true original bytes, so writing them back is harmless), and the scan stops at
 * the first one that is not: the torn tail of a crash. Nothing is written here. */
static int rb_scan(rb *R, const slot *s, int state, int force)
{
    nlsr_err *e = &R->ctx->err;
    uint64_t at = NLSR_JOURNAL_DATA_START, i = 0;
    int saw_end = 0;
    while (at < R->jsize || i < s->records) {
        int armed = i < s->records;
        rec r;
        memset(&r, 0, sizeof r);
        const char *why = NULL;
        int rc = at < R->jsize ? read_rec(R->ctx, R->fd, R->path, at, R->jsize, &r, &why) : 1;
        if (rc == 1 && at >= R->jsize) why = "the journal ends before it";
        if (rc < 0) return rc;
        if (rc == 0 && r.index != i) {
            why = "its index is out of sequence";
            rc = 1;
        }
        int header_ok = rc == 0; /* a record of ours, at its place: its range is known */
        if (rc == 0 && r.type == REC_END) {
            if (armed && i + 1 != s->records) {
                why = "an end record stands before the last armed record";
                rc = 1;
            } else {
                saw_end = armed;
                break;
            }
        }
        rfile *f = NULL;
        /* A version 2 range is rebuilt from the journal and the file's current bytes. */
        uint64_t h_cur = 0;
        int have_cur = 0;
        if (rc == 0 && R->version >= 2 && r.type == REC_RANGE) {
            NLSR_FORWARD(rb_file(R, &r, &f));
            NLSR_FORWARD(rb_current(R, f, &r, &h_cur));
            have_cur = 1;
        }
        if (rc == 0) rc = read_payload(R->ctx, R->fd, R->path, &r, R->version, R->cur.p, &R->cb,
                                       &R->pb, &R->ob, R->dctx, &why);
        if (rc < 0) return rc;
        if (rc == 2 && armed) {
            NLSR_FAIL_IF(state == NLSR_JOURNAL_COMPLETE && !force && h_cur != r.h_new, e,
                         NLSR_E_MISMATCH,
                         "%s: bytes %" PRIu64 "..%" PRIu64 " changed after the realignment "
                         "finished; rolling back would overwrite those changes; nothing was "
                         "restored",
                         f->path, r.off, r.off + r.len);
            return nlsr_fail(e, NLSR_E_MISMATCH,
                             "%s: bytes %" PRIu64 "..%" PRIu64 " (journal record %" PRIu64
                             ") were changed where the realignment had left elements as they "
                             "were; this journal (version 2) holds only the elements the "
                             "realignment changed, so their originals cannot be rebuilt; "
                             "nothing was restored: restore the checkpoint from a backup",
                             f->path, r.off, r.off + r.len, i);
        }
        if (rc == 2) rc = 1; /* past the armed records: the range is not as the run found it */
        if (rc == 1) {
            NLSR_FAIL_IF(armed, e, NLSR_E_CHECKSUM,
                         "%s: journal record %" PRIu64 " of %" PRIu64 " (at offset %" PRIu64
                         ") is damaged: %s; the bytes it protects cannot be restored, so "
                         "nothing was restored",
                         R->path, i, s->records, at, why);
            /* Past the armed records the writer never touched the range. A header that reads
             * well says which range it was: make sure it still holds its original bytes. */
            if (header_ok && r.type == REC_RANGE) {
                uint64_t h = h_cur;
                NLSR_FORWARD(rb_file(R, &r, &f));
                if (!have_cur) NLSR_FORWARD(rb_current(R, f, &r, &h));
                NLSR_FAIL_IF(h != r.h_orig, e, NLSR_E_JOURNAL,
                             "%s: journal record %" PRIu64 " (%s bytes %" PRIu64 "..%" PRIu64
                             ") is damaged (%s) and the range no longer holds its original "
                             "bytes; nothing was restored",
                             R->path, i, r.name, r.off, r.off + r.len, why);
            }
            break;
        }
        NLSR_FORWARD(rb_file(R, &r, &f));
        if (state == NLSR_JOURNAL_COMPLETE && !force) {
            uint64_t h = h_cur;
            if (!have_cur) NLSR_FORWARD(rb_current(R, f, &r, &h));
            NLSR_FAIL_IF(h != r.h_new, e, NLSR_E_MISMATCH,
                         "%s: bytes %" PRIu64 "..%" PRIu64 " changed after the realignment "
                         "finished; rolling back would overwrite those changes (nlsr rollback "
                         "--force writes the recorded originals anyway); nothing was restored",
                         f->path, r.off, r.off + r.len);
        }
        NLSR_FORWARD(rb_push(R, at));
        R->todo_bytes += r.len;
        at += r.total;
        i++;
    }
    NLSR_FAIL_IF(state == NLSR_JOURNAL_COMPLETE && !saw_end, e, NLSR_E_CHECKSUM,
                 "%s: the journal is marked complete but has no end record", R->path);
    return 0;
}

static int rb_write(rb *R, int verify)
{
    nlsr_err *e = &R->ctx->err;
    for (size_t k = 0; k < R->ntodo; k++) {
        rec r;
        const char *why = NULL;
        int rc = read_rec(R->ctx, R->fd, R->path, R->todo[k], R->jsize, &r, &why);
        rfile *f = NULL;
        if (rc == 0) NLSR_FORWARD(rb_file(R, &r, &f));
        if (verify) {
            /* Read back: the original bytes' checksum is all this needs. */
            NLSR_FAIL_IF(rc == 1, e, NLSR_E_CHECKSUM,
                         "%s: record %" PRIu64 " changed during rollback: %s", R->path, r.index,
                         why);
            NLSR_FORWARD(rc);
        } else {
            uint64_t h;
            if (rc == 0 && R->version >= 2 && r.type == REC_RANGE)
                NLSR_FORWARD(rb_current(R, f, &r, &h));
            if (rc == 0)
                rc = read_payload(R->ctx, R->fd, R->path, &r, R->version, R->cur.p, &R->cb,
                                  &R->pb, &R->ob, R->dctx, &why);
            NLSR_FAIL_IF(rc >= 1, e, NLSR_E_CHECKSUM,
                         "%s: record %" PRIu64 " changed during rollback: %s", R->path, r.index,
                         why);
            NLSR_FORWARD(rc);
        }
        if (!verify) {
            NLSR_FORWARD(d_pwrite(e, f->fd, R->ob.p, (size_t)r.len, r.off, f->path));
            R->ctx->bytes_written += r.len;
            nlsr_phase_add(R->ctx, r.len);
            nlsr_phase_units(R->ctx, 1);
            continue;
        }
        uint64_t h;
        NLSR_FORWARD(rb_current(R, f, &r, &h));
        nlsr_phase_add(R->ctx, r.len);
        nlsr_phase_units(R->ctx, 1);
        NLSR_FAIL_IF(h != r.h_orig, e, NLSR_E_CHECKSUM,
                     "%s: bytes %" PRIu64 "..%" PRIu64 " read back after rollback do not match "
                     "the journal's checksum of the originals",
                     f->path, r.off, r.off + r.len);
    }
    return 0;
}

int nlsr_journal_rollback(nlsr_ctx *ctx, const char *dir, int force, nlsr_journal_info *info)
{
    nlsr_err *e = &ctx->err;
    memset(info, 0, sizeof *info);
    rb R;
    memset(&R, 0, sizeof R);
    R.ctx = ctx;
    R.dir = dir;
    char *path = NULL;
    int rc = open_journal(ctx, dir, O_RDWR, &path, &R.fd);
    R.path = path;
    slot best;
    if (rc == 0 && R.fd >= 0) rc = read_head(ctx, R.fd, path, info, &best);
    if (rc < 0 || R.fd < 0 || info->state == NLSR_JOURNAL_TORN) goto done;
    R.jsize = info->file_size;
    R.version = info->version;
    R.follow = (info->flags & NLSR_JOURNAL_FLAG_LINKS) != 0;
    if (!(R.dctx = ZSTD_createDCtx())) {
        rc = nlsr_fail(e, -ENOMEM, "out of memory");
        goto done;
    }
    rc = rb_scan(&R, &best, info->state, force);
    if (rc < 0) goto done;
    /* From here on the checkpoint is being changed: a crash must not let a later run mistake
     * the half-restored files for a finished realignment. */
    if (info->state != NLSR_JOURNAL_ROLLING_BACK) {
        unsigned char s[SLOT_SIZE];
        uint64_t seq = best.seq + 1;
        fill_slot(s, seq, NLSR_JOURNAL_ROLLING_BACK, best.records, best.end, best.last, info->id);
        rc = d_pwrite(e, R.fd, s, SLOT_SIZE, slot_offset(seq), path);
        if (rc == 0) rc = d_fsync(e, R.fd, path);
        if (rc < 0) goto done;
    }
    /* Progress: the ranges restored, then read back and checked. */
    nlsr_phase_begin(ctx, "restore", NLSR_PHASE_OWN, R.todo_bytes, R.ntodo);
    rc = rb_write(&R, 0);
    for (size_t i = 0; i < R.nfiles && rc == 0; i++)
        rc = d_fsync(e, R.files[i].fd, R.files[i].path);
    if (rc == 0) {
        nlsr_phase_end(ctx);
        nlsr_phase_begin(ctx, "verify", NLSR_PHASE_OWN, R.todo_bytes, R.ntodo);
        rc = rb_write(&R, 1);
    }
    if (rc == 0) nlsr_phase_end(ctx);
    if (rc == 0) {
        info->restored_ranges = R.ntodo;
        for (size_t k = 0; k < R.ntodo; k++) {
            rec r;
            const char *why;
            if (read_rec(ctx, R.fd, path, R.todo[k], R.jsize, &r, &why) == 0)
                info->restored_bytes += r.len;
        }
    }
done:
    for (size_t i = 0; i < R.nfiles; i++) {
        if (R.files[i].fd >= 0) close(R.files[i].fd);
        free(R.files[i].name);
        free(R.files[i].path);
    }
    free(R.files);
    free(R.todo);
    rbuf_free(ctx, &R.cb);
    rbuf_free(ctx, &R.pb);
    rbuf_free(ctx, &R.ob);
    rbuf_free(ctx, &R.cur);
    ZSTD_freeDCtx(R.dctx);
    if (R.fd >= 0) close(R.fd);
    free(path);
    return rc;
}

int nlsr_journal_check_input(nlsr_ctx *ctx, const char *path)
{
    if (nlsr_is_dir(path) != 1) return 0;
    nlsr_journal_info ji;
    int rc = nlsr_journal_inspect(ctx, path, &ji);
    nlsr_journal_state s = ji.state;
    nlsr_journal_info_free(&ji);
    if (rc < 0) return NLSR_E_JOURNAL;
    /* A journal torn at its creation had changed nothing: the bytes are the original ones. */
    NLSR_FAIL_IF(s == NLSR_JOURNAL_WRITING || s == NLSR_JOURNAL_ROLLING_BACK, &ctx->err,
                 NLSR_E_JOURNAL,
                 "%s: an interrupted in-place %s left its tensors half patched: run 'nlsr "
                 "rollback %s' first",
                 path, s == NLSR_JOURNAL_ROLLING_BACK ? "rollback" : "realignment", path);
    return 0;
}
