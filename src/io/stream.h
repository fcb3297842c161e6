/* SPDX-License-Identifier: Apache-2.0 */
/* Streaming reads of tensor element ranges from several checkpoints at once.
 *
 * A job describes its work as a list of units; each unit is up to NLSR_STREAM_MAX_SPANS spans
 * (one element range of one tensor of one checkpoint, e.g. the same rows of base, aligned and
 * fine-tuned). The stream delivers the units in order, each span as raw little-endian bytes in
 * the tensor's own dtype, reading ahead while the caller computes. All buffers are charged to
 * the context's memory budget when the stream is opened: depth x the largest unit. */
#ifndef NLSR_PLAN_STREAM_H
#define NLSR_PLAN_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "checkpoint.h"

#define NLSR_STREAM_MAX_SPANS 4

typedef struct nlsr_span {
    const nlsr_ckpt *ck;
    size_t tensor;       /* index in ck's name-sorted table */
    uint64_t first;      /* first element */
    uint64_t count;      /* elements */
} nlsr_span;

typedef struct nlsr_unit {
    int nspans;
    nlsr_span span[NLSR_STREAM_MAX_SPANS];
    uint64_t tag;        /* the caller's, e.g. module index */
} nlsr_unit;

typedef struct nlsr_stream nlsr_stream;

/* depth: units buffered (>= 1; 2 or more lets reads overlap compute). The unit array is
 * copied. */
int nlsr_stream_open(nlsr_ctx *ctx, const nlsr_unit *units, size_t nunits, unsigned depth,
                     nlsr_stream **out);
/* The same, with the buffers in `mem` (mem_len >= nlsr_stream_mem(units, nunits, depth),
 * 4096-byte aligned), carved from a job's arena that is charged to the budget as a whole;
 * nothing is charged here and mem stays the caller's. */
int nlsr_stream_open_in(nlsr_ctx *ctx, const nlsr_unit *units, size_t nunits, unsigned depth,
                        void *mem, size_t mem_len, nlsr_stream **out);
/* The next unit and its spans' bytes (data[k] for span k, valid until the next call).
 * Returns 1, 0 after the last unit, or a negative error. */
int nlsr_stream_next(nlsr_stream *s, const nlsr_unit **unit, const unsigned char *const **data);
/* Settles the reads that have completed and queues more, without waiting: a caller computing
 * on a large unit calls it every few milliseconds so that the disk never idles while the next
 * units are read (the stream otherwise queues new reads only inside nlsr_stream_next). Returns
 * 0 or the stream's error. */
int nlsr_stream_poll(nlsr_stream *s);
/* Frees buffers and releases their budget. NULL is a no-op. */
void nlsr_stream_close(nlsr_stream *s);

/* Bytes of one span. */
uint64_t nlsr_span_bytes(const nlsr_span *sp);

/* Buffer bytes one unit takes in a slot: each run of adjacent spans of one file is read as one
 * window widened to 4096-byte boundaries (O_DIRECT), so this is a little more than the sum of
 * its spans' bytes. */
uint64_t nlsr_stream_unit_bytes(const nlsr_unit *u);
/* What nlsr_stream_open charges to the budget for these units: depth (at most nunits) times
 * the largest unit's nlsr_stream_unit_bytes. */
uint64_t nlsr_stream_mem(const nlsr_unit *units, size_t nunits, unsigned depth);
/* The backend the stream reads with (after any step-down). */
nlsr_io_kind nlsr_stream_backend(const nlsr_stream *s);

#endif
