/* SPDX-License-Identifier: Apache-2.0 */
/* The prepared-patches file (.nlsrp): per module the safety-critical mask and the values the
 * transplant and the similarity need, in zstd-compressed blocks with checksums. Byte layout in
 * docs/FORMAT.md; in short:
 *
 *   0       8   magic "NLSRPTCH"
 *   8       4   u32 LE format version (2)
 *   12      4   u32 LE reserved, 0
 *   16      ..  blocks: zstd frames back to back, in directory order
 *   T       56N block table: one fixed 56-byte record per block, in directory order
 *   H       L   header: UTF-8 JSON (kind, sources, parameters, modules -> tensors, no blocks)
 *   H+L     56  trailer: u64 T, u64 N, u64 XXH64(table), u64 H, u64 L, u64 XXH64(header),
 *               magic "NLSRPEND"
 *
 * Table and header sit after the blocks so that the file is written in one streaming pass;
 * they are found from the fixed-size trailer. The per-block directory is a binary table read
 * in fixed-size chunks, never held whole: the reader's memory depends on the module count, not
 * on the block count (version 1 held a JSON entry per block, 8 million JSON nodes at 70B).
 * Every byte of the file is covered by a check: preamble and trailer by value, the table, the
 * header and each block by XXH64 (blocks also carry zstd's own content checksum), and the
 * blocks must tile [16, T) exactly.
 *
 * A module is one tensor for full weights ("weight") or two for LoRA ("lora_A", "lora_B"). Each
 * tensor record holds its name, shape, the dtype of the reference values stored, optionally
 * the dtype of base values stored beside them, and its blocks. A block covers the element
 * range [first, first + count) of its tensor and holds the sorted indices of the masked
 * elements in that range and, for each, the reference value (and base value).
 *
 * The writer builds the file under a temporary name and renames it into place on commit; the
 * reader validates the whole directory on open (streaming the table through one chunk) and
 * each block when it is read. Buffers, the table chunk and the parsed header are charged to
 * the context's memory budget. */
#ifndef NLSR_IO_PATCHFILE_H
#define NLSR_IO_PATCHFILE_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/ctx.h"

#define NLSR_PF_VERSION 2u
#define NLSR_PF_MAX_NDIM 8
/* Upper bound on the element count of one block; the writer's callers use at most this. */
#define NLSR_PF_MAX_BLOCK_ELEMS (1u << 24)

/* ---- XXH64 (Yann Collet's xxHash, 64-bit), used for checksums and content fingerprints ---- */
typedef struct nlsr_xxh64_state {
    uint64_t v[4], total;
    unsigned char buf[32];
    size_t nbuf;
    uint64_t seed;
} nlsr_xxh64_state;

void nlsr_xxh64_init(nlsr_xxh64_state *s, uint64_t seed);
void nlsr_xxh64_update(nlsr_xxh64_state *s, const void *p, size_t n);
uint64_t nlsr_xxh64_digest(const nlsr_xxh64_state *s);
uint64_t nlsr_xxh64(const void *p, size_t n, uint64_t seed);

/* ---- shared description ------------------------------------------------------------------- */

typedef struct nlsr_pf_block {
    uint64_t first, count;   /* element range of the tensor */
    uint64_t mask_count;     /* masked elements in the range */
    uint64_t offset, csize;  /* the zstd frame in the file */
    uint64_t usize;          /* its decompressed size */
    uint64_t xxh;            /* XXH64 of the frame's bytes */
} nlsr_pf_block;

typedef struct nlsr_pf_tensor {
    char *name;              /* the tensor's name in the checkpoints (LoRA: the factor's) */
    char *role;              /* "weight", "lora_A" or "lora_B" */
    nlsr_dtype ref_dtype;    /* dtype of the stored reference values */
    int has_base;            /* 1 if base values are stored beside them */
    nlsr_dtype base_dtype;
    int ndim;
    uint64_t shape[NLSR_PF_MAX_NDIM];
    uint64_t numel, mask_count;
    size_t nblocks;          /* ordered by first; they partition [0, numel) */
    uint64_t blk0;           /* the record of block 0 in the file's block table */
    uint64_t max_count;      /* the largest block's element count */
    uint64_t csize_total;    /* its blocks' compressed bytes (progress figures) */
} nlsr_pf_tensor;

typedef struct nlsr_pf_module {
    char *name;              /* full: the tensor name; LoRA: the module path */
    size_t ntensors;         /* 1 (full) or 2 (LoRA: A then B) */
    nlsr_pf_tensor *t;
} nlsr_pf_module;

/* ---- writer ------------------------------------------------------------------------------- */

typedef struct nlsr_pf_writer nlsr_pf_writer;

