/* SPDX-License-Identifier: Apache-2.0 */
/* XXH64 written here from the xxHash specification (doc/xxhash_spec.md, "XXH64 algorithm"),
 * independently of src/io/patchfile.c, so that tests can check the fingerprints nlsr
 * reports. One-shot over a buffer; test_xxh64_selftest checks the published vectors. */
#ifndef NLSR_TEST_XXH64_H
#define NLSR_TEST_XXH64_H

#include <stddef.h>
#include <stdint.h>

#define TX_P1 0x9E3779B185EBCA87ull
#define TX_P2 0xC2B2AE3D27D4EB4Full
#define TX_P3 0x165667B19E3779F9ull
#define TX_P4 0x85EBCA77C2B2AE63ull
#define TX_P5 0x27D4EB2F165667C5ull

static uint64_t tx_rotl(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

static uint64_t tx_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static uint64_t tx_le32(const unsigned char *p)
{
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24;
}

static uint64_t tx_round(uint64_t acc, uint64_t lane)
{
    acc += lane * TX_P2;
    acc = tx_rotl(acc, 31);
    return acc * TX_P1;
}

static uint64_t tx_merge(uint64_t acc, uint64_t v)
{
    acc ^= tx_round(0, v);
    return acc * TX_P1 + TX_P4;
}

static uint64_t test_xxh64(const void *data, size_t len, uint64_t seed)
{
    const unsigned char *p = data, *end = p + len;
    uint64_t h;
    if (len >= 32) {
        uint64_t v1 = seed + TX_P1 + TX_P2, v2 = seed + TX_P2, v3 = seed, v4 = seed - TX_P1;
        while (end - p >= 32) {
            v1 = tx_round(v1, tx_le64(p));
            v2 = tx_round(v2, tx_le64(p + 8));
            v3 = tx_round(v3, tx_le64(p + 16));
            v4 = tx_round(v4, tx_le64(p + 24));
            p += 32;
        }
        h = tx_rotl(v1, 1) + tx_rotl(v2, 7) + tx_rotl(v3, 12) + tx_rotl(v4, 18);
        h = tx_merge(h, v1);
        h = tx_merge(h, v2);
        h = tx_merge(h, v3);
        h = tx_merge(h, v4);
    } else {
        h = seed + TX_P5;
    }
    h += (uint64_t)len;
    while (end - p >= 8) {
        h ^= tx_round(0, tx_le64(p));
        h = tx_rotl(h, 27) * TX_P1 + TX_P4;
        p += 8;
    }
    if (end - p >= 4) {
        h ^= tx_le32(p) * TX_P1;
        h = tx_rotl(h, 23) * TX_P2 + TX_P3;
        p += 4;
    }
    while (p < end) {
        h ^= (uint64_t)*p * TX_P5;
        h = tx_rotl(h, 11) * TX_P1;
        p++;
    }
    h ^= h >> 33;
    h *= TX_P2;
    h ^= h >> 29;
    h *= TX_P3;
    h ^= h >> 32;
    return h;
}

/* Published vectors: "", "a", "abc" (xxhsum -H64) and python-xxhash's README example (39
 * bytes: the 32-byte stripe path). 1 if all match. */
static int test_xxh64_selftest(void)
{
    return test_xxh64("", 0, 0) == 0xEF46DB3751D8E999ull &&
           test_xxh64("a", 1, 0) == 0xD24EC4F1A98C6E5Bull &&
           test_xxh64("abc", 3, 0) == 0x44BC2CF5AD770999ull &&
           test_xxh64("Nobody inspects the spammish repetition", 39, 0) == 0xFBCEA83C8A378BF1ull;
}

#endif
