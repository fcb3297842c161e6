/* SPDX-License-Identifier: Apache-2.0 */
/* The time model of a plan (timing.h): the calibration of the compute kernels and the
 * arithmetic that turns a plan's bytes and compute into seconds. */
#define _GNU_SOURCE
#include "timing.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

#include "../common/log.h"
#include "../compute/convert.h"
#include "../compute/kth.h"
#include "../compute/mask.h"
#include "../compute/reference.h"
#include "../compute/similarity.h"
#include "../io/checkpoint.h"
#include "../io/journal.h"
#include "../io/patchfile.h"
#include "progress.h"
#include "targets.h"

/* The engine's chunk (realign_run.c CH): the kernels run on this many elements at a time, so
 * their staging stays in the L2 cache, as in the job. */
#define CH 4096u
/* Past the caches, as real modules (tens to hundreds of MiB) are. */
#define DEFAULT_ELEMS (4ull << 20)
#define MIN_ELEMS (256ull << 10)
/* Phase B of run --out: the share of the shorter of its reads and its (page-cache, written
 * back) writes hidden under the longer. Fit to quiet-machine runs of llama-8b with 8 layers
 * (phase B 6.9 and 9.8 s against reads 5.1-5.8 s and writes 4.1-4.9 s at the rates measured
 * beside them: between the max and the sum). */
#define WRITE_OVERLAP 0.5
/* realign_run.c: a module is split into two lanes from 4 chunks on. */
#define LANE_MIN (4ull * CH)

/* ---- calibration ------------------------------------------------------------------------ */

typedef struct cal_lane {
    const unsigned char *a, *b, *t;
    uint64_t lo, hi;
    int pass;                /* 1: histogram, 2: candidates */
    uint32_t bucket;
    float *fs;
    uint64_t *hist;
    float *cands;
    uint64_t got;
} cal_lane;

static void cal_lane_run(cal_lane *L)
{
    L->got = 0;
    if (L->pass == 1) memset(L->hist, 0, NLSR_KTH_BUCKETS * sizeof *L->hist);
    for (uint64_t at = L->lo; at < L->hi; at += CH) {
        size_t cnt = (size_t)(L->hi - at < CH ? L->hi - at : CH);
        (void)nlsr_score_bf16(L->a + at * 2, L->b + at * 2, 0.9f, L->fs, cnt);
        if (L->pass == 1) {
            (void)nlsr_any_nonfinite_raw(NLSR_DTYPE_BF16, L->t + at * 2, cnt);
            nlsr_kth_hist_add(L->hist, L->fs, cnt);
        } else {
            L->got += nlsr_bucket_collect(L->fs, cnt, L->bucket, L->cands ? L->cands + L->got
                                                                           : NULL);
        }
    }
}

static void *cal_lane_thread(void *arg)
{
    cal_lane_run(arg);
    return NULL;
}

/* Seconds of one pass over [0, n) on `lanes` threads (halves split as the engine splits them). */
static double cal_pass(cal_lane L[2], int lanes, uint64_t n)
{
    uint64_t h = lanes == 2 ? n / 2 / CH * CH : n;
    L[0].lo = 0;
    L[0].hi = h;
    L[1].lo = h;
    L[1].hi = n;
    double t0 = nlsr_now();
    pthread_t th;
    int two = lanes == 2 && pthread_create(&th, NULL, cal_lane_thread, &L[1]) == 0;
    cal_lane_run(&L[0]);
    if (two) pthread_join(th, NULL);
    else if (lanes == 2) cal_lane_run(&L[1]);
    return nlsr_now() - t0;
}

static double best(double a, double b)
{
    return a < b ? a : b;
}

/* Each pass is timed REPS times and the fastest kept: the first touches the scratch, and on a
 * shared machine the fastest is the one least disturbed by others. */
#define REPS 3

static double cal_best(cal_lane L[2], int lanes, uint64_t n)
{
    double t = 1e30;
    for (int r = 0; r < REPS; r++) t = best(t, cal_pass(L, lanes, n));
    return t;
}

/* Deterministic BF16 weights of a trained model's scale (|w| about 2^-9 to 2^-6, random sign
 * and mantissa), cheap to make: the calibration should time the kernels, not this. `near`: the
 * same values with the low mantissa bits changed (an aligned or fine-tuned copy). */
static void fill_bf16(unsigned char *p, uint64_t n, uint64_t seed, const unsigned char *near)
{
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (uint64_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        uint16_t h;
        if (near) {
            memcpy(&h, near + i * 2, 2);
            h ^= (uint16_t)(s & 0xf);
        } else {
            h = (uint16_t)((s & 0x8000u) | ((0x76u + ((s >> 16) & 3u)) << 7) | ((s >> 24) & 0x7fu));
        }
        memcpy(p + i * 2, &h, 2);
    }
}

