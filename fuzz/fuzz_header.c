/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target for the safetensors header parser.
 *
 * The input is a whole file image, as st_open sees it: an 8-byte little-endian header length
 * N, N header bytes, then the data section. Images whose N does not fit are refused here the
 * way st_open refuses them, so that every input reaching st_header_parse is one a real file
 * could present. The data bytes themselves are never read by the parser; only their count
 * matters.
 *
 * Besides "no crash, no leak, no undefined behaviour", an accepted header must satisfy what
 * the rest of nlsr relies on, and the writer must reproduce it: every violation traps, so
 * libFuzzer reports it as a finding.
 *
 * Built with -fsanitize=fuzzer by fuzz/CMakeLists.txt; tests/test_fuzz_corpus.c links the same
 * file without libFuzzer and replays fuzz/corpus/ in every ctest run.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../src/common/err.h"
#include "../src/io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                  \
    do {                                                                                          \
        if (!(c)) __builtin_trap();                                                               \
    } while (0)

static int cmp_by_offset(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* What callers rely on once a header has been accepted: name order, exact sizes, tiling. */
static void check_accepted(const st_header *h, uint64_t data_size)
{
    uint64_t pos = 0;
    for (size_t i = 0; i < h->ntensors; i++) {
        const st_tensor *t = &h->tensors[i];
        CHECK(t->name != NULL && t->name[0] != '\0');
        CHECK(i == 0 || strcmp(h->tensors[i - 1].name, t->name) < 0);
        CHECK((unsigned)t->dtype < NLSR_DTYPE_COUNT);
        CHECK(t->ndim >= 0 && t->ndim <= NLSR_ST_MAX_NDIM);
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            CHECK(t->shape[d] == 0 || numel <= UINT64_MAX / t->shape[d]);
            numel *= t->shape[d];
        }
        CHECK(numel == t->numel);
        CHECK(t->begin <= t->end && t->end <= data_size);
        CHECK(t->end - t->begin == numel * nlsr_dtype_size(t->dtype));
        pos += t->end - t->begin;
        CHECK(st_find(h, t->name) == (long)i);
    }
    CHECK(pos == data_size); /* tiles exactly: sizes add up to the data section */
    for (size_t i = 0; i < h->nmeta; i++) CHECK(h->meta[i].key && h->meta[i].value);
}

/* Serializes an accepted header with the writer's code and parses it back: the result must
 * describe the same tensors at the same offsets, with the same metadata. */
static void check_round_trip(const st_header *h, uint64_t data_size)
{
    const st_tensor **ord = malloc((h->ntensors ? h->ntensors : 1) * sizeof *ord);
    st_wtensor *wt = malloc((h->ntensors ? h->ntensors : 1) * sizeof *wt);
    CHECK(ord && wt);
    for (size_t i = 0; i < h->ntensors; i++) ord[i] = &h->tensors[i];
    qsort(ord, h->ntensors, sizeof *ord, cmp_by_offset);
    for (size_t i = 0; i < h->ntensors; i++)
        wt[i] = (st_wtensor){ord[i]->name, ord[i]->dtype, ord[i]->ndim, ord[i]->shape};
    char *json = NULL;
    size_t len = 0;
    uint64_t ds = 0;
    nlsr_err e = {0};
    CHECK(st_header_serialize(wt, h->ntensors, h->meta, h->nmeta, &json, &len, &ds, &e) == 0);
    CHECK(ds == data_size);
    CHECK((8 + len) % 8 == 0);
    st_header h2;
    CHECK(st_header_parse(json, len, ds, "round-trip", &h2, &e) == 0);
    CHECK(h2.ntensors == h->ntensors && h2.nmeta == h->nmeta);
    for (size_t i = 0; i < h->ntensors; i++) {
        const st_tensor *a = &h->tensors[i], *b = &h2.tensors[i];
        CHECK(strcmp(a->name, b->name) == 0 && a->dtype == b->dtype && a->ndim == b->ndim);
        CHECK(memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof a->shape[0]) == 0);
        CHECK(a->begin == b->begin && a->end == b->end && a->numel == b->numel);
    }
    for (size_t i = 0; i < h->nmeta; i++)
        CHECK(strcmp(h->meta[i].key, h2.meta[i].key) == 0 &&
              strcmp(h->meta[i].value, h2.meta[i].value) == 0);
    st_header_clear(&h2);
    free(json);
    free(wt);
    free(ord);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 8) return 0;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | data[i];
    if (n > NLSR_ST_MAX_HEADER || n > size - 8) return 0;
    /* A private copy, so that ASan catches any read past the N header bytes. */
    char *hdr = malloc(n ? (size_t)n : 1);
    if (!hdr) return 0;
    memcpy(hdr, data + 8, (size_t)n);
    uint64_t data_size = (uint64_t)(size - 8 - (size_t)n);
    st_header h;
    nlsr_err e = {0};
    int rc = st_header_parse(hdr, (size_t)n, data_size, "fuzz.safetensors", &h, &e);
    if (rc == 0) {
        CHECK(e.code == 0);
        check_accepted(&h, data_size);
        check_round_trip(&h, data_size);
        st_header_clear(&h);
    } else {
        /* A refusal is one line naming the file, and leaves nothing to free. */
        CHECK(rc == NLSR_E_FORMAT || rc == NLSR_E_DTYPE || rc == -ENOMEM);
        CHECK(e.code == rc && strncmp(e.msg, "fuzz.safetensors: ", 18) == 0);
        CHECK(strchr(e.msg, '\n') == NULL);
        CHECK(h.ntensors == 0 && h.tensors == NULL && h.nmeta == 0 && h.meta == NULL);
    }
    free(hdr);
    return 0;
}
