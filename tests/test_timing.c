/* SPDX-License-Identifier: Apache-2.0 */
/* The time model (src/plan/timing.h) against cases computed by hand from its documented
 * formulas (docs/DESIGN.md "Predicted time"): the depth-2 read pipeline (compute-bound,
 * read-bound, and a case where the second buffer holds the third read back), one module's
 * compute on one and two lanes with and without the fingerprint hash, the single pass out and
 * in place, the patch-file plan, the adaptive selection's expected share. Rates are made up
 * round numbers; nothing here looks at the clock except the calibration test, which checks
 * only that it gives rates and gives its memory back. */
#include <math.h>
#include <string.h>

#include "../src/common/ctx.h"
#include "../src/plan/timing.h"
#include "nlsr.h"
#include "test.h"

static void test_pipeline(void)
{
    ASSERT_NEAR(nlsr_timing_pipeline(NULL, NULL, 0), 0, 0);
    double r1[] = {2}, c1[] = {3};
    ASSERT_NEAR(nlsr_timing_pipeline(r1, c1, 1), 5, 1e-12);
    /* Compute-bound: the first read, then the computes back to back: 1 + 3 x 3. */
    double r2[] = {1, 1, 1}, c2[] = {3, 3, 3};
    ASSERT_NEAR(nlsr_timing_pipeline(r2, c2, 3), 10, 1e-12);
    /* Read-bound: the reads back to back, then the last compute: 3 x 3 + 1. */
    double r3[] = {3, 3, 3}, c3[] = {1, 1, 1};
    ASSERT_NEAR(nlsr_timing_pipeline(r3, c3, 3), 10, 1e-12);
    /* Depth 2: the third read waits for the first compute (its buffer): S2 = max(R1 = 2,
     * C0 = 11) = 11, R2 = 16, C2 = max(16, C1 = 12) + 1 = 17 (an unbounded stream: 13). */
    double r4[] = {1, 1, 5}, c4[] = {10, 1, 1};
    ASSERT_NEAR(nlsr_timing_pipeline(r4, c4, 3), 17, 1e-12);
}

static nlsr_kernel_rates rates(void)
{
    nlsr_kernel_rates k;
    memset(&k, 0, sizeof k);
    k.hist[0] = 100;
    k.hist[1] = 200;
    k.cands[0] = 50;
    k.cands[1] = 100;
    k.mask = 25;
    k.xxh_bps = 50;
    k.merge_bps = 400;
    k.lanes = 2;
    return k;
}

