/* SPDX-License-Identifier: Apache-2.0 */
/* The prepared-patches file: writer, validating reader, and the XXH64 both use. The format is
 * described byte by byte in docs/FORMAT.md and summarized in patchfile.h. */
#define _GNU_SOURCE
#include "patchfile.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "../common/dtype_table.h"
#include "file.h"
#include "outpath.h"

#define PF_MAGIC "NLSRPTCH"
#define PF_END_MAGIC "NLSRPEND"
#define PF_PREAMBLE 16u
#define PF_TRAILER 56u                /* u64 T, N, table XXH64, H, L, header XXH64, magic */
#define PF_REC 56u                    /* a block-table record: 7 x u64 */
#define PF_TCHUNK 512u                /* records per table read/write: 28 KiB, whatever the
                                       * model (a 405B patch has about 6.1 million blocks) */
#define PF_BLOCK_HEAD 24u              /* encoding byte, 7 zero bytes, u64 m, u64 mask bytes */
#define PF_MAX_HEADER 100000000ull     /* as for safetensors headers */
#define PF_ZSTD_LEVEL 3                /* the patch is written once per aligned model; level 3
                                        * keeps prepare I/O-bound, higher levels gain little
                                        * on mantissa bytes */
#define PF_MAX_SAFE 9007199254740992.0 /* 2^53: JSON numbers above are not exact */

enum { PF_ENC_DELTA = 0, PF_ENC_BITMAP = 1 };

/* ---- XXH64 ------------------------------------------------------------------------------- */

#define XP1 0x9E3779B185EBCA87ull
#define XP2 0xC2B2AE3D27D4EB4Full
#define XP3 0x165667B19E3779F9ull
#define XP4 0x85EBCA77C2B2AE63ull
#define XP5 0x27D4EB2F165667C5ull

static uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static uint64_t rd64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static void wr64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void wr32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
/* rd64 for the hash's inner loop: one load (little-endian hosts only, as the whole tool). */
static inline uint64_t ld64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
static uint64_t xround(uint64_t acc, uint64_t in)
{
    acc += in * XP2;
    acc = rotl64(acc, 31);
    return acc * XP1;
}
static uint64_t xmerge(uint64_t acc, uint64_t v)
{
    acc ^= xround(0, v);
    return acc * XP1 + XP4;
}

void nlsr_xxh64_init(nlsr_xxh64_state *s, uint64_t seed)
{
    memset(s, 0, sizeof *s);
    s->seed = seed;
    s->v[0] = seed + XP1 + XP2;
    s->v[1] = seed + XP2;
    s->v[2] = seed;
    s->v[3] = seed - XP1;
}

static void xstripe(nlsr_xxh64_state *s, const unsigned char *p)
{
    for (int i = 0; i < 4; i++) s->v[i] = xround(s->v[i], rd64(p + 8 * i));
}

void nlsr_xxh64_update(nlsr_xxh64_state *s, const void *data, size_t n)
{
    const unsigned char *p = data;
    s->total += n;
    if (s->nbuf) {
        size_t take = 32 - s->nbuf < n ? 32 - s->nbuf : n;
        memcpy(s->buf + s->nbuf, p, take);
        s->nbuf += take;
        p += take;
        n -= take;
        if (s->nbuf < 32) return;
        xstripe(s, s->buf);
        s->nbuf = 0;
    }
    if (n >= 32) {
        /* The lanes in locals (stores through s->v may alias the input bytes) and one load per
         * lane: about 1.5 GB/s otherwise. */
        uint64_t v0 = s->v[0], v1 = s->v[1], v2 = s->v[2], v3 = s->v[3];
        do {
            v0 = xround(v0, ld64(p));
            v1 = xround(v1, ld64(p + 8));
            v2 = xround(v2, ld64(p + 16));
            v3 = xround(v3, ld64(p + 24));
            p += 32;
            n -= 32;
        } while (n >= 32);
        s->v[0] = v0;
        s->v[1] = v1;
        s->v[2] = v2;
        s->v[3] = v3;
    }
    memcpy(s->buf, p, n);
    s->nbuf = n;
}

uint64_t nlsr_xxh64_digest(const nlsr_xxh64_state *s)
{
    uint64_t h;
    if (s->total >= 32) {
        h = rotl64(s->v[0], 1) + rotl64(s->v[1], 7) + rotl64(s->v[2], 12) + rotl64(s->v[3], 18);
        for (int i = 0; i < 4; i++) h = xmerge(h, s->v[i]);
    } else {
        h = s->seed + XP5;
    }
    h += s->total;
    const unsigned char *p = s->buf;
    size_t n = s->nbuf;
    while (n >= 8) {
        h ^= xround(0, rd64(p));
        h = rotl64(h, 27) * XP1 + XP4;
        p += 8;
        n -= 8;
    }
    if (n >= 4) {
        h ^= (uint64_t)rd32(p) * XP1;
        h = rotl64(h, 23) * XP2 + XP3;
        p += 4;
        n -= 4;
    }
    while (n > 0) {
        h ^= (uint64_t)*p * XP5;
        h = rotl64(h, 11) * XP1;
        p++;
        n--;
    }
    h ^= h >> 33;
    h *= XP2;
    h ^= h >> 29;
    h *= XP3;
    h ^= h >> 32;
    return h;
}

uint64_t nlsr_xxh64(const void *p, size_t n, uint64_t seed)
{
    nlsr_xxh64_state s;
    nlsr_xxh64_init(&s, seed);
    nlsr_xxh64_update(&s, p, n);
    return nlsr_xxh64_digest(&s);
}

/* ---- shared helpers ---------------------------------------------------------------------- */

/* Grows a budget-charged buffer to at least `need` bytes (contents not kept). */
static int grow(nlsr_ctx *ctx, unsigned char **buf, size_t *cap, size_t need, const char *what)
{
    if (need <= *cap && *buf) return 0;
    size_t ncap = need < 4096 ? 4096 : need;
    void *p = NULL;
    NLSR_FORWARD(nlsr_budget_alloc(&ctx->budget, ncap, what, &p, &ctx->err));
    nlsr_budget_free(&ctx->budget, *buf, *cap);
    *buf = p;
    *cap = ncap;
    return 0;
}

static void free_tensor(nlsr_pf_tensor *t)
{
    free(t->name);
    free(t->role);
}

static void rec_put(unsigned char *p, const nlsr_pf_block *b)
{
    const uint64_t v[7] = {b->first, b->count, b->mask_count, b->offset, b->csize, b->usize,
                           b->xxh};
    for (int i = 0; i < 7; i++) wr64(p + 8 * i, v[i]);
}

static void rec_get(const unsigned char *p, nlsr_pf_block *b)
{
    *b = (nlsr_pf_block){rd64(p), rd64(p + 8), rd64(p + 16), rd64(p + 24), rd64(p + 32),
                         rd64(p + 40), rd64(p + 48)};
}