typedef struct nlsr_pf_tensor_desc {
    const char *name, *role;
    nlsr_dtype ref_dtype;
    int has_base;
    nlsr_dtype base_dtype;
    int ndim;
    const uint64_t *shape;
} nlsr_pf_tensor_desc;

/* Starts `path` (created as "<path>.nlsr-tmp-<pid>", renamed on commit; an existing `path` is
 * replaced then). `kind` is "full" or "lora". */
int nlsr_pf_writer_open(nlsr_ctx *ctx, const char *path, const char *kind, nlsr_pf_writer **out);
/* Modules in module order (strictly increasing names); tensors of a module in role order. */
int nlsr_pf_writer_begin_module(nlsr_pf_writer *w, const char *name);
int nlsr_pf_writer_begin_tensor(nlsr_pf_writer *w, const nlsr_pf_tensor_desc *d);
/* One block of the current tensor: elements [first, first+count), first == the end of the
 * previous block. idx[0..m) are the masked elements' absolute indices, strictly increasing
 * inside the range; ref holds m values in ref_dtype, base m values in base_dtype (or NULL
 * without base), both raw little-endian. count <= NLSR_PF_MAX_BLOCK_ELEMS. */
int nlsr_pf_writer_block(nlsr_pf_writer *w, uint64_t first, uint64_t count, const uint64_t *idx,
                         size_t m, const void *ref, const void *base);
/* Checks that the blocks cover the whole tensor. */
int nlsr_pf_writer_end_tensor(nlsr_pf_writer *w);
int nlsr_pf_writer_end_module(nlsr_pf_writer *w);
/* Writes the header (with the items of `extra`, e.g. "sources" and "params", copied into its
 * top level) and the trailer, fsyncs and renames into place. Frees w in every case. The file's
 * final size in *file_bytes (may be NULL). */
int nlsr_pf_writer_commit(nlsr_pf_writer *w, const cJSON *extra, uint64_t *file_bytes);
/* Removes the temporary file and frees w. NULL is a no-op. */
void nlsr_pf_writer_abort(nlsr_pf_writer *w);

/* ---- reader ------------------------------------------------------------------------------- */

typedef struct nlsr_pf_reader {
    char *path;
    int fd;
    uint64_t file_size;
    cJSON *header;           /* the parsed header, for the callers' own fields */
    const char *kind;        /* "full" or "lora" (points into header) */
    size_t nmodules;
    nlsr_pf_module *modules; /* module order */
    uint64_t table_off, nrecords;
    struct nlsr_pf_tcache *tc; /* the block-table chunk last read (nlsr_pf_block_get) */
    uint64_t dir_charged;    /* budget charged for the header and the module records */
    /* scratch for nlsr_pf_read_block, charged to the budget */
    nlsr_ctx *ctx;
    unsigned char *cbuf, *ubuf;
    size_t cbuf_cap, ubuf_cap;
    uint64_t *idx;
    unsigned char *ref, *base;
    size_t val_cap;          /* elements the idx/ref/base arrays hold */
    uint64_t charged;
    void *dctx;              /* ZSTD_DCtx, reused for every block */
} nlsr_pf_reader;

/* A decoded block: views into the reader's scratch, valid until the next read. */
typedef struct nlsr_pf_view {
    size_t m;
    const uint64_t *idx;     /* absolute element indices, strictly increasing */
    const void *ref;         /* m values in ref_dtype */
    const void *base;        /* m values in base_dtype, NULL without base */
} nlsr_pf_view;

/* Opens and validates the file: preamble, trailer, header checksum and every structural rule
 * of the directory (block tiling, counts, shapes, dtypes, module order). NLSR_E_FORMAT or
 * NLSR_E_CHECKSUM with a message naming the file and what is wrong. */
int nlsr_pf_open(nlsr_ctx *ctx, const char *path, nlsr_pf_reader **out);
void nlsr_pf_close(nlsr_pf_reader *r);
/* The directory entry of block b of tensor t, from the block table (read in chunks, so
 * sequential calls cost one pread per chunk). Each entry was checked on open; it is checked
 * again against the tensor and the file layout here, so a file changed since is an error. */
int nlsr_pf_block_get(const nlsr_pf_reader *r, const nlsr_pf_tensor *t, size_t b,
                      nlsr_pf_block *out);
/* Reads, checks (XXH64, zstd checksum) and decodes block b of tensor t. */
int nlsr_pf_read_block(nlsr_pf_reader *r, const nlsr_pf_tensor *t, size_t b, nlsr_pf_view *v);
/* Index of the module named `name`, or -1 (binary search). */
long nlsr_pf_find(const nlsr_pf_reader *r, const char *name);

#endif