static void test_module_compute(void)
{
    nlsr_kernel_rates k = rates();
    nlsr_timing_mod m = {20000, 16000, 2, 2, 2, 1, 0, 0};
    /* Two lanes: 20000/200 + 20000/100 + 20000/25 = 100 + 200 + 800. */
    ASSERT_NEAR(nlsr_timing_module_compute(&m, &k, 0), 1100, 1e-9);
    /* The hash (80000 bytes at 50/s = 1600) runs beside pass 3 (800): max. */
    ASSERT_NEAR(nlsr_timing_module_compute(&m, &k, 1), 100 + 200 + 1600, 1e-9);
    k.xxh_bps = 1000; /* 80 < 800: hidden */
    ASSERT_NEAR(nlsr_timing_module_compute(&m, &k, 1), 1100, 1e-9);
    /* One lane: 200 + 400 + 800, the hash after pass 3. */
    k.lanes = 1;
    ASSERT_NEAR(nlsr_timing_module_compute(&m, &k, 0), 1400, 1e-9);
    ASSERT_NEAR(nlsr_timing_module_compute(&m, &k, 1), 1480, 1e-9);
    /* Not BF16: no lanes either. */
    k.lanes = 2;
    m.fast = 0;
    ASSERT_NEAR(nlsr_timing_module_compute(&m, &k, 0), 1400, 1e-9);
    /* Under 4 chunks (16384 elements): one lane. */
    nlsr_timing_mod s = {8000, 6400, 2, 2, 2, 1, 0, 0};
    ASSERT_NEAR(nlsr_timing_module_compute(&s, &k, 0), 80 + 160 + 320, 1e-9);
    /* k >= n: pass 1 only (and the hash). */
    m.fast = 1;
    m.k = m.n;
    ASSERT_NEAR(nlsr_timing_module_compute(&m, &k, 0), 100, 1e-9);
    ASSERT_NEAR(nlsr_timing_module_compute(&m, &k, 1), 180, 1e-9);
    nlsr_timing_mod z = {0, 0, 2, 2, 2, 1, 0, 0};
    ASSERT_NEAR(nlsr_timing_module_compute(&z, &k, 1), 0, 0);

    /* run's pass 3 split between the lanes (p3 = 800, the add-up at 1000 elements/s for the
     * second lane's share): no hash, halves: 400 + 10000/1000. */
    m.k = 16000;
    k.addxy = 1000;
    ASSERT_NEAR(nlsr_timing_module_compute(&m, &k, NLSR_TIMING_SPLIT3), 100 + 200 + 400 + 10, 1e-9);
    /* The hash (80) after the second lane's part: balanced at (800 + 80) / 2 = 440, the first
     * lane's share 0.55, the add-up 9000 / 1000. */
    ASSERT_NEAR(nlsr_timing_module_compute(&m, &k, NLSR_TIMING_SPLIT3 | NLSR_TIMING_HASH),
                100 + 200 + 440 + 9, 1e-9);
    /* A hash too long to balance (1600): the first lane's share stops at 5/8, the second
     * takes 3/8 of pass 3 and the hash: 300 + 1600, the add-up 7500 / 1000. */
    k.xxh_bps = 50;
    ASSERT_NEAR(nlsr_timing_module_compute(&m, &k, NLSR_TIMING_SPLIT3 | NLSR_TIMING_HASH),
                100 + 200 + 1900 + 7.5, 1e-9);
    /* Row blocks do not split pass 3; nor does one lane. */
    m.blocked = 1;
    ASSERT_NEAR(nlsr_timing_module_compute(&m, &k, NLSR_TIMING_SPLIT3 | NLSR_TIMING_HASH),
                100 + 200 + 1600, 1e-9);
    m.blocked = 0;
    k.lanes = 1;
    ASSERT_NEAR(nlsr_timing_module_compute(&m, &k, NLSR_TIMING_SPLIT3), 1400, 1e-9);
}

static void check_sums(const nlsr_timing_pred *t);

/* Row blocks: a blocked module's passes 2 and 3 read it again from the disk, 2 x (aligned +
 * base) + fine-tune bytes per element at the read rate; compute as in the single pass. */
static void test_rows(void)
{
    nlsr_kernel_rates k = rates();
    k.xxh_bps = 1000;
    nlsr_timing_mod whole = {20000, 16000, 2, 2, 2, 1, 0, 0};
    nlsr_timing_mod cut = whole;
    cut.blocked = 1;
    nlsr_timing_pred a, b;
    nlsr_timing_single(&whole, 1, 0, 0, 100000, 100000, 0.5, &k, 1000, 500, &a);
    nlsr_timing_single(&cut, 1, 0, 0, 100000, 100000, 0.5, &k, 1000, 500, &b);
    /* 20000 x (2 x 4 + 2) = 200000 bytes more, at 1000 B/s: 200 s more reading; one module,
     * so nothing overlaps its compute (1100 s): 120 + 1100 against 320 + 1100. */
    ASSERT_NEAR(b.ph[0].read_bytes - a.ph[0].read_bytes, 200000, 0);
    ASSERT_NEAR(b.ph[0].compute_s, a.ph[0].compute_s, 1e-9);
    ASSERT_NEAR(a.ph[0].seconds, 1220, 1e-9);
    ASSERT_NEAR(b.ph[0].seconds, 1420, 1e-9);
    ASSERT_TRUE(strcmp(b.plan, "row blocks") == 0 && strcmp(a.plan, "single pass") == 0);
    check_sums(&b);
}

static void check_sums(const nlsr_timing_pred *t)
{
    double s = 0, r = 0, c = 0, w = 0;
    for (int i = 0; i < t->nphases; i++) {
        s += t->ph[i].seconds;
        r += t->ph[i].read_s;
        c += t->ph[i].compute_s;
        w += t->ph[i].write_s;
    }
    ASSERT_NEAR(t->seconds, s, 1e-9);
    ASSERT_NEAR(t->read_s, r, 1e-9);
    ASSERT_NEAR(t->compute_s, c, 1e-9);
    ASSERT_NEAR(t->write_s, w, 1e-9);
    /* Overlap only hides time: never more than the parts, never less than the longest. */
    ASSERT_TRUE(t->seconds <= r + c + w + 1e-9);
}