static void free_modules(nlsr_pf_module *m, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < m[i].ntensors; k++) free_tensor(&m[i].t[k]);
        free(m[i].t);
        free(m[i].name);
    }
    free(m);
}

static size_t varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* Byte planes: byte j of every value together. Mantissa bytes are noise but sign/exponent
 * bytes are highly repetitive; separated, zstd finds that. */
static void to_planes(unsigned char *dst, const unsigned char *src, size_t m, size_t es)
{
    for (size_t j = 0; j < es; j++)
        for (size_t i = 0; i < m; i++) dst[j * m + i] = src[i * es + j];
}

static void from_planes(unsigned char *dst, const unsigned char *src, size_t m, size_t es)
{
    for (size_t j = 0; j < es; j++)
        for (size_t i = 0; i < m; i++) dst[i * es + j] = src[j * m + i];
}

/* ---- writer ------------------------------------------------------------------------------ */

struct nlsr_pf_writer {
    nlsr_ctx *ctx;
    char *path, *tmp;
    const char *kind;
    int fd;
    uint64_t pos;
    size_t nmod, capmod;
    nlsr_pf_module *mods;
    int in_module, in_tensor;
    uint64_t next_first;
    /* The block table is built in a nameless file beside the output (O_TMPFILE, or a temporary
     * name unlinked at once) through one chunk of records, and copied after the blocks on
     * commit: the writer's memory does not grow with the block count. */
    int tfd;
    unsigned char *rbuf;       /* PF_TCHUNK records, charged to the budget */
    size_t rn;                 /* records in rbuf */
    uint64_t nrec;             /* records written (flushed or in rbuf) */
    ZSTD_CCtx *cctx;
    unsigned char *ubuf, *cbuf;
    size_t ubuf_cap, cbuf_cap;
};

/* The writer's block-table file: nameless where the file system can (O_TMPFILE), else a
 * temporary name beside the output unlinked at once, so nothing is ever left behind. */
static int table_file(nlsr_err *e, const char *tmp, int *fd)
{
    char *dir = strdup(tmp), *slash = dir ? strrchr(dir, '/') : NULL;
    NLSR_FAIL_IF(!dir, e, -ENOMEM, "%s: out of memory", tmp);
    if (slash == dir) slash[1] = '\0';
    else if (slash) *slash = '\0';
    *fd = open(slash ? dir : ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    free(dir);
    if (*fd >= 0) return 0;
    size_t n = strlen(tmp) + 8;
    char *name = malloc(n), *t2 = NULL;
    NLSR_FAIL_IF(!name, e, -ENOMEM, "%s: out of memory", tmp);
    snprintf(name, n, "%s.table", tmp);
    int rc = nlsr_tmp_file(e, name, &t2, fd);
    if (rc == 0) unlink(t2);
    free(t2);
    free(name);
    return rc;
}

static int flush_table(nlsr_pf_writer *w)
{
    if (!w->rn) return 0;
    uint64_t at = (w->nrec - w->rn) * PF_REC;
    NLSR_FORWARD(nlsr_pwrite_all(w->tfd, w->rbuf, w->rn * PF_REC, at, w->tmp, &w->ctx->err));
    w->rn = 0;
    return 0;
}

int nlsr_pf_writer_open(nlsr_ctx *ctx, const char *path, const char *kind, nlsr_pf_writer **out)
{
    nlsr_err *e = &ctx->err;
    int rc = 0;
    nlsr_pf_writer *w = calloc(1, sizeof *w);
    NLSR_FAIL_IF(!w, e, -ENOMEM, "%s: out of memory", path);
    w->ctx = ctx;
    w->fd = -1;
    w->tfd = -1;
    w->kind = strcmp(kind, "lora") == 0 ? "lora" : "full";
    w->path = strdup(path);
    w->cctx = ZSTD_createCCtx();
    if (!w->path || !w->cctx) {
        rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_compressionLevel, PF_ZSTD_LEVEL);
    ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_checksumFlag, 1);
    ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_contentSizeFlag, 1);
    rc = nlsr_tmp_file(e, path, &w->tmp, &w->fd);
    if (rc == 0) rc = table_file(e, w->tmp, &w->tfd);
    if (rc == 0)
        rc = nlsr_budget_alloc(&ctx->budget, PF_TCHUNK * PF_REC, "patch block table chunk",
                               (void **)&w->rbuf, e);
    if (rc < 0) goto fail;
    unsigned char pre[PF_PREAMBLE];
    memcpy(pre, PF_MAGIC, 8);
    wr32(pre + 8, NLSR_PF_VERSION);
    wr32(pre + 12, 0);
    rc = nlsr_pwrite_all(w->fd, pre, sizeof pre, 0, w->tmp, e);
    if (rc < 0) goto fail;
    w->pos = PF_PREAMBLE;
    ctx->bytes_written += PF_PREAMBLE;
    *out = w;
    return 0;
fail:
    nlsr_pf_writer_abort(w);
    return rc;
}

void nlsr_pf_writer_abort(nlsr_pf_writer *w)
{
    if (!w) return;
    if (w->fd >= 0) close(w->fd);
    if (w->tmp && w->fd >= 0) unlink(w->tmp);
    if (w->tfd >= 0) close(w->tfd);
    nlsr_budget_free(&w->ctx->budget, w->rbuf, PF_TCHUNK * PF_REC);
    nlsr_budget_free(&w->ctx->budget, w->ubuf, w->ubuf_cap);
    nlsr_budget_free(&w->ctx->budget, w->cbuf, w->cbuf_cap);
    ZSTD_freeCCtx(w->cctx);
    free_modules(w->mods, w->nmod);
    free(w->tmp);
    free(w->path);
    free(w);
}

int nlsr_pf_writer_begin_module(nlsr_pf_writer *w, const char *name)
{
    nlsr_err *e = &w->ctx->err;
    NLSR_FAIL_IF(w->in_module, e, NLSR_E_USAGE, "%s: module '%s' begun inside another", w->path,
                 name);
    NLSR_FAIL_IF(w->nmod && strcmp(w->mods[w->nmod - 1].name, name) >= 0, e, NLSR_E_USAGE,
                 "%s: module '%s' out of module order", w->path, name);
    if (w->nmod == w->capmod) {
        size_t cap = w->capmod ? 2 * w->capmod : 64;
        nlsr_pf_module *m = realloc(w->mods, cap * sizeof *m);
        NLSR_FAIL_IF(!m, e, -ENOMEM, "%s: out of memory", w->path);
        w->mods = m;
        w->capmod = cap;
    }
    nlsr_pf_module *m = &w->mods[w->nmod];
    memset(m, 0, sizeof *m);
    m->name = strdup(name);
    m->t = calloc(2, sizeof *m->t);
    if (!m->name || !m->t) {
        free(m->name);
        free(m->t);
        return nlsr_fail(e, -ENOMEM, "%s: out of memory", w->path);
    }
    w->nmod++;
    w->in_module = 1;
    return 0;
}

