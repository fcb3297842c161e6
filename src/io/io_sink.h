/* SPDX-License-Identifier: Apache-2.0 */
/* The sink: sequential writing of whole output files through the I/O backends.
 *
 * A file is built under "<final>.nlsr-tmp-<pid>" beside its destination, preallocated to its
 * announced size, filled front to back through nbuf buffers of `chunk` bytes that are written
 * asynchronously (O_DIRECT where the file system allows: chunks start at multiples of
 * NLSR_IO_ALIGN in the file, the last one is padded and the file truncated back), then fsynced
 * and renamed into place, so an interrupted run never leaves a file that looks complete. With
 * the mmap backend the buffers are windows of a shared mapping of the file instead.
 *
 * Callers either copy bytes in (nlsr_sink_write) or compute straight into the sink's memory
 * (nlsr_sink_reserve, then nlsr_sink_commit of what they filled). Element boundaries of
 * safetensors data never straddle two reservations as long as the data section starts at a
 * multiple of 8 (the writer's padding guarantees it) and elements are at most 8 bytes. */
#ifndef NLSR_IO_IO_SINK_H
#define NLSR_IO_IO_SINK_H

#include <stddef.h>
#include <stdint.h>

#include "../common/ctx.h"

typedef struct nlsr_sink nlsr_sink;

/* Memory the sink charges: nbuf * chunk (chunk rounded up to NLSR_IO_ALIGN). */
uint64_t nlsr_sink_mem(size_t chunk, unsigned nbuf);

/* kind: NLSR_IO_AUTO (step down on failure), or a forced backend. The buffers are charged to
 * ctx->budget here; bytes written are added to ctx->bytes_written as files complete. */
int nlsr_sink_create(nlsr_ctx *ctx, nlsr_io_kind kind, size_t chunk, unsigned nbuf,
                     nlsr_sink **out);
/* The same, with the buffers in `mem` (nlsr_sink_mem(chunk, nbuf) bytes, 4096-byte aligned)
 * carved from a job's arena charged as a whole: nothing is charged here, mem stays the
 * caller's. */
int nlsr_sink_create_in(nlsr_ctx *ctx, nlsr_io_kind kind, size_t chunk, unsigned nbuf,
                        void *mem, nlsr_sink **out);
void nlsr_sink_free(nlsr_sink *s);
/* The backend in use (after any step-down). */
nlsr_io_kind nlsr_sink_kind(const nlsr_sink *s);

/* Starts final_path (one file at a time). size: the exact size the file will have. */
int nlsr_sink_begin(nlsr_sink *s, const char *final_path, uint64_t size);
/* Space to fill at the current position: *avail > 0 bytes at *p. */
int nlsr_sink_reserve(nlsr_sink *s, unsigned char **p, size_t *avail);
/* Declares the first n bytes of the last reservation filled. */
int nlsr_sink_commit(nlsr_sink *s, size_t n);
/* Copies len bytes in. */
int nlsr_sink_write(nlsr_sink *s, const void *src, size_t len);
/* Writes what is left, checks the size, fsyncs, renames into place and fsyncs the folder. */
int nlsr_sink_end(nlsr_sink *s);
/* Abandons the current file and removes its temporary. No-op without one. */
void nlsr_sink_cancel(nlsr_sink *s);

#endif