/* Pass 3's per-chunk work before the sums (realign_run.c pass_mask and its second lane): step
 * 1, the mask's bitmap and positions, the gather of the masked elements' f32 values. */
typedef struct cal_mask {
    const unsigned char *a, *b, *t;
    float thr;
    float *fs, *fe, *fb, *tm, *em, *bm;
    uint16_t *es;
    unsigned char *conv;
    uint32_t *idx;
    uint64_t *bits;
} cal_mask;

/* Chunk [at, at + cnt): the masked elements' t, e and b in tm, em, bm; returns how many. */
static size_t cal_mask_chunk(const cal_mask *c, uint64_t at, size_t cnt)
{
    (void)nlsr_step1_bf16(c->a + at * 2, c->b + at * 2, 0.9f, c->fs, c->fe, c->fb, c->es, cnt);
    nlsr_mask_words(c->fs, cnt, c->thr, c->bits + at / 64);
    size_t m = nlsr_mask_indices(c->bits + at / 64, cnt, c->idx);
    for (size_t i = 0; i < m; i++) {
        memcpy(c->conv + i * 2, c->t + (at + c->idx[i]) * 2, 2);
        c->em[i] = c->fe[c->idx[i]];
        c->bm[i] = c->fb[c->idx[i]];
    }
    nlsr_to_f32(NLSR_DTYPE_BF16, c->conv, c->tm, m);
    return m;
}

/* The journal's compression (src/io/journal.c): records of up to 4 MiB, byte planes (low
 * bytes, then high bytes), zstd at the journal's level (NLSR_JOURNAL_ZLEVEL) with a checksum, one worker per builder with a second
 * CPU (and two builders: nlsr_timing_single halves the journal's compute). The
 * planes are made outside the timing (the journal's word-wise version costs little). */
static void time_zstd(const unsigned char *src, unsigned char *planes, unsigned char *dst,
                      size_t len, nlsr_kernel_rates *out)
{
    size_t m = len / 2;
    for (size_t i = 0; i < m; i++) {
        planes[i] = src[2 * i];
        planes[m + i] = src[2 * i + 1];
    }
    ZSTD_CCtx *c = ZSTD_createCCtx();
    if (!c) return;
    ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, NLSR_JOURNAL_ZLEVEL);
    ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1);
    if (sysconf(_SC_NPROCESSORS_ONLN) >= 2) (void)ZSTD_CCtx_setParameter(c, ZSTD_c_nbWorkers, 1);
    const size_t rec = 4u << 20;
    double tz = 1e30;
    size_t packed = 0;
    for (int rep = 0; rep < 2; rep++) {
        packed = 0;
        double t0 = nlsr_now();
        for (size_t at = 0; at < len; at += rec) {
            size_t k = len - at < rec ? len - at : rec;
            /* dst holds len bytes: a record that does not shrink is counted, not kept. */
            size_t cs = ZSTD_compress2(c, dst, len, planes + at, k);
            packed += ZSTD_isError(cs) ? k : cs;
        }
        tz = best(tz, nlsr_now() - t0);
    }
    ZSTD_freeCCtx(c);
    out->zstd_bps = (double)len / tz;
    out->zstd_ratio = (double)packed / (double)len;
}