static void test_single(void)
{
    nlsr_kernel_rates k = rates();
    k.xxh_bps = 1000;
    /* Two modules of 20000 BF16 elements; the first's patch kept. Disk: read 1000 B/s, write
     * 500 B/s; half the modules expected patched; fine-tune 100000 bytes, output 100000. */
    nlsr_timing_mod m[2] = {{20000, 16000, 2, 2, 2, 1, 1, 0}, {20000, 16000, 2, 2, 2, 1, 0, 0}};
    nlsr_timing_pred t;
    nlsr_timing_single(m, 2, 0, 0, 100000, 100000, 0.5, &k, 1000, 500, &t);
    ASSERT_EQ_I(t.nphases, 2);
    /* Phase A: reads 120 s each, computes 1100: R0 = 120, C0 = 1220, R1 = 240, C1 = 2320. */
    ASSERT_NEAR(t.ph[0].seconds, 2320, 1e-9);
    ASSERT_NEAR(t.ph[0].read_bytes, 240000, 0);
    /* Phase B: patched fine-tune bytes 0.5 x 80000 = 40000; read 0.5 x (40000 + 120000) =
     * 80000 (80 s) beside the merge 0.5 x (40000/400/2 + 20000/25) = 425 s (the kept patch
     * merged on two lanes): 425; the copies 100000 - 40000 = 60000 (60 s): reads 485 s; the
     * output 100000 / 500 = 200 s, half of it hidden under the reads: 485 + 100. */
    ASSERT_NEAR(t.ph[1].read_s, 140, 1e-9);
    ASSERT_NEAR(t.ph[1].compute_s, 425, 1e-9);
    ASSERT_NEAR(t.ph[1].write_s, 200, 1e-9);
    ASSERT_NEAR(t.ph[1].seconds, 585, 1e-9);
    ASSERT_NEAR(t.seconds, 2905, 1e-9);
    ASSERT_NEAR(t.read_s + t.compute_s + t.write_s - t.seconds, 380 + 2625 + 200 - 2905, 1e-9);
    /* Writes longer than the reads: the writes + half the reads. */
    nlsr_timing_single(m, 2, 0, 0, 100000, 100000, 0.5, &k, 1000, 100, &t);
    ASSERT_NEAR(t.ph[1].seconds, 1000 + 242.5, 1e-9);
    check_sums(&t);
    /* In place: the hash (80 s a module) hides under pass 3. Phase B journals the 40000
     * patched bytes: XXH64 40 s + two passes at the merge rate (compare and copy; bitmap and
     * gather) 200 s + zstd (200 B/s) of the changed elements' old bytes, 0.5 x 4000 x 2 x 2 =
     * 8000 bytes, 40 s: 280 s, on two threads (the journal's two builders) 140 s, beside the
     * merge's 425 s: 565 s, against the reads' 80 s; then the new bytes, 40000, and the journal:
     * the 8000 old bytes and the bitmap, 0.5 x 20000 / 8 x 2 = 2500 bytes, compressed to
     * half: 45250 bytes at 500 B/s, 90.5 s. */
    k.zstd_bps = 200;
    k.zstd_ratio = 0.5;
    nlsr_timing_single(m, 2, 1, 0, 100000, 100000, 0.5, &k, 1000, 500, &t);
    ASSERT_NEAR(t.ph[0].seconds, 2320, 1e-9);
    ASSERT_NEAR(t.ph[1].write_bytes, 45250, 0);
    ASSERT_NEAR(t.ph[1].read_s, 80, 1e-9);
    ASSERT_NEAR(t.ph[1].compute_s, 565, 1e-9);
    ASSERT_NEAR(t.ph[1].seconds, 655.5, 1e-9);
    ASSERT_NEAR(t.seconds, 2975.5, 1e-9);
    check_sums(&t);
    /* With a report (the audit): every streamed byte hashed on the computing thread (phase A:
     * 120000 bytes a module at 1000 B/s, 120 s more compute each: C0 = 120 + 1220, C1 = 1340 +
     * 1220 = 2560); phase B's 80000 streamed bytes (80 s more merge: 505); the output read back
     * (100 s at 1000 B/s) while hashed (100 s): a third phase of 100 s. */
    k.zstd_bps = 0;
    k.zstd_ratio = 0;
    nlsr_timing_single(m, 2, 0, 1, 100000, 100000, 0.5, &k, 1000, 500, &t);
    ASSERT_EQ_I(t.nphases, 3);
    ASSERT_NEAR(t.ph[0].seconds, 2560, 1e-9);
    ASSERT_NEAR(t.ph[1].compute_s, 505, 1e-9);
    ASSERT_NEAR(t.ph[1].seconds, 60 + 505 + 100, 1e-9);
    ASSERT_NEAR(t.ph[2].seconds, 100, 1e-9);
    check_sums(&t);
    /* Nothing patched: phase B in place costs nothing. */
    nlsr_timing_single(m, 2, 1, 0, 100000, 100000, 0, &k, 1000, 500, &t);
    ASSERT_NEAR(t.ph[1].seconds, 0, 1e-12);
}

