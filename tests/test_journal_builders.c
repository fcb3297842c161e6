/* SPDX-License-Identifier: Apache-2.0 */
/* The journal writer with two builder threads (nlsr_journal_opts.builders = 2) writes the same
 * journal and the same file bytes as with one: a file is patched through the journal twice,
 * once per setting, from the same original bytes and the same new bytes (units with runs of
 * changed grains of every length, some longer than a record, some unchanged grains between),
 * with small records and batches so that batches are written out between and inside ranges.
 * The two journals must be equal byte for byte past the preamble and slots (which hold the
 * random id), the two files equal to the new bytes, the result fingerprints equal, and a
 * rollback must restore the original bytes. Skipped (77) on a machine with one core, where
 * both settings build on one thread. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/io/journal.h"
#include "nlsr.h"
#include "test.h"
#include "test_bits.h"

#define SIZE ((6u << 20) + 3 * 4096u)
#define UNIT (1u << 20)

static unsigned char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = malloc(n > 0 ? (size_t)n : 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return p;
}

static int write_all(const char *path, const unsigned char *p, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(p, 1, len, f) == len;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* Patches dir/w.bin (holding orig) to neu through a journal with `builders`; its result. */
static uint64_t patch(const char *dir, const unsigned char *orig, const unsigned char *neu,
                      int builders)
{
    char path[512];
    snprintf(path, sizeof path, "%s/w.bin", dir);
    ASSERT_EQ_I(write_all(path, orig, SIZE), 0);
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_journal_opts o = {64u << 10, 320u << 10, 0, builders};
    nlsr_journal *j = NULL;
    uint32_t id = 0;
    uint64_t result = 0;
    ASSERT_EQ_I(nlsr_journal_begin(ctx, dir, &o, &j), 0);
    ASSERT_EQ_I(nlsr_journal_add_file(j, "w.bin", &id), 0);
    for (size_t at = 0; at < SIZE; at += UNIT) {
        size_t len = SIZE - at < UNIT ? SIZE - at : UNIT;
        ASSERT_EQ_I(nlsr_journal_stage_changed(j, id, at, orig + at, neu + at, len, 2), 0);
    }
    ASSERT_EQ_I(nlsr_journal_sync(j), 0);
    result = nlsr_journal_result(j);
    ASSERT_EQ_I(nlsr_journal_complete(j, "{\"test\":1}"), 0);
    nlsr_journal_close(j);
    nlsr_ctx_free(ctx);
    return result;
}

static void test_same_journal(void)
{
    if (sysconf(_SC_NPROCESSORS_ONLN) < 2) TEST_SKIP("one core: both settings use one thread");
    char tmpl[] = "/tmp/nlsr-test-jbuild-XXXXXX";
    char *root = mkdtemp(tmpl);
    ASSERT_TRUE(root != NULL);
    if (!root) return;
    char d1[600], d2[600];
    snprintf(d1, sizeof d1, "%s/one", root);
    snprintf(d2, sizeof d2, "%s/two", root);
    ASSERT_EQ_I(mkdir(d1, 0755), 0);
    ASSERT_EQ_I(mkdir(d2, 0755), 0);
    unsigned char *orig = malloc(SIZE), *neu = malloc(SIZE);
    ASSERT_TRUE(orig && neu);
    for (size_t i = 0; i < SIZE; i++) orig[i] = (unsigned char)rnd32();
    memcpy(neu, orig, SIZE);
    /* Grains (4 KiB) in runs: unchanged runs of 0..3 grains between changed runs of 1..40
     * grains (up to 2.5 records of 64 KiB), about a fifth of the elements of a changed grain
     * changed. */
    size_t g = 0, ng = SIZE / 4096;
    while (g < ng) {
        g += rnd32() % 4;
        size_t run = 1 + rnd32() % 40;
        for (; run > 0 && g < ng; run--, g++)
            for (size_t e = 0; e < 2048; e++)
                if (rnd32() % 5 == 0 || e == 0) neu[g * 4096 + 2 * e + rnd32() % 2] ^= 0x5A;
    }
    uint64_t r1 = patch(d1, orig, neu, 1), r2 = patch(d2, orig, neu, 2);
    ASSERT_TRUE(r1 == r2);
    char p1[700], p2[700];
    size_t l1 = 0, l2 = 0;
    snprintf(p1, sizeof p1, "%s/w.bin", d1);
    snprintf(p2, sizeof p2, "%s/w.bin", d2);
    unsigned char *f1 = read_all(p1, &l1), *f2 = read_all(p2, &l2);
    ASSERT_TRUE(f1 && f2 && l1 == SIZE && l2 == SIZE);
    ASSERT_TRUE(f1 && memcmp(f1, neu, SIZE) == 0);
    ASSERT_TRUE(f2 && memcmp(f2, neu, SIZE) == 0);
    free(f1);
    free(f2);
    snprintf(p1, sizeof p1, "%s/%s", d1, NLSR_JOURNAL_NAME);
    snprintf(p2, sizeof p2, "%s/%s", d2, NLSR_JOURNAL_NAME);
    unsigned char *j1 = read_all(p1, &l1), *j2 = read_all(p2, &l2);
    ASSERT_TRUE(j1 && j2 && l1 == l2 && l1 > NLSR_JOURNAL_DATA_START + 100 * 96u);
    if (j1 && j2 && l1 == l2)
        ASSERT_TRUE(memcmp(j1 + NLSR_JOURNAL_DATA_START, j2 + NLSR_JOURNAL_DATA_START,
                           l1 - NLSR_JOURNAL_DATA_START) == 0);
    free(j1);
    free(j2);
    /* The two-thread journal undoes the patch. */
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_journal_info info;
    ASSERT_EQ_I(nlsr_journal_rollback(ctx, d2, 0, &info), 0);
    nlsr_journal_info_free(&info);
    nlsr_ctx_free(ctx);
    snprintf(p2, sizeof p2, "%s/w.bin", d2);
    f2 = read_all(p2, &l2);
    ASSERT_TRUE(f2 && l2 == SIZE && memcmp(f2, orig, SIZE) == 0);
    free(f2);
    free(orig);
    free(neu);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0) fprintf(stderr, "  could not remove %s\n", root);
}

int main(int argc, char **argv)
{
    test_init(argc, argv);
    test_rng_seed(0xC0FFEE1234ull);
    RUN_TEST(test_same_journal);
    return test_finish();
}