int nlsr_timing_calibrate(nlsr_ctx *ctx, uint64_t elems, nlsr_kernel_rates *out)
{
    memset(out, 0, sizeof *out);
    double t_start = nlsr_now();
    uint64_t n = elems ? elems : DEFAULT_ELEMS;
    n = n / CH * CH;
    if (n < LANE_MIN) n = LANE_MIN;
    /* Per element: a, b, t (BF16), the kept values and the merge's output (BF16), the bitmap;
     * per lane: CH f32 scores and a histogram; pass 3's CH-element scratch (7 f32, es, conv,
     * idx) and 8 bytes an element more, room to align it. */
    size_t fixed = 2 * ((size_t)CH * 4 + NLSR_KTH_BUCKETS * 8) + (size_t)CH * (7 * 4 + 2 + 2 + 4 + 8);
    size_t bytes = 0;
    unsigned char *mem = NULL;
    for (;;) {
        bytes = (size_t)(n * 10 + n / 8 + 64) + fixed;
        uint64_t room = nlsr_budget_room(&ctx->budget);
        if (bytes <= room / 2 || n <= MIN_ELEMS) break;
        n = n / 2 / CH * CH;
    }
    NLSR_FORWARD(nlsr_budget_alloc(&ctx->budget, bytes, "kernel calibration", (void **)&mem,
                                   &ctx->err));
    unsigned char *a = mem, *b = a + n * 2, *t = b + n * 2, *vals = t + n * 2, *outb = vals + n * 2;
    uint64_t *bits = (uint64_t *)(void *)(outb + n * 2);
    /* The scratch after the bitmap, 64-byte aligned (`fixed` has room for the padding). */
    unsigned char *sc = (unsigned char *)(bits + (n + 63) / 64);
    sc = (unsigned char *)(((uintptr_t)sc + 63) & ~(uintptr_t)63);
    cal_lane L[2];
    memset(L, 0, sizeof L);
    for (int i = 0; i < 2; i++) {
        L[i].fs = (float *)(void *)(sc + (size_t)i * ((size_t)CH * 4 + NLSR_KTH_BUCKETS * 8));
        L[i].hist = (uint64_t *)(void *)((unsigned char *)L[i].fs + (size_t)CH * 4);
    }
    float *f = (float *)(void *)(sc + 2 * ((size_t)CH * 4 + NLSR_KTH_BUCKETS * 8));
    float *fs = f, *fe = f + CH, *fb = f + 2 * CH, *tm = f + 3 * CH, *em = f + 4 * CH,
          *bm = f + 5 * CH;
    unsigned char *es = (unsigned char *)(f + 7 * CH), *conv = es + (size_t)CH * 2;
    uint32_t *idx = (uint32_t *)(void *)(conv + (size_t)CH * 2);
    fill_bf16(b, n, 1, NULL);
    fill_bf16(a, n, 2, b);
    fill_bf16(t, n, 3, a);
    for (int i = 0; i < 2; i++) {
        L[i].a = a;
        L[i].b = b;
        L[i].t = t;
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    out->lanes = cpus >= 2 && !getenv("NLSR_RUN_ONE_THREAD") ? 2 : 1;
    out->elems = n;
    uint64_t k = nlsr_mask_k(n, 0.8);

    /* Pass 1, one thread then the lanes. The lanes' histograms added give the whole's, for
     * pass 2's bucket. */
    L[0].pass = L[1].pass = 1;
    out->hist[0] = (double)n / cal_best(L, 1, n);
    if (out->lanes == 2) out->hist[1] = (double)n / cal_best(L, 2, n);
    uint64_t *hist = L[0].hist;
    if (out->lanes == 2)
        for (uint32_t i = 0; i < NLSR_KTH_BUCKETS; i++) hist[i] += L[1].hist[i];
    uint32_t bucket;
    uint64_t below;
    nlsr_kth_hist_pick(hist, k, &bucket, &below);
    uint64_t nc = hist[bucket];

    /* Pass 2: the candidates into the values area (n BF16 = n / 2 floats: the histogram
     * variant when they do not fit, as the engine falls back), then their selection. */
    float *cands = nc <= n / 2 ? (float *)(void *)vals : NULL;
    L[0].pass = L[1].pass = 2;
    L[0].bucket = L[1].bucket = bucket;
    L[0].cands = cands;
    L[1].cands = NULL; /* the second lane counts only: its range of the array is not known */
    double t2 = cal_pass(L, 1, n);
    float thr = 0.0f;
    double t0 = nlsr_now();
    if (cands && nc) thr = nlsr_kth_inplace(cands, (size_t)nc, k - below);
    double tsel = nlsr_now() - t0;
    t2 = best(t2, cal_best(L, 1, n));
    out->cands[0] = (double)n / (t2 + tsel);
    if (out->lanes == 2) {
        L[0].cands = NULL;
        out->cands[1] = (double)n / (cal_best(L, 2, n) + tsel);
    }

    /* Pass 3 with the patch kept (realign_run.c pass_mask): the fused step 1, the mask's
     * bitmap and positions, the gather, the cosine sums, the values in the fine-tune's dtype. */
    double t3 = 1e30;
    const cal_mask sc3 = {a, b, t, thr, fs, fe, fb, tm, em, bm, (uint16_t *)(void *)es, conv,
                          idx, bits};
    for (int rep = 0; rep < REPS; rep++) {
        nlsr_cos_sums sums = {0, 0, 0};
        unsigned char *v = vals;
        t0 = nlsr_now();
        for (uint64_t at = 0; at < n; at += CH) {
            size_t cnt = (size_t)(n - at < CH ? n - at : CH);
            size_t m = cal_mask_chunk(&sc3, at, cnt);
            nlsr_cos_add_masked(&sums, tm, em, bm, m);
            nlsr_from_f32(NLSR_DTYPE_BF16, em, v, m);
            v += m * 2;
        }
        t3 = best(t3, nlsr_now() - t0);
        volatile double keep = sums.dot;
        (void)keep;
    }
    out->mask = (double)n / t3;

    /* run's pass 3 in two lanes (realign_run.c mask_split): the first lane then adds the
     * second's pairs to the sums in order and copies its values after its own. The pairs are
     * made outside the timing, as the second lane makes them, into the merge's output area
     * (room for n / 4 of them; the merge below overwrites it), and the values are copied over
     * the aligned model's bytes (only hashed below). */
    float *xy = (float *)(void *)outb;
    size_t np = 0;
    for (uint64_t at = 0; at < n && np + CH <= n / 4; at += CH) {
        size_t cnt = (size_t)(n - at < CH ? n - at : CH);
        size_t m = cal_mask_chunk(&sc3, at, cnt);
        nlsr_cos_xy(tm, em, bm, xy + 2 * np, m);
        np += m;
        /* per element of the module: how far the pairs reach */
        out->addxy = (double)(at + cnt);
    }
    double ta = 1e30;
    for (int rep = 0; rep < REPS && np; rep++) {
        nlsr_cos_sums sums = {0, 0, 0};
        t0 = nlsr_now();
        nlsr_cos_add_xy(&sums, xy, np);
        memcpy(a, vals, np * 2);
        ta = best(ta, nlsr_now() - t0);
        volatile double keep = sums.dot;
        (void)keep;
    }
    out->addxy = np ? out->addxy / ta : 0;

    /* XXH64 of base and aligned (in place: the fingerprints), then phase B's merge from the
     * kept patch (realign_run.c merge_unit). */
    double tx = 1e30, tm2 = 1e30;
    for (int rep = 0; rep < REPS; rep++) {
        nlsr_xxh64_state h;
        nlsr_xxh64_init(&h, 0);
        t0 = nlsr_now();
        nlsr_xxh64_update(&h, a, n * 2);
        nlsr_xxh64_update(&h, b, n * 2);
        tx = best(tx, nlsr_now() - t0);
        volatile uint64_t keep = nlsr_xxh64_digest(&h);
        (void)keep;
        t0 = nlsr_now();
        memcpy(outb, t, n * 2);
        uint64_t pos = 0;
        for (uint64_t w = 0; w < (n + 63) / 64; w++) {
            uint64_t bb = bits[w];
            while (bb) {
                uint64_t el = w * 64 + (uint64_t)__builtin_ctzll(bb);
                bb &= bb - 1;
                memcpy(outb + el * 2, vals + pos * 2, 2);
                pos++;
            }
        }
        tm2 = best(tm2, nlsr_now() - t0);
    }
    out->xxh_bps = (double)(n * 4) / tx;
    out->merge_bps = (double)(n * 2) / tm2;
    time_zstd(t, outb, vals, (size_t)n * 2, out);
    nlsr_budget_free(&ctx->budget, mem, bytes);
    out->seconds = nlsr_now() - t_start;
    return 0;
}

/* ---- the model ---------------------------------------------------------------------------- */

double nlsr_timing_pipeline(const double *read_s, const double *compute_s, size_t n)
{
    double r_prev = 0, c_prev = 0, c_prev2 = 0; /* R_{i-1}, C_{i-1}, C_{i-2} */
    for (size_t i = 0; i < n; i++) {
        double s = r_prev > c_prev2 ? r_prev : c_prev2;
        double r = s + read_s[i];
        double c = (r > c_prev ? r : c_prev) + compute_s[i];
        c_prev2 = c_prev;
        c_prev = c;
        r_prev = r;
    }
    return c_prev;
}

static double per(double amount, double rate)
{
    return rate > 0 ? amount / rate : 0;
}

double nlsr_timing_module_compute(const nlsr_timing_mod *m, const nlsr_kernel_rates *k, int flags)
{
    if (m->n == 0) return 0;
    double n = (double)m->n;
    int l = m->fast && k->lanes == 2 && m->n >= LANE_MIN && k->hist[1] > 0 && k->cands[1] > 0;
    double c = per(n, k->hist[l]);
    double h = (flags & NLSR_TIMING_HASH) ? per(n * (m->asz + m->bsz), k->xxh_bps) : 0;
    if (m->k < m->n) {
        c += per(n, k->cands[l]);
        double p3 = per(n, k->mask);
        if (l && (flags & NLSR_TIMING_SPLIT3) && !m->blocked && k->addxy > 0) {
            /* realign_run.c mask_split: the first lane takes a share f of pass 3 (f within
             * 3/8 .. 5/8, balanced from the lanes' times), the second the rest and then the
             * hash; after both, the first adds the second's pairs and values (its share). */
            double t = p3 + h > 1.25 * p3 ? 0.375 * p3 + h : (p3 + h) / 2;
            double f = t / p3 < 0.625 ? t / p3 : 0.625;
            c += t + per(n * (1 - f), k->addxy);
        } else {
            /* The fingerprints: on the second lane during pass 3 (max), else after it (sum). */
            c += l ? (p3 > h ? p3 : h) : p3 + h;
        }
    } else {
        c += h;
    }
    return c;
}

static void phase_set(nlsr_timing_phase *ph, const char *name, double rb, double wb,
                      double read_s, double compute_s, double write_s, double seconds,
                      const char *overlap)
{
    *ph = (nlsr_timing_phase){name, rb, wb, read_s, compute_s, write_s, seconds, overlap};
}

static void finish(nlsr_timing_pred *t, const nlsr_kernel_rates *k, double rbw, double wbw)
{
    t->seconds = t->read_s = t->compute_s = t->write_s = 0;
    for (int i = 0; i < t->nphases; i++) {
        t->seconds += t->ph[i].seconds;
        t->read_s += t->ph[i].read_s;
        t->compute_s += t->ph[i].compute_s;
        t->write_s += t->ph[i].write_s;
    }
    t->read_bps = rbw;
    t->write_bps = wbw;
    t->k = *k;
}

/* Phase A (and prepare's reads): the depth-2 pipeline over the modules. `with_ft`: the
 * fine-tune's bytes are read too. */
static int phase_pipeline(const nlsr_timing_mod *m, size_t nm, int with_ft, int flags, int audit,
                          const nlsr_kernel_rates *k, double rbw, nlsr_timing_phase *ph,
                          const char *name)
{
    double *r = malloc((nm ? nm : 1) * 2 * sizeof *r);
    if (!r) return -ENOMEM;
    double *c = r + nm, rb = 0, rs = 0, cs = 0;
    for (size_t i = 0; i < nm; i++) {
        double bytes = (double)m[i].n * (m[i].asz + m[i].bsz + (with_ft ? m[i].tsz : 0));
        /* The report's audit hashes every byte the stream delivers, on the same thread. */
        c[i] = nlsr_timing_module_compute(&m[i], k, flags) + (audit ? per(bytes, k->xxh_bps) : 0);
        /* Row blocks: pass 2 reads base and aligned again, pass 3 all three, from the disk:
         * the stream reads files that were not cached when it opened them with O_DIRECT, so
         * pass 1 left nothing in the page cache (measured: llama-8b, 8 layers, 512M). */
        if (m[i].blocked && m[i].k < m[i].n)
            bytes += (double)m[i].n * (2.0 * (m[i].asz + m[i].bsz) + (with_ft ? m[i].tsz : 0));
        rb += bytes;
        r[i] = per(bytes, rbw);
        rs += r[i];
        cs += c[i];
    }
    phase_set(ph, name, rb, 0, rs, cs, 0, nlsr_timing_pipeline(r, c, nm),
              "read stream depth 2: module i+1 is read while module i is computed");
    free(r);
    return 0;
}

void nlsr_timing_single(const nlsr_timing_mod *m, size_t nm, int inplace, int audit,
                        uint64_t ft_bytes, uint64_t out_bytes, double f,
                        const nlsr_kernel_rates *k, double rbw, double wbw, nlsr_timing_pred *t)
{
    memset(t, 0, sizeof *t);
    int rows = 0;
    for (size_t i = 0; i < nm; i++) rows |= m[i].blocked;
    t->plan = rows ? (inplace ? "row blocks in place" : "row blocks")
                   : (inplace ? "single pass in place" : "single pass");
    t->patched_fraction = f;
    int fl = NLSR_TIMING_SPLIT3 | (inplace ? NLSR_TIMING_HASH : 0);
    if (phase_pipeline(m, nm, 1, fl, audit, k, rbw, &t->ph[0], "similarities") == 0)
        t->nphases = 1;
    /* Phase B's patched modules, weighted by the expected share patched. */
    double pft = 0, pread = 0, merge = 0, pchg = 0, pbits = 0;
    for (size_t i = 0; i < nm; i++) {
        if (m[i].n == 0 || m[i].k >= m[i].n) continue;
        double n = (double)m[i].n;
        pft += f * n * m[i].tsz;
        pchg += f * (double)(m[i].n - m[i].k) * m[i].tsz; /* the masked elements change */
        pbits += f * n / 8;
        pread += f * n * (m[i].kept ? m[i].tsz : m[i].asz + m[i].bsz + m[i].tsz);
        /* A kept patch's units are merged in two halves with two lanes (realign_run.c
         * merge_unit). */
        double km = per(n * m[i].tsz, k->merge_bps) / (k->lanes == 2 ? 2 : 1);
        merge += f * (m[i].kept ? km : per(n, k->mask));
    }
    if (audit) merge += per(pread, k->xxh_bps);
    double pr = per(pread, rbw), over = pr > merge ? pr : merge;
    nlsr_timing_phase *ph = &t->ph[t->nphases++];
    if (inplace) {
        /* Each patched byte: compared, hashed and copied into the batch, the changed elements
         * found (a bitmap, a gather: another pass at the merge rate); the old values of the
         * changed elements alone compressed into the journal (docs/JOURNAL.md version 2), with
         * the bitmap beside them. */
        double jc = per(pft, k->xxh_bps) + per(pchg, k->zstd_bps) + 2 * per(pft, k->merge_bps);
        /* With two CPUs the journal builds its records two at a time (journal.c builders):
         * half of that on each thread. */
        if (k->lanes == 2) jc /= 2;
        double wb = pft + (pchg + pbits) * k->zstd_ratio, w = per(wb, wbw);
        over = pr > merge + jc ? pr : merge + jc;
        phase_set(ph, "patch in place", pread, wb, pr, merge + jc, w, over + w,
                  "patched tensors read (depth 3) while merged and journaled: max; then the "
                  "new bytes and the journal written and fsynced");
    } else {
        double copy = (double)ft_bytes > pft ? (double)ft_bytes - pft : 0;
        double cr = per(copy, rbw), w = per((double)out_bytes, wbw), rd = cr + over;
        /* The writes go through the page cache and are written back while the next bytes are
         * read; both share the disk, so only part of the shorter is hidden. */
        double lo = rd < w ? rd : w, hi = rd < w ? w : rd;
        phase_set(ph, "output", copy + pread, (double)out_bytes, cr + pr, merge, w,
                  hi + (1 - WRITE_OVERLAP) * lo,
                  "patched tensors read (depth 3) while merged: max; reads and the written-back "
                  "writes: the longer + half the shorter");
        if (audit) {
            /* The report's fingerprints of the output: each file read back and hashed. */
            double r = per((double)out_bytes, rbw), h = per((double)out_bytes, k->xxh_bps);
            phase_set(&t->ph[t->nphases++], "report", (double)out_bytes, 0, r, h, 0,
                      r > h ? r : h, "the output read back while hashed: max");
        }
    }
    finish(t, k, rbw, wbw);
}

void nlsr_timing_patchfile(const nlsr_timing_mod *m, size_t nm, uint64_t ft_bytes,
                           uint64_t out_bytes, const nlsr_kernel_rates *k, double rbw, double wbw,
                           nlsr_timing_pred *t)
{
    memset(t, 0, sizeof *t);
    t->plan = "patch file";
    t->patched_fraction = 1;
    double patch = 0;
    for (size_t i = 0; i < nm; i++)
        if (m[i].k < m[i].n) patch += (double)((m[i].n + 63) / 64 * 8 + (m[i].n - m[i].k) * m[i].tsz);
    if (phase_pipeline(m, nm, 0, NLSR_TIMING_HASH, 0, k, rbw, &t->ph[0], "prepare") == 0) {
        nlsr_timing_phase *ph = &t->ph[0];
        ph->write_bytes = patch;
        ph->write_s = per(patch, wbw);
        ph->seconds += ph->write_s;
        t->nphases = 1;
    }
    double rd = (double)ft_bytes + patch, merge = 0;
    for (size_t i = 0; i < nm; i++) merge += per((double)m[i].n * m[i].tsz, k->merge_bps);
    double r = per(rd, rbw), w = per((double)out_bytes, wbw);
    phase_set(&t->ph[t->nphases++], "apply", rd, (double)out_bytes, r, merge, w,
              (r > merge ? r : merge) + w,
              "fine-tune and patches read while merged: max; then the output written");
    finish(t, k, rbw, wbw);
}

double nlsr_timing_patched_fraction(const nlsr_realign_params *p, size_t nm)
{
    const nlsr_select_params *s = &p->select;
    if (s->mode == NLSR_SELECT_NONE) return 0;
    if (s->mode != NLSR_SELECT_ADAPTIVE || nm == 0) return 1;
    /* METHOD.md "adaptive": module at place pos gets clamp((rate - eps) + 2 eps norm, 0, 1),
     * norm running over (N - 1 - pos) / (N - 1); each is drawn once, so the expected share
     * is their mean (the order does not matter to it). */
    double sum = 0;
    for (size_t pos = 0; pos < nm; pos++) {
        double norm = nm == 1 ? 0.5 : (double)(nm - 1 - pos) / (double)(nm - 1);
        double pr = (s->prune_rate - s->epsilon) + 2.0 * s->epsilon * norm;
        sum += pr < 0 ? 0 : pr > 1 ? 1 : pr;
    }
    return sum / (double)nm;
}

int nlsr_timing_modules(nlsr_ctx *ctx, const nlsr_ckpt *base, const nlsr_ckpt *src,
                        const nlsr_ckpt *ft, const nlsr_realign_params *p, const nlsr_run_plan *rp,
                        nlsr_timing_mod **out, size_t *nm)
{
    *out = NULL;
    *nm = 0;
    nlsr_timing_mod *m = calloc(src->n ? src->n : 1, sizeof *m);
    NLSR_FAIL_IF(!m, &ctx->err, -ENOMEM, "out of memory");
    size_t n = 0, kept = 0;
    for (size_t j = 0; j < src->n; j++) {
        const st_tensor *ts = src->t[j].t;
        if (!nlsr_is_target(ts, p->targets, p->ntargets)) continue;
        size_t ib = 0, it = 0;
        if (nlsr_ckpt_find(base, ts->name, &ib) != 0 || nlsr_ckpt_find(ft, ts->name, &it) != 0)
            continue; /* the job refuses it; the plan has said so already */
        nlsr_timing_mod *M = &m[n++];
        M->n = ts->numel;
        M->k = nlsr_mask_k(M->n, p->sparsity);
        M->asz = (unsigned)nlsr_dtype_size(ts->dtype);
        M->bsz = (unsigned)nlsr_dtype_size(base->t[ib].t->dtype);
        M->tsz = (unsigned)nlsr_dtype_size(ft->t[it].t->dtype);
        M->fast = ts->dtype == NLSR_DTYPE_BF16 && base->t[ib].t->dtype == NLSR_DTYPE_BF16;
        /* realign_run.c choose_kept: the first modules that fit, in module order. */
        if (rp && M->k < M->n && kept < rp->kept) {
            M->kept = 1;
            kept++;
        }
    }
    /* Row blocks cut the modules that do not fit a block: the largest ones. */
    for (size_t b = 0; rp && rp->rows && b < rp->blocked && b < n; b++) {
        size_t big = n;
        for (size_t i = 0; i < n; i++)
            if (!m[i].blocked && (big == n || m[i].n > m[big].n)) big = i;
        if (big < n) m[big].blocked = 1;
    }
    *out = m;
    *nm = n;
    return 0;
}

/* ---- printing ----------------------------------------------------------------------------- */

void nlsr_timing_print(const nlsr_timing_pred *t, FILE *out)
{
    char a[32], b[32], c[32];
    fprintf(out,
            "predicted: about %.1f s for the %s = read %.1f s + compute %.1f s + write %.1f s "
            "- %.1f s overlapped\n",
            t->seconds, t->plan, t->read_s, t->compute_s, t->write_s,
            t->read_s + t->compute_s + t->write_s - t->seconds);
    for (int i = 0; i < t->nphases; i++) {
        const nlsr_timing_phase *p = &t->ph[i];
        fprintf(out, "  %-15s %6.1f s: reads %s (%.1f s), compute %.1f s, writes %s (%.1f s); %s\n",
                p->name, p->seconds, nlsr_fmt_bytes(p->read_bytes, a, sizeof a), p->read_s,
                p->compute_s, nlsr_fmt_bytes(p->write_bytes, b, sizeof b), p->write_s, p->overlap);
    }
    fprintf(out, "  disk: read %s/s, write + fsync %s/s (%s)\n",
            nlsr_fmt_bytes(t->read_bps, a, sizeof a), nlsr_fmt_bytes(t->write_bps, b, sizeof b),
            t->disk_source ? t->disk_source : "given");
    const nlsr_kernel_rates *k = &t->k;
    fprintf(out,
            "  kernels (calibrated now, %.0f ms on %llu BF16 elements, %d lane%s): pass 1 %.0f M "
            "el/s (1 thread) %.0f (2), pass 2 %.0f / %.0f, pass 3 %.0f (its add-up %.0f), XXH64 %s/s, merge %s/s, "
            "zstd %s/s (to %.0f%%)\n",
            k->seconds * 1e3, (unsigned long long)k->elems, k->lanes, k->lanes == 1 ? "" : "s",
            k->hist[0] / 1e6, k->hist[1] / 1e6, k->cands[0] / 1e6, k->cands[1] / 1e6,
            k->mask / 1e6, k->addxy / 1e6, nlsr_fmt_bytes(k->xxh_bps, a, sizeof a),
            nlsr_fmt_bytes(k->merge_bps, b, sizeof b), nlsr_fmt_bytes(k->zstd_bps, c, sizeof c),
            k->zstd_ratio * 100);
    if (t->patched_fraction < 1)
        fprintf(out, "  phase B assumes %.0f%% of the modules patched (the selection's expected "
                     "share; which ones is drawn after phase A)\n",
                t->patched_fraction * 100);
}

static cJSON *pair(double one, double two)
{
    cJSON *a = cJSON_CreateArray();
    if (a) {
        cJSON_AddItemToArray(a, cJSON_CreateNumber(one));
        cJSON_AddItemToArray(a, cJSON_CreateNumber(two));
    }
    return a;
}

void nlsr_timing_json(void *obj, const nlsr_timing_pred *t)
{
    cJSON *o = cJSON_AddObjectToObject(obj, "prediction");
    if (!o) return;
    cJSON_AddStringToObject(o, "plan", t->plan);
    cJSON_AddNumberToObject(o, "seconds", t->seconds);
    cJSON_AddNumberToObject(o, "read_s", t->read_s);
    cJSON_AddNumberToObject(o, "compute_s", t->compute_s);
    cJSON_AddNumberToObject(o, "write_s", t->write_s);
    cJSON_AddNumberToObject(o, "overlap_s", t->read_s + t->compute_s + t->write_s - t->seconds);
    cJSON_AddNumberToObject(o, "patched_fraction", t->patched_fraction);
    cJSON *ps = cJSON_AddArrayToObject(o, "phases");
    for (int i = 0; ps && i < t->nphases; i++) {
        const nlsr_timing_phase *p = &t->ph[i];
        cJSON *x = cJSON_CreateObject();
        if (!x) break;
        cJSON_AddStringToObject(x, "name", p->name);
        cJSON_AddNumberToObject(x, "seconds", p->seconds);
        cJSON_AddNumberToObject(x, "read_bytes", p->read_bytes);
        cJSON_AddNumberToObject(x, "write_bytes", p->write_bytes);
        cJSON_AddNumberToObject(x, "read_s", p->read_s);
        cJSON_AddNumberToObject(x, "compute_s", p->compute_s);
        cJSON_AddNumberToObject(x, "write_s", p->write_s);
        cJSON_AddStringToObject(x, "overlap", p->overlap);
        cJSON_AddItemToArray(ps, x);
    }
    cJSON *r = cJSON_AddObjectToObject(o, "rates");
    if (!r) return;
    cJSON_AddNumberToObject(r, "read_bps", t->read_bps);
    cJSON_AddNumberToObject(r, "write_bps", t->write_bps);
    cJSON_AddStringToObject(r, "disk_source", t->disk_source ? t->disk_source : "given");
    const nlsr_kernel_rates *k = &t->k;
    cJSON *kr = cJSON_AddObjectToObject(r, "kernels");
    if (!kr) return;
    cJSON_AddStringToObject(kr, "source", "calibrated");
    cJSON_AddNumberToObject(kr, "calibration_s", k->seconds);
    cJSON_AddNumberToObject(kr, "elements", (double)k->elems);
    cJSON_AddNumberToObject(kr, "lanes", k->lanes);
    cJSON_AddItemToObject(kr, "pass1_elems_per_s", pair(k->hist[0], k->hist[1]));
    cJSON_AddItemToObject(kr, "pass2_elems_per_s", pair(k->cands[0], k->cands[1]));
    cJSON_AddNumberToObject(kr, "pass3_elems_per_s", k->mask);
    cJSON_AddNumberToObject(kr, "pass3_addup_elems_per_s", k->addxy);
    cJSON_AddNumberToObject(kr, "xxh64_bps", k->xxh_bps);
    cJSON_AddNumberToObject(kr, "merge_bps", k->merge_bps);
    cJSON_AddNumberToObject(kr, "zstd_bps", k->zstd_bps);
    cJSON_AddNumberToObject(kr, "zstd_ratio", k->zstd_ratio);
}