int nlsr_pf_writer_begin_tensor(nlsr_pf_writer *w, const nlsr_pf_tensor_desc *d)
{
    nlsr_err *e = &w->ctx->err;
    NLSR_FAIL_IF(!w->in_module || w->in_tensor, e, NLSR_E_USAGE,
                 "%s: tensor '%s' outside a module", w->path, d->name);
    nlsr_pf_module *m = &w->mods[w->nmod - 1];
    NLSR_FAIL_IF(m->ntensors >= 2, e, NLSR_E_USAGE, "%s: module '%s' has more than 2 tensors",
                 w->path, m->name);
    NLSR_FAIL_IF(d->ndim < 0 || d->ndim > NLSR_PF_MAX_NDIM, e, NLSR_E_USAGE,
                 "%s: tensor '%s' has %d dimensions", w->path, d->name, d->ndim);
    nlsr_pf_tensor *t = &m->t[m->ntensors];
    memset(t, 0, sizeof *t);
    t->name = strdup(d->name);
    t->role = strdup(d->role);
    if (!t->name || !t->role) {
        free(t->name);
        free(t->role);
        return nlsr_fail(e, -ENOMEM, "%s: out of memory", w->path);
    }
    t->ref_dtype = d->ref_dtype;
    t->has_base = d->has_base;
    t->base_dtype = d->base_dtype;
    t->ndim = d->ndim;
    t->numel = 1;
    for (int i = 0; i < d->ndim; i++) {
        t->shape[i] = d->shape[i];
        t->numel *= d->shape[i];
    }
    m->ntensors++;
    w->in_tensor = 1;
    w->next_first = 0;
    return 0;
}

/* The block payload: head, mask (delta varints or bitmap, whichever is smaller), reference
 * values and base values as byte planes. */
static size_t build_payload(unsigned char *u, uint64_t first, uint64_t count,
                            const uint64_t *idx, size_t m, const void *ref, size_t rs,
                            const void *base, size_t bs, size_t delta_len, int enc)
{
    size_t bm_len = (size_t)((count + 7) / 8);
    size_t L = enc == PF_ENC_DELTA ? delta_len : bm_len;
    memset(u, 0, PF_BLOCK_HEAD);
    u[0] = (unsigned char)enc;
    wr64(u + 8, m);
    wr64(u + 16, L);
    unsigned char *p = u + PF_BLOCK_HEAD;
    if (enc == PF_ENC_DELTA) {
        uint64_t prev = first;
        for (size_t i = 0; i < m; i++) {
            /* The first index relative to the block start, then gaps minus one: indices are
             * strictly increasing, so a run of neighbours codes as zeros. */
            uint64_t v = i == 0 ? idx[0] - first : idx[i] - prev - 1;
            prev = idx[i];
            while (v >= 0x80) {
                *p++ = (unsigned char)(v | 0x80);
                v >>= 7;
            }
            *p++ = (unsigned char)v;
        }
    } else {
        memset(p, 0, bm_len);
        for (size_t i = 0; i < m; i++) {
            uint64_t j = idx[i] - first;
            p[j >> 3] |= (unsigned char)(1u << (j & 7));
        }
        p += bm_len;
    }
    to_planes(p, ref, m, rs);
    p += m * rs;
    if (base) {
        to_planes(p, base, m, bs);
        p += m * bs;
    }
    return (size_t)(p - u);
}

int nlsr_pf_writer_block(nlsr_pf_writer *w, uint64_t first, uint64_t count, const uint64_t *idx,
                         size_t m, const void *ref, const void *base)
{
    nlsr_ctx *ctx = w->ctx;
    nlsr_err *e = &ctx->err;
    NLSR_FAIL_IF(!w->in_tensor, e, NLSR_E_USAGE, "%s: block outside a tensor", w->path);
    nlsr_pf_module *mod = &w->mods[w->nmod - 1];
    nlsr_pf_tensor *t = &mod->t[mod->ntensors - 1];
    NLSR_FAIL_IF(first != w->next_first || count == 0 || count > NLSR_PF_MAX_BLOCK_ELEMS ||
                     count > t->numel - first || m > count || (t->has_base != (base != NULL)),
                 e, NLSR_E_USAGE, "%s: tensor '%s': bad block [%" PRIu64 ", +%" PRIu64 ")",
                 w->path, t->name, first, count);
    size_t delta_len = 0;
    for (size_t i = 0; i < m; i++) {
        NLSR_FAIL_IF(idx[i] < first || idx[i] >= first + count || (i && idx[i] <= idx[i - 1]), e,
                     NLSR_E_USAGE, "%s: tensor '%s': mask index %" PRIu64 " out of order",
                     w->path, t->name, idx[i]);
        delta_len += varint_len(i == 0 ? idx[0] - first : idx[i] - idx[i - 1] - 1);
    }
    size_t bm_len = (size_t)((count + 7) / 8);
    int enc = delta_len <= bm_len ? PF_ENC_DELTA : PF_ENC_BITMAP;
    size_t rs = nlsr_dtype_size(t->ref_dtype), bs = base ? nlsr_dtype_size(t->base_dtype) : 0;
    size_t usize = PF_BLOCK_HEAD + (enc == PF_ENC_DELTA ? delta_len : bm_len) + m * (rs + bs);
    NLSR_FORWARD(grow(ctx, &w->ubuf, &w->ubuf_cap, usize, "patch block buffer"));
    NLSR_FORWARD(grow(ctx, &w->cbuf, &w->cbuf_cap, ZSTD_compressBound(usize),
                      "patch compression buffer"));
    size_t got = build_payload(w->ubuf, first, count, idx, m, ref, rs, base, bs, delta_len, enc);
    if (got != usize) return nlsr_fail(e, NLSR_E_USAGE, "%s: payload size mismatch", w->path);
    size_t cs = ZSTD_compress2(w->cctx, w->cbuf, w->cbuf_cap, w->ubuf, usize);
    NLSR_FAIL_IF(ZSTD_isError(cs), e, NLSR_E_FORMAT, "%s: tensor '%s': zstd: %s", w->path,
                 t->name, ZSTD_getErrorName(cs));
    NLSR_FORWARD(nlsr_pwrite_all(w->fd, w->cbuf, cs, w->pos, w->tmp, e));
    if (t->nblocks == 0) t->blk0 = w->nrec;
    const nlsr_pf_block rec = {first, count, m, w->pos, cs, usize, nlsr_xxh64(w->cbuf, cs, 0)};
    rec_put(w->rbuf + w->rn * PF_REC, &rec);
    w->rn++;
    w->nrec++;
    if (w->rn == PF_TCHUNK) NLSR_FORWARD(flush_table(w));
    t->nblocks++;
    if (count > t->max_count) t->max_count = count;
    t->csize_total += cs;
    t->mask_count += m;
    w->pos += cs;
    ctx->bytes_written += cs;
    w->next_first = first + count;
    return 0;
}

