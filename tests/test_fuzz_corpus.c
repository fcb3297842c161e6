/* SPDX-License-Identifier: Apache-2.0 */
/* Replays every file of fuzz/corpus/ through fuzz_header's entry point, compiled here without
 * libFuzzer, so that the seeds (and any crasher added to them) run in every ctest run and,
 * in the sanitizer build, under ASan and UBSan. The entry point traps on any violated
 * invariant; this driver also checks that the seeds cover both verdicts, so an empty or
 * mislocated corpus cannot pass unnoticed.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/common/err.h"
#include "../src/io/safetensors.h"
#include "test.h"

#ifndef NLSR_FUZZ_CORPUS
#error "NLSR_FUZZ_CORPUS must name the corpus folder"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    unsigned char *buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            unsigned char *q = realloc(buf, cap *= 2);
            if (!q) free(buf);
            buf = q;
        }
    }
    fclose(f);
    *len = n;
    return buf;
}

/* The verdict st_header_parse gives an image, the way the fuzz target frames it: 1 accepted,
 * 0 refused, -1 not even framed (length field does not fit). */
static int verdict(const unsigned char *img, size_t size)
{
    if (size < 8) return -1;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | img[i];
    if (n > NLSR_ST_MAX_HEADER || n > size - 8) return -1;
    st_header h;
    nlsr_err e = {0};
    int rc = st_header_parse((const char *)img + 8, (size_t)n, size - 8 - n, "seed", &h, &e);
    if (rc == 0) st_header_clear(&h);
    return rc == 0;
}

static void test_corpus(void)
{
    DIR *d = opendir(NLSR_FUZZ_CORPUS);
    ASSERT_TRUE(d != NULL);
    if (!d) return;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        if (n == cap) {
            char **q = realloc(names, (cap = cap ? 2 * cap : 64) * sizeof *names);
            if (!q) break;
            names = q;
        }
        names[n++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_name);
    int accepted = 0, refused = 0;
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", NLSR_FUZZ_CORPUS, names[i]);
        size_t len = 0;
        unsigned char *img = slurp(path, &len);
        ASSERT_TRUE(img != NULL);
        if (img) {
            LLVMFuzzerTestOneInput(img, len); /* traps on a violated invariant */
            int v = verdict(img, len);
            /* Seeds say what they are: valid-* and fixture-* must parse, bad-* must not. */
            if (strncmp(names[i], "valid-", 6) == 0 || strncmp(names[i], "fixture-", 8) == 0) {
                if (v != 1) FAILF("seed %s should be accepted", names[i]);
            } else if (strncmp(names[i], "bad-", 4) == 0) {
                if (v != 0) FAILF("seed %s should be refused", names[i]);
            }
            accepted += v == 1;
            refused += v == 0;
        }
        free(img);
        free(names[i]);
    }
    free(names);
    printf("%zu corpus files: %d accepted, %d refused\n", n, accepted, refused);
    ASSERT_TRUE(accepted >= 10);
    ASSERT_TRUE(refused >= 10);
}

int main(void)
{
    RUN_TEST(test_corpus);
    return test_finish();
}
