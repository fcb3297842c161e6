/* SPDX-License-Identifier: Apache-2.0 */
/* safetensors files: a validating reader and an atomic writer.
 *
 * Layout (https://github.com/huggingface/safetensors):
 *   bytes 0..7      N, little-endian u64, the header length (nlsr caps it at 100,000,000)
 *   bytes 8..8+N    UTF-8 JSON object: {"__metadata__": {str: str}?, name: {"dtype": "BF16",
 *                   "shape": [d0, ...], "data_offsets": [begin, end]}, ...}, space padded
 *   bytes 8+N..     the data section; offsets are relative to its start, tensors tile it
 *                   exactly (no gap, no overlap) and it ends at the end of the file.
 */
#ifndef NLSR_IO_SAFETENSORS_H
#define NLSR_IO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "../common/err.h"

#define NLSR_ST_MAX_HEADER 100000000ull
#define NLSR_ST_MAX_NDIM 16

typedef struct st_tensor {
    char *name;
    nlsr_dtype dtype;
    int ndim;
    uint64_t shape[NLSR_ST_MAX_NDIM];
    uint64_t numel;
    uint64_t begin, end; /* relative to the data section */
} st_tensor;

typedef struct st_meta {
    char *key, *value;
} st_meta;

typedef struct st_header {
    size_t ntensors;
    st_tensor *tensors; /* sorted by name (strcmp) */
    size_t nmeta;
    st_meta *meta;      /* in file order */
} st_header;

typedef struct st_file {
    char *path;
    int fd;
    uint64_t file_size;
    uint64_t data_start; /* 8 + N */
    st_header h;
} st_file;

/* Validates a header given as raw bytes. `data_size` is the size of the data section the file
 * has after the header. `path` only names the file in messages. Exposed for the fuzzer. */
int st_header_parse(const char *json, size_t len, uint64_t data_size, const char *path,
                    st_header *out, nlsr_err *e);
void st_header_clear(st_header *h);

/* Opens and validates a file; keeps the descriptor for reads. */
int st_open(const char *path, st_file **out, nlsr_err *e);
void st_close(st_file *f);
/* Index of a tensor by name in f->h.tensors, or -1. */
long st_find(const st_header *h, const char *name);

/* ---- writer --------------------------------------------------------------------------- */

typedef struct st_wtensor {
    const char *name;
    nlsr_dtype dtype;
    int ndim;
    const uint64_t *shape;
} st_wtensor;

typedef struct st_writer st_writer;

/* Starts `final_path` as a temporary file beside it, writing the header for the tensors in
 * the given order (which is also the data order) and the metadata pairs. */
int st_writer_begin(const char *final_path, const st_wtensor *t, size_t n, const st_meta *meta,
                    size_t nmeta, st_writer **out, nlsr_err *e);
/* Appends data bytes; the writer tracks that exactly the declared bytes are written. */
int st_writer_write(st_writer *w, const void *buf, size_t len);
/* Absolute file offset at which the data section starts. */
uint64_t st_writer_data_start(const st_writer *w);
/* fsyncs, renames into place and fsyncs the folder; frees w in every case. */
int st_writer_commit(st_writer *w);
/* Removes the temporary file and frees w. NULL is a no-op. */
void st_writer_abort(st_writer *w);

/* The exact JSON header bytes (with padding) the writer would produce; for round-trip tests
 * and the fuzzer. *out is malloc'd. */
int st_header_serialize(const st_wtensor *t, size_t n, const st_meta *meta, size_t nmeta,
                        char **out, size_t *len, uint64_t *data_size, nlsr_err *e);

#endif