int nlsr_pf_writer_end_tensor(nlsr_pf_writer *w)
{
    nlsr_err *e = &w->ctx->err;
    NLSR_FAIL_IF(!w->in_tensor, e, NLSR_E_USAGE, "%s: end of a tensor never begun", w->path);
    nlsr_pf_module *m = &w->mods[w->nmod - 1];
    nlsr_pf_tensor *t = &m->t[m->ntensors - 1];
    NLSR_FAIL_IF(w->next_first != t->numel, e, NLSR_E_USAGE,
                 "%s: tensor '%s': blocks cover %" PRIu64 " of %" PRIu64 " elements", w->path,
                 t->name, w->next_first, t->numel);
    w->in_tensor = 0;
    return 0;
}

int nlsr_pf_writer_end_module(nlsr_pf_writer *w)
{
    nlsr_err *e = &w->ctx->err;
    NLSR_FAIL_IF(!w->in_module || w->in_tensor || w->mods[w->nmod - 1].ntensors == 0, e,
                 NLSR_E_USAGE, "%s: module ended in a bad state", w->path);
    w->in_module = 0;
    return 0;
}

static cJSON *tensor_json(const nlsr_pf_tensor *t)
{
    cJSON *o = cJSON_CreateObject(), *shape;
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "name", t->name);
    cJSON_AddStringToObject(o, "role", t->role);
    cJSON_AddStringToObject(o, "dtype", nlsr_dtype_name(t->ref_dtype));
    if (t->has_base) cJSON_AddStringToObject(o, "base_dtype", nlsr_dtype_name(t->base_dtype));
    else cJSON_AddNullToObject(o, "base_dtype");
    if (!(shape = cJSON_AddArrayToObject(o, "shape"))) goto oom;
    for (int i = 0; i < t->ndim; i++)
        cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[i]));
    cJSON_AddNumberToObject(o, "numel", (double)t->numel);
    cJSON_AddNumberToObject(o, "mask_count", (double)t->mask_count);
    cJSON_AddNumberToObject(o, "nblocks", (double)t->nblocks);
    return o;
oom:
    cJSON_Delete(o);
    return NULL;
}

int nlsr_pf_writer_commit(nlsr_pf_writer *w, const cJSON *extra, uint64_t *file_bytes)
{
    nlsr_ctx *ctx = w->ctx;
    nlsr_err *e = &ctx->err;
    int rc = 0;
    char *txt = NULL;
    cJSON *root = cJSON_CreateObject(), *mods = NULL;
    if (w->in_module || w->in_tensor) {
        rc = nlsr_fail(e, NLSR_E_USAGE, "%s: committed inside a module", w->path);
        goto done;
    }
    if (!root) goto oom;
    cJSON_AddStringToObject(root, "format", "nlsr-patches");
    cJSON_AddNumberToObject(root, "version", NLSR_PF_VERSION);
    cJSON_AddStringToObject(root, "kind", w->kind);
    if (extra)
        for (const cJSON *it = extra->child; it; it = it->next) {
            cJSON *dup = cJSON_Duplicate(it, 1);
            if (!dup) goto oom;
            cJSON_AddItemToObject(root, it->string, dup);
        }
    if (!(mods = cJSON_AddArrayToObject(root, "modules"))) goto oom;
    for (size_t i = 0; i < w->nmod; i++) {
        cJSON *o = cJSON_CreateObject(), *ts;
        if (!o) goto oom;
        cJSON_AddItemToArray(mods, o);
        cJSON_AddStringToObject(o, "name", w->mods[i].name);
        if (!(ts = cJSON_AddArrayToObject(o, "tensors"))) goto oom;
        for (size_t k = 0; k < w->mods[i].ntensors; k++) {
            cJSON *t = tensor_json(&w->mods[i].t[k]);
            if (!t) goto oom;
            cJSON_AddItemToArray(ts, t);
        }
    }
    if (!(txt = cJSON_PrintUnformatted(root))) goto oom;
    size_t hlen = strlen(txt);
    /* The block table, copied from its side file chunk by chunk, hashed on the way. */
    rc = flush_table(w);
    if (rc < 0) goto done;
    nlsr_xxh64_state th;
    nlsr_xxh64_init(&th, 0);
    uint64_t toff = w->pos;
    for (uint64_t i = 0; i < w->nrec && rc == 0; i += PF_TCHUNK) {
        size_t k = (size_t)(w->nrec - i < PF_TCHUNK ? w->nrec - i : PF_TCHUNK);
        rc = nlsr_pread_all(w->tfd, w->rbuf, k * PF_REC, i * PF_REC, w->tmp, e);
        if (rc == 0) rc = nlsr_pwrite_all(w->fd, w->rbuf, k * PF_REC, w->pos, w->tmp, e);
        nlsr_xxh64_update(&th, w->rbuf, k * PF_REC);
        w->pos += k * PF_REC;
    }
    if (rc < 0) goto done;
    ctx->bytes_written += w->nrec * PF_REC;
    unsigned char tr[PF_TRAILER];
    wr64(tr, toff);
    wr64(tr + 8, w->nrec);
    wr64(tr + 16, nlsr_xxh64_digest(&th));
    wr64(tr + 24, w->pos);
    wr64(tr + 32, hlen);
    wr64(tr + 40, nlsr_xxh64(txt, hlen, 0));
    memcpy(tr + 48, PF_END_MAGIC, 8);
    rc = nlsr_pwrite_all(w->fd, txt, hlen, w->pos, w->tmp, e);
    if (rc == 0) rc = nlsr_pwrite_all(w->fd, tr, sizeof tr, w->pos + hlen, w->tmp, e);
    if (rc < 0) goto done;
    ctx->bytes_written += hlen + sizeof tr;
    if (fsync(w->fd) != 0) {
        rc = -errno;
        nlsr_fail(e, rc, "%s: fsync failed: %s", w->tmp, strerror(-rc));
        goto done;
    }
    close(w->fd);
    w->fd = -1;
    /* The job checked the destination (outpath.h); only a regular file is ever replaced. */
    rc = nlsr_tmp_file_commit(e, w->tmp, w->path, 1);
    if (rc < 0) {
        unlink(w->tmp);
        goto done;
    }
    if (file_bytes) *file_bytes = w->pos + hlen + sizeof tr;
    goto done;
oom:
    rc = nlsr_fail(e, -ENOMEM, "%s: out of memory building the header", w->path);
done:
    free(txt);
    cJSON_Delete(root);
    nlsr_pf_writer_abort(w);
    return rc;
}

/* ---- reader ------------------------------------------------------------------------------ */

/* The one member named `key`; NULL if absent or (a damaged or hostile header) duplicated. */
static const cJSON *get1(const cJSON *o, const char *key, int *dup)
{
    const cJSON *hit = NULL;
    for (const cJSON *it = o ? o->child : NULL; it; it = it->next)
        if (it->string && strcmp(it->string, key) == 0) {
            if (hit) *dup = 1;
            hit = it;
        }
    return hit;
}