static void test_patchfile(void)
{
    nlsr_kernel_rates k = rates();
    k.xxh_bps = 1000;
    nlsr_timing_mod m = {20000, 16000, 2, 2, 2, 1, 0, 0};
    nlsr_timing_pred t;
    nlsr_timing_patchfile(&m, 1, 100000, 100000, &k, 1000, 500, &t);
    ASSERT_EQ_I(t.nphases, 2);
    /* Prepare: base + aligned 80000 bytes (80 s), compute 1100 (hash hidden), the patches
     * 313 x 8 + 4000 x 2 = 10504 bytes at 500 B/s. */
    ASSERT_NEAR(t.ph[0].seconds, 80 + 1100 + 10504.0 / 500, 1e-9);
    /* Apply: 110504 bytes read (110.504 s) beside the merge 40000 / 400 = 100 s, then the
     * output 200 s. */
    ASSERT_NEAR(t.ph[1].seconds, 110.504 + 200, 1e-9);
    check_sums(&t);
}

static void test_patched_fraction(void)
{
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT; /* adaptive, 0.5, epsilon 0.2 */
    /* Three modules: 0.7, 0.5, 0.3. */
    ASSERT_NEAR(nlsr_timing_patched_fraction(&p, 3), 0.5, 1e-12);
    ASSERT_NEAR(nlsr_timing_patched_fraction(&p, 1), 0.5, 1e-12);
    /* Clamped: 0.7 + 0.4 = 1.1 -> 1, and 0.7. */
    p.select.prune_rate = 0.9;
    ASSERT_NEAR(nlsr_timing_patched_fraction(&p, 2), 0.85, 1e-12);
    p.select.mode = NLSR_SELECT_ALL;
    ASSERT_NEAR(nlsr_timing_patched_fraction(&p, 2), 1, 0);
    p.select.mode = NLSR_SELECT_NONE;
    ASSERT_NEAR(nlsr_timing_patched_fraction(&p, 2), 0, 0);
    p.select.mode = NLSR_SELECT_THRESHOLD; /* unknown before the similarities: at most all */
    ASSERT_NEAR(nlsr_timing_patched_fraction(&p, 2), 1, 0);
}

/* The calibration gives a rate for every pass and leaves the budget as it found it. */
static void test_calibrate(void)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_mem_budget(ctx, 256ull << 20);
    nlsr_kernel_rates k;
    ASSERT_EQ_I(nlsr_timing_calibrate(ctx, 1u << 16, &k), 0);
    ASSERT_TRUE(k.hist[0] > 0 && k.cands[0] > 0 && k.mask > 0 && k.xxh_bps > 0 && k.merge_bps > 0);
    ASSERT_TRUE(k.zstd_bps > 0 && k.zstd_ratio > 0 && k.zstd_ratio <= 1.01);
    ASSERT_TRUE(k.lanes == 1 || (k.hist[1] > 0 && k.cands[1] > 0));
    ASSERT_EQ_U(k.elems, 1u << 16);
    ASSERT_EQ_U(ctx->budget.used, 0);
    /* A budget too small for the default module takes a smaller one. */
    nlsr_ctx_set_mem_budget(ctx, 16ull << 20);
    ASSERT_EQ_I(nlsr_timing_calibrate(ctx, 0, &k), 0);
    ASSERT_TRUE(k.elems < (4ull << 20) && k.elems > 0);
    ASSERT_EQ_U(ctx->budget.used, 0);
    nlsr_ctx_free(ctx);
}

int main(int argc, char **argv)
{
    test_init(argc, argv);
    RUN_TEST(test_pipeline);
    RUN_TEST(test_module_compute);
    RUN_TEST(test_single);
    RUN_TEST(test_rows);
    RUN_TEST(test_patchfile);
    RUN_TEST(test_patched_fraction);
    RUN_TEST(test_calibrate);
    return test_finish();
}
