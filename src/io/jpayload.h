/* SPDX-License-Identifier: Apache-2.0 */
/* The undo journal's payload kernels (journal.c; layout in docs/JOURNAL.md): byte planes, and
 * version 2's sparse payload of a range (the bitmap of the elements that change, then their
 * original bytes as byte planes) with its inverse. Kept apart from the writer so that the
 * vectorized paths can be tested against the plain ones (tests/test_jpayload.c). */
#ifndef NLSR_IO_JPAYLOAD_H
#define NLSR_IO_JPAYLOAD_H

#include <stddef.h>
#include <stdint.h>

/* Bytes of the bitmap of m elements. */
static inline size_t nlsr_jp_bitmap_bytes(size_t m)
{
    return (m + 7) / 8;
}

/* Set bits of x, without the library call a build for generic x86-64 makes of the builtin. */
unsigned nlsr_jp_popcount64(uint64_t x);

/* Byte j of element i goes to j*m + i (m = len / w elements of w bytes), and back. */
void nlsr_jp_to_planes(const unsigned char *src, unsigned char *dst, size_t len, size_t w);
void nlsr_jp_from_planes(const unsigned char *src, unsigned char *dst, size_t len, size_t w);

/* A version 2 range payload in dst: the bitmap of the elements whose new bytes differ from the
 * original ones (bit i%8 of byte i/8 for element i), then the c changed elements' original
 * bytes as byte planes (byte j of the k-th changed element at j*c + k). Returns its length,
 * at most nlsr_jp_bitmap_bytes(len / w) + len (dst's room). w is 1, 2, 4 or 8 and divides len.
 * Vectorized where the CPU allows (SSE2 compares, an SSSE3 gather for width 2). */
size_t nlsr_jp_sparse(const unsigned char *orig, const unsigned char *neu, size_t len, size_t w,
                      unsigned char *dst);
/* The same bytes from plain element loops: the reference the test holds the other to. */
size_t nlsr_jp_sparse_scalar(const unsigned char *orig, const unsigned char *neu, size_t len,
                             size_t w, unsigned char *dst);

/* Rebuilds a version 2 range's original bytes in out from its decoded payload (pay, plen
 * bytes) and the range's current bytes `cur`: changed elements from the payload, the others
 * from the file (their original bytes were never changed). 0, or 1 when plen does not match
 * the bitmap. */
int nlsr_jp_sparse_restore(const unsigned char *pay, size_t plen, const unsigned char *cur,
                           size_t len, size_t w, unsigned char *out);

#endif