/* A JSON number that is an exact non-negative integer below 2^53. */
static int get_u64(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0) || d >= PF_MAX_SAFE || d != (double)(uint64_t)d) return 0;
    *out = (uint64_t)d;
    return 1;
}

static int parse_tensor(const cJSON *o, int is_lora, size_t k, nlsr_pf_tensor *t,
                        const char *path, nlsr_err *e)
{
    int dup = 0;
    const cJSON *name = get1(o, "name", &dup), *role = get1(o, "role", &dup),
                *dt = get1(o, "dtype", &dup), *bdt = get1(o, "base_dtype", &dup),
                *shape = get1(o, "shape", &dup), *numel = get1(o, "numel", &dup),
                *mc = get1(o, "mask_count", &dup), *nblocks = get1(o, "nblocks", &dup);
    NLSR_FAIL_IF(dup || !cJSON_IsObject(o) || !cJSON_IsString(name) || !cJSON_IsString(role) ||
                     !cJSON_IsString(dt) || !(cJSON_IsString(bdt) || cJSON_IsNull(bdt)) ||
                     !cJSON_IsArray(shape) || !cJSON_IsNumber(nblocks),
                 e, NLSR_E_FORMAT, "%s: malformed tensor record in the header", path);
    const char *want = !is_lora ? "weight" : k == 0 ? "lora_A" : "lora_B";
    NLSR_FAIL_IF(strcmp(role->valuestring, want) != 0, e, NLSR_E_FORMAT,
                 "%s: tensor '%.200s' has role '%.20s', expected '%s'", path, name->valuestring,
                 role->valuestring, want);
    t->name = strdup(name->valuestring);
    t->role = strdup(role->valuestring);
    NLSR_FAIL_IF(!t->name || !t->role, e, -ENOMEM, "%s: out of memory", path);
    int d = nlsr_dtype_from_name(dt->valuestring);
    NLSR_FAIL_IF(d < 0 || !nlsr_dtype_is_float((nlsr_dtype)d), e, NLSR_E_FORMAT,
                 "%s: tensor '%.200s': dtype '%.20s' is not a float dtype", path, t->name,
                 dt->valuestring);
    t->ref_dtype = (nlsr_dtype)d;
    if (cJSON_IsString(bdt)) {
        d = nlsr_dtype_from_name(bdt->valuestring);
        NLSR_FAIL_IF(d < 0 || !nlsr_dtype_is_float((nlsr_dtype)d), e, NLSR_E_FORMAT,
                     "%s: tensor '%.200s': base dtype '%.20s' is not a float dtype", path,
                     t->name, bdt->valuestring);
        t->has_base = 1;
        t->base_dtype = (nlsr_dtype)d;
    }
    int nd = cJSON_GetArraySize(shape);
    NLSR_FAIL_IF(nd > NLSR_PF_MAX_NDIM, e, NLSR_E_FORMAT, "%s: tensor '%.200s': %d dimensions",
                 path, t->name, nd);
    t->ndim = nd;
    uint64_t prod = 1;
    int i = 0;
    for (const cJSON *it = shape->child; it; it = it->next, i++) {
        NLSR_FAIL_IF(!get_u64(it, &t->shape[i]), e, NLSR_E_FORMAT,
                     "%s: tensor '%.200s': bad shape entry", path, t->name);
        NLSR_FAIL_IF(t->shape[i] && prod > (uint64_t)PF_MAX_SAFE / t->shape[i], e, NLSR_E_FORMAT,
                     "%s: tensor '%.200s': shape product overflows", path, t->name);
        prod *= t->shape[i];
    }
    NLSR_FAIL_IF(!get_u64(numel, &t->numel) || t->numel != prod || !get_u64(mc, &t->mask_count) ||
                     t->mask_count > t->numel,
                 e, NLSR_E_FORMAT, "%s: tensor '%.200s': numel or mask_count inconsistent", path,
                 t->name);
    uint64_t nb = 0;
    NLSR_FAIL_IF(!get_u64(nblocks, &nb) || (t->numel && nb == 0) || nb > t->numel ||
                     nb > (uint64_t)SIZE_MAX,
                 e, NLSR_E_FORMAT, "%s: tensor '%.200s': bad nblocks", path, t->name);
    t->nblocks = (size_t)nb;
    return 0;
}

/* Block b of tensor t against the rules that need no neighbour: its range inside the tensor,
 * its sizes, its frame inside the blocks' region [16, T). */
static int check_rec(const char *path, const nlsr_pf_tensor *t, size_t bi, const nlsr_pf_block *b,
                     uint64_t table_off, nlsr_err *e)
{
    size_t rs = nlsr_dtype_size(t->ref_dtype), bs = t->has_base ? nlsr_dtype_size(t->base_dtype) : 0;
    uint64_t maxmask = (b->count + 7) / 8 > 10 * b->mask_count ? (b->count + 7) / 8
                                                               : 10 * b->mask_count;
    NLSR_FAIL_IF(b->count == 0 || b->count > NLSR_PF_MAX_BLOCK_ELEMS || b->first > t->numel ||
                     b->count > t->numel - b->first || b->mask_count > b->count ||
                     b->usize < PF_BLOCK_HEAD + b->mask_count * (rs + bs) ||
                     b->usize > PF_BLOCK_HEAD + maxmask + b->mask_count * (rs + bs) ||
                     b->csize == 0 || b->csize > ZSTD_compressBound((size_t)b->usize) ||
                     b->offset < PF_PREAMBLE || b->offset > table_off ||
                     b->csize > table_off - b->offset,
                 e, NLSR_E_FORMAT,
                 "%s: tensor '%.200s': block %zu is inconsistent with the file layout", path,
                 t->name, bi);
    return 0;
}

/* The block table's chunk cache, behind a pointer so that lookups through a const reader
 * (the fingerprint, the jobs' const views) can refill it. */
struct nlsr_pf_tcache {
    unsigned char *buf;        /* PF_TCHUNK records, charged to the budget */
    uint64_t lo, n;            /* records [lo, lo + n) are in buf */
};

static int table_load(const nlsr_pf_reader *r, uint64_t rec)
{
    struct nlsr_pf_tcache *c = r->tc;
    if (rec >= c->lo && rec < c->lo + c->n) return 0;
    uint64_t k = r->nrecords - rec < PF_TCHUNK ? r->nrecords - rec : PF_TCHUNK;
    c->n = 0;
    NLSR_FORWARD(nlsr_pread_all(r->fd, c->buf, (size_t)(k * PF_REC), r->table_off + rec * PF_REC,
                                r->path, &r->ctx->err));
    r->ctx->bytes_read += k * PF_REC;
    c->lo = rec;
    c->n = k;
    return 0;
}

int nlsr_pf_block_get(const nlsr_pf_reader *r, const nlsr_pf_tensor *t, size_t b,
                      nlsr_pf_block *out)
{
    nlsr_err *e = &r->ctx->err;
    NLSR_FAIL_IF(b >= t->nblocks || t->blk0 + b >= r->nrecords, e, NLSR_E_USAGE,
                 "%s: tensor '%.200s' has no block %zu", r->path, t->name, b);
    uint64_t rec = t->blk0 + b;
    NLSR_FORWARD(table_load(r, rec));
    rec_get(r->tc->buf + (rec - r->tc->lo) * PF_REC, out);
    int rc = check_rec(r->path, t, b, out, r->table_off, e);
    /* Checked whole on open: a record that breaks a rule now was changed since. */
    if (rc < 0)
        return nlsr_fail(e, NLSR_E_CHECKSUM, "%s: block table changed since it was opened (tensor '%.200s' block %zu)",
                         r->path, t->name, b);
    return 0;
}

/* The whole table, streamed through the chunk twice: its checksum first (so that damage is
 * reported as damage), then every rule, tensor by tensor: the blocks of each tensor partition
 * it in order and the frames tile [16, T) in table order. */
static int check_table(nlsr_pf_reader *r, uint64_t want_xxh)
{
    nlsr_err *e = &r->ctx->err;
    nlsr_xxh64_state h;
    nlsr_xxh64_init(&h, 0);
    for (uint64_t i = 0; i < r->nrecords; i += PF_TCHUNK) {
        NLSR_FORWARD(table_load(r, i));
        nlsr_xxh64_update(&h, r->tc->buf, (size_t)(r->tc->n * PF_REC));
    }
    NLSR_FAIL_IF(nlsr_xxh64_digest(&h) != want_xxh, e, NLSR_E_CHECKSUM,
                 "%s: block table checksum mismatch (damaged file)", r->path);
    uint64_t pos = PF_PREAMBLE;
    for (size_t i = 0; i < r->nmodules; i++)
        for (size_t k = 0; k < r->modules[i].ntensors; k++) {
            const nlsr_pf_tensor *t = &r->modules[i].t[k];
            uint64_t first = 0, masked = 0, maxc = 0, csum = 0;
            for (size_t b = 0; b < t->nblocks; b++) {
                nlsr_pf_block blk;
                uint64_t rec = t->blk0 + b;
                NLSR_FORWARD(table_load(r, rec));
                rec_get(r->tc->buf + (rec - r->tc->lo) * PF_REC, &blk);
                NLSR_FORWARD(check_rec(r->path, t, b, &blk, r->table_off, e));
                NLSR_FAIL_IF(blk.first != first || blk.offset != pos, e, NLSR_E_FORMAT,
                             "%s: tensor '%.200s': block %zu is inconsistent with the file "
                             "layout",
                             r->path, t->name, b);
                pos += blk.csize;
                first += blk.count;
                masked += blk.mask_count;
                if (blk.count > maxc) maxc = blk.count;
                csum += blk.csize;
            }
            NLSR_FAIL_IF(first != t->numel || masked != t->mask_count, e, NLSR_E_FORMAT,
                         "%s: tensor '%.200s': blocks cover %" PRIu64 " of %" PRIu64
                         " elements with %" PRIu64 " of %" PRIu64 " masked",
                         r->path, t->name, first, t->numel, masked, t->mask_count);
            r->modules[i].t[k].max_count = maxc;
            r->modules[i].t[k].csize_total = csum;
        }
    NLSR_FAIL_IF(pos != r->table_off, e, NLSR_E_FORMAT,
                 "%s: blocks end at %" PRIu64 " but the block table starts at %" PRIu64, r->path,
                 pos, r->table_off);
    return 0;
}

static int parse_header(nlsr_pf_reader *r, nlsr_err *e)
{
    const char *path = r->path;
    int dup = 0;
    const cJSON *h = r->header;
    const cJSON *fmt = get1(h, "format", &dup), *ver = get1(h, "version", &dup),
                *kind = get1(h, "kind", &dup), *mods = get1(h, "modules", &dup);
    uint64_t v = 0;
    NLSR_FAIL_IF(dup || !cJSON_IsString(fmt) || strcmp(fmt->valuestring, "nlsr-patches") != 0 ||
                     !get_u64(ver, &v) || v != NLSR_PF_VERSION || !cJSON_IsString(kind) ||
                     (strcmp(kind->valuestring, "full") != 0 &&
                      strcmp(kind->valuestring, "lora") != 0) ||
                     !cJSON_IsArray(mods),
                 e, NLSR_E_FORMAT, "%s: header lacks format, version, kind or modules", path);
    r->kind = kind->valuestring;
    int is_lora = strcmp(r->kind, "lora") == 0;
    size_t n = (size_t)cJSON_GetArraySize(mods);
    /* The module records (a few hundred bytes each, for the module count: 560 at 70B, none
     * per block) are charged with the header, which stays parsed for the jobs' own fields. */
    uint64_t need = n * (sizeof *r->modules + 2 * sizeof(nlsr_pf_tensor) + 256);
    NLSR_FORWARD(nlsr_budget_charge(&r->ctx->budget, need, "patch module records", e));
    r->dir_charged += need;
    r->modules = calloc(n ? n : 1, sizeof *r->modules);
    NLSR_FAIL_IF(!r->modules, e, -ENOMEM, "%s: out of memory", path);
    uint64_t blk = 0;
    for (const cJSON *it = mods->child; it; it = it->next) {
        nlsr_pf_module *m = &r->modules[r->nmodules];
        const cJSON *name = get1(it, "name", &dup), *ts = get1(it, "tensors", &dup);
        NLSR_FAIL_IF(dup || !cJSON_IsString(name) || !cJSON_IsArray(ts), e, NLSR_E_FORMAT,
                     "%s: malformed module record %zu", path, r->nmodules);
        NLSR_FAIL_IF(r->nmodules &&
                         strcmp(r->modules[r->nmodules - 1].name, name->valuestring) >= 0,
                     e, NLSR_E_FORMAT, "%s: module '%.200s' out of module order", path,
                     name->valuestring);
        int nt = cJSON_GetArraySize(ts);
        NLSR_FAIL_IF(nt != (is_lora ? 2 : 1), e, NLSR_E_FORMAT,
                     "%s: module '%.200s' has %d tensors", path, name->valuestring, nt);
        m->name = strdup(name->valuestring);
        m->t = calloc(2, sizeof *m->t);
        NLSR_FAIL_IF(!m->name || !m->t, e, -ENOMEM, "%s: out of memory", path);
        r->nmodules++;
        size_t k = 0;
        for (const cJSON *t = ts->child; t; t = t->next, k++) {
            m->ntensors++;
            NLSR_FORWARD(parse_tensor(t, is_lora, k, &m->t[k], path, e));
            m->t[k].blk0 = blk;
            NLSR_FAIL_IF(m->t[k].nblocks > r->nrecords - blk, e, NLSR_E_FORMAT,
                         "%s: tensor '%.200s': more blocks than the block table holds", path,
                         m->t[k].name);
            blk += m->t[k].nblocks;
        }
    }
    NLSR_FAIL_IF(blk != r->nrecords, e, NLSR_E_FORMAT,
                 "%s: the header lists %" PRIu64 " blocks but the block table holds %" PRIu64,
                 path, blk, r->nrecords);
    return 0;
}

int nlsr_pf_open(nlsr_ctx *ctx, const char *path, nlsr_pf_reader **out)
{
    nlsr_err *e = &ctx->err;
    int rc = 0;
    char *txt = NULL;
    uint64_t txt_charged = 0;
    nlsr_pf_reader *r = calloc(1, sizeof *r);
    NLSR_FAIL_IF(!r, e, -ENOMEM, "%s: out of memory", path);
    r->ctx = ctx;
    r->fd = -1;
    if (!(r->path = strdup(path))) {
        rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    if (access(path, F_OK) != 0 && errno == ENOENT) {
        rc = nlsr_fail(e, NLSR_E_NOTFOUND, "%s: cannot open patch file: %s", path,
                       strerror(ENOENT));
        goto fail;
    }
    rc = nlsr_open_regular(e, path, O_RDONLY, 1, &r->fd);
    if (rc < 0) goto fail;
    off_t end = lseek(r->fd, 0, SEEK_END);
    if (end < 0) {
        rc = -errno;
        nlsr_fail(e, rc, "%s: cannot seek: %s", path, strerror(-rc));
        goto fail;
    }
    r->file_size = (uint64_t)end;
    if (r->file_size < PF_PREAMBLE + PF_TRAILER) {
        rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: %" PRIu64 " bytes, too short for a patch file",
                       path, r->file_size);
        goto fail;
    }
    unsigned char pre[PF_PREAMBLE], tr[PF_TRAILER];
    rc = nlsr_pread_all(r->fd, pre, sizeof pre, 0, path, e);
    if (rc == 0) rc = nlsr_pread_all(r->fd, tr, sizeof tr, r->file_size - PF_TRAILER, path, e);
    if (rc < 0) goto fail;
    if (memcmp(pre, PF_MAGIC, 8) != 0) {
        rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: not an nlsr patch file (bad magic)", path);
        goto fail;
    }
    if (rd32(pre + 8) != NLSR_PF_VERSION || rd32(pre + 12) != 0) {
        uint32_t v = rd32(pre + 8);
        if (v < NLSR_PF_VERSION && rd32(pre + 12) == 0)
            rc = nlsr_fail(e, NLSR_E_FORMAT,
                           "%s: patch file format version %u is from an older nlsr: prepare it "
                           "again (this nlsr reads version %u)",
                           path, v, NLSR_PF_VERSION);
        else
            rc = nlsr_fail(e, NLSR_E_FORMAT,
                           "%s: patch file format version %u not supported (this nlsr reads "
                           "version %u)",
                           path, v, NLSR_PF_VERSION);
        goto fail;
    }
    uint64_t toff = rd64(tr), nrec = rd64(tr + 8), txxh = rd64(tr + 16), hoff = rd64(tr + 24),
             hlen = rd64(tr + 32), hxxh = rd64(tr + 40);
    if (memcmp(tr + 48, PF_END_MAGIC, 8) != 0 || hlen > PF_MAX_HEADER || toff < PF_PREAMBLE ||
        hoff > r->file_size || hlen != r->file_size - PF_TRAILER - hoff || toff > hoff ||
        nrec != (hoff - toff) / PF_REC || (hoff - toff) % PF_REC != 0) {
        rc = nlsr_fail(e, NLSR_E_CHECKSUM,
                       "%s: damaged or truncated patch file (trailer inconsistent)", path);
        goto fail;
    }
    r->table_off = toff;
    r->nrecords = nrec;
    /* The header text while it is parsed, and its parsed tree (cJSON takes up to 8 bytes of
     * tree per byte of compact JSON) for as long as the file is open. */
    rc = nlsr_budget_charge(&ctx->budget, hlen + 1, "patch header text", e);
    if (rc < 0) goto fail;
    txt_charged = hlen + 1;
    rc = nlsr_budget_charge(&ctx->budget, 8 * hlen, "patch header", e);
    if (rc < 0) goto fail;
    r->dir_charged += 8 * hlen;
    if (!(txt = malloc(hlen + 1))) {
        rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    rc = nlsr_pread_all(r->fd, txt, (size_t)hlen, hoff, path, e);
    if (rc < 0) goto fail;
    ctx->bytes_read += PF_PREAMBLE + PF_TRAILER + hlen;
    if (nlsr_xxh64(txt, (size_t)hlen, 0) != hxxh) {
        rc = nlsr_fail(e, NLSR_E_CHECKSUM, "%s: header checksum mismatch (damaged file)", path);
        goto fail;
    }
    txt[hlen] = '\0';
    r->header = cJSON_ParseWithLengthOpts(txt, (size_t)hlen, NULL, 0);
    free(txt);
    txt = NULL;
    nlsr_budget_release(&ctx->budget, txt_charged);
    txt_charged = 0;
    if (!r->header || !cJSON_IsObject(r->header)) {
        rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: header is not a JSON object", path);
        goto fail;
    }
    rc = parse_header(r, e);
    if (rc < 0) goto fail;
    if (!(r->tc = calloc(1, sizeof *r->tc))) {
        rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    rc = nlsr_budget_alloc(&ctx->budget, PF_TCHUNK * PF_REC, "patch block table chunk",
                           (void **)&r->tc->buf, e);
    if (rc == 0) rc = check_table(r, txxh);
    if (rc < 0) goto fail;
    if (!(r->dctx = ZSTD_createDCtx())) {
        rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    *out = r;
    return 0;
fail:
    free(txt);
    nlsr_budget_release(&ctx->budget, txt_charged);
    nlsr_pf_close(r);
    return rc;
}

void nlsr_pf_close(nlsr_pf_reader *r)
{
    if (!r) return;
    if (r->fd >= 0) close(r->fd);
    nlsr_budget *b = &r->ctx->budget;
    nlsr_budget_free(b, r->cbuf, r->cbuf_cap);
    nlsr_budget_free(b, r->ubuf, r->ubuf_cap);
    nlsr_budget_free(b, r->idx, r->val_cap * 8);
    nlsr_budget_free(b, r->ref, r->val_cap * 8);
    nlsr_budget_free(b, r->base, r->val_cap * 8);
    ZSTD_freeDCtx(r->dctx);
    if (r->tc) nlsr_budget_free(b, r->tc->buf, PF_TCHUNK * PF_REC);
    free(r->tc);
    nlsr_budget_release(b, r->dir_charged);
    free_modules(r->modules, r->nmodules);
    cJSON_Delete(r->header);
    free(r->path);
    free(r);
}

long nlsr_pf_find(const nlsr_pf_reader *r, const char *name)
{
    size_t lo = 0, hi = r->nmodules;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(r->modules[mid].name, name);
        if (c == 0) return (long)mid;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

/* The value arrays hold up to 8-byte elements so that one capacity serves every dtype. */
static int grow_vals(nlsr_pf_reader *r, size_t m)
{
    if (m <= r->val_cap && r->idx) return 0;
    nlsr_ctx *ctx = r->ctx;
    nlsr_budget *b = &ctx->budget;
    nlsr_budget_free(b, r->idx, r->val_cap * 8);
    nlsr_budget_free(b, r->ref, r->val_cap * 8);
    nlsr_budget_free(b, r->base, r->val_cap * 8);
    r->idx = NULL;
    r->ref = r->base = NULL;
    r->val_cap = 0;
    size_t cap = m < 1024 ? 1024 : m;
    void *a = NULL, *c = NULL, *d = NULL;
    int rc = nlsr_budget_alloc(b, cap * 8, "patch mask indices", &a, &ctx->err);
    if (rc == 0) rc = nlsr_budget_alloc(b, cap * 8, "patch reference values", &c, &ctx->err);
    if (rc == 0) rc = nlsr_budget_alloc(b, cap * 8, "patch base values", &d, &ctx->err);
    if (rc < 0) {
        nlsr_budget_free(b, a, a ? cap * 8 : 0);
        nlsr_budget_free(b, c, c ? cap * 8 : 0);
        return rc;
    }
    r->idx = a;
    r->ref = c;
    r->base = d;
    r->val_cap = cap;
    return 0;
}

int nlsr_pf_read_block(nlsr_pf_reader *r, const nlsr_pf_tensor *t, size_t bi, nlsr_pf_view *v)
{
    nlsr_ctx *ctx = r->ctx;
    nlsr_err *e = &ctx->err;
    nlsr_pf_block blk;
    NLSR_FORWARD(nlsr_pf_block_get(r, t, bi, &blk));
    const nlsr_pf_block *b = &blk;
    NLSR_FORWARD(grow(ctx, &r->cbuf, &r->cbuf_cap, (size_t)b->csize, "patch read buffer"));
    NLSR_FORWARD(grow(ctx, &r->ubuf, &r->ubuf_cap, (size_t)b->usize, "patch block buffer"));
    NLSR_FORWARD(grow_vals(r, (size_t)b->mask_count));
    NLSR_FORWARD(nlsr_pread_all(r->fd, r->cbuf, (size_t)b->csize, b->offset, r->path, e));
    ctx->bytes_read += b->csize;
    NLSR_FAIL_IF(nlsr_xxh64(r->cbuf, (size_t)b->csize, 0) != b->xxh, e, NLSR_E_CHECKSUM,
                 "%s: tensor '%.200s' block %zu (offset %" PRIu64
                 "): checksum mismatch (damaged file)",
                 r->path, t->name, bi, b->offset);
    if (ctx->read_tap) ctx->read_tap(ctx, r->fd, b->offset, r->cbuf, (size_t)b->csize);
    size_t got = ZSTD_decompressDCtx(r->dctx, r->ubuf, (size_t)b->usize, r->cbuf, (size_t)b->csize);
    if (ZSTD_isError(got))
        return nlsr_fail(e,
                         ZSTD_getErrorCode(got) == ZSTD_error_checksum_wrong ? NLSR_E_CHECKSUM
                                                                             : NLSR_E_FORMAT,
                         "%s: tensor '%.200s' block %zu: zstd: %s", r->path, t->name, bi,
                         ZSTD_getErrorName(got));
    const unsigned char *u = r->ubuf;
    size_t rs = nlsr_dtype_size(t->ref_dtype), bs = t->has_base ? nlsr_dtype_size(t->base_dtype) : 0;
    uint64_t m = rd64(u + 8), L = rd64(u + 16);
    int zero = 1;
    for (int i = 1; i < 8; i++) zero &= u[i] == 0;
    NLSR_FAIL_IF(got != b->usize || !zero || u[0] > PF_ENC_BITMAP || m != b->mask_count ||
                     L > b->usize - PF_BLOCK_HEAD ||
                     b->usize - PF_BLOCK_HEAD - L != m * (rs + bs),
                 e, NLSR_E_FORMAT, "%s: tensor '%.200s' block %zu: payload inconsistent", r->path,
                 t->name, bi);
    const unsigned char *p = u + PF_BLOCK_HEAD, *pend = p + L;
    uint64_t end = b->first + b->count;
    if (u[0] == PF_ENC_DELTA) {
        uint64_t prev = 0;
        for (uint64_t i = 0; i < m; i++) {
            uint64_t val = 0;
            int shift = 0;
            for (;;) {
                NLSR_FAIL_IF(p >= pend || shift > 63, e, NLSR_E_FORMAT,
                             "%s: tensor '%.200s' block %zu: bad mask index coding", r->path,
                             t->name, bi);
                val |= (uint64_t)(*p & 0x7f) << shift;
                shift += 7;
                if (!(*p++ & 0x80)) break;
            }
            uint64_t base = i == 0 ? b->first : prev + 1;
            NLSR_FAIL_IF(val >= end - base, e, NLSR_E_FORMAT,
                         "%s: tensor '%.200s' block %zu: mask index out of range", r->path,
                         t->name, bi);
            prev = base + val;
            r->idx[i] = prev;
        }
        NLSR_FAIL_IF(p != pend, e, NLSR_E_FORMAT,
                     "%s: tensor '%.200s' block %zu: trailing mask bytes", r->path, t->name, bi);
    } else {
        NLSR_FAIL_IF(L != (b->count + 7) / 8, e, NLSR_E_FORMAT,
                     "%s: tensor '%.200s' block %zu: bitmap size wrong", r->path, t->name, bi);
        uint64_t k = 0;
        for (uint64_t j = 0; j < b->count; j++)
            if (p[j >> 3] >> (j & 7) & 1) {
                NLSR_FAIL_IF(k >= m, e, NLSR_E_FORMAT,
                             "%s: tensor '%.200s' block %zu: bitmap holds too many bits",
                             r->path, t->name, bi);
                r->idx[k++] = b->first + j;
            }
        int clean = k == m;
        for (uint64_t j = b->count; j < L * 8; j++) clean &= !(p[j >> 3] >> (j & 7) & 1);
        NLSR_FAIL_IF(!clean, e, NLSR_E_FORMAT, "%s: tensor '%.200s' block %zu: bitmap inconsistent",
                     r->path, t->name, bi);
        p = pend;
    }
    from_planes(r->ref, p, (size_t)m, rs);
    p += m * rs;
    if (bs) from_planes(r->base, p, (size_t)m, bs);
    v->m = (size_t)m;
    v->idx = r->idx;
    v->ref = r->ref;
    v->base = bs ? r->base : NULL;
    return 0;
}
