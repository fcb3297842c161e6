/* SPDX-License-Identifier: Apache-2.0 */
/* What goes into an output folder beside the weights a job writes: the policy that sorts every
 * entry of an input checkpoint folder, and the copy of the side files (README.md "What the
 * output folder holds").
 *
 * Classes, decided by name and by type after following links:
 *   WEIGHTS  the checkpoint's own shards (the files nlsr_ckpt_open reads); the job writes them.
 *   COPY     everything else that is not a weight: the index when sharded, config.json,
 *            generation_config.json, tokenizer and chat-template files, adapter_config.json,
 *            README.md, LICENSE, remote code (*.py) ... and sub-folders without weights, copied
 *            whole. Copies are regular files with the same bytes, also where the input is a link
 *            (a Hugging Face cache snapshot links every file into ../../blobs/).
 *   OTHER    weights the job does not realign, which a loader may pick up instead of (or beside)
 *            the realigned ones: other *.safetensors (consolidated.safetensors, model.safetensors
 *            beside an index), *.bin, *.pt, *.pth, *.ckpt, *.gguf, *.ggml, *.h5, *.hdf5, *.keras,
 *            *.msgpack, *.onnx, *.onnx_data, *.npz, *.npy, *.tflite, *.pdparams, *.ot, *.pkl,
 *            *.pickle, indexes of such files (pytorch_model.bin.index.json), and sub-folders
 *            holding any of them (original/). Refused unless the job may drop them; in place
 *            refused always.
 *   SKIP     dot-files (.gitattributes, .cache/, .nlsr-journal, .nlsr.lock, .nlsr-state.json),
 *            nlsr's temporary names (*.nlsr-tmp-*, *.nlsr-old-*) and patch files (*.nlsrp):
 *            never copied.
 *   BAD      neither a regular file nor a folder once links are followed (FIFO, socket, device,
 *            dangling or looping link): refused where anything is copied, never opened.
 */
#ifndef NLSR_IO_SIDEFILES_H
#define NLSR_IO_SIDEFILES_H

#include <stddef.h>
#include <stdint.h>

#include "../common/ctx.h"
#include "nlsr.h"

typedef enum nlsr_sf_class {
    NLSR_SF_WEIGHTS,
    NLSR_SF_COPY,
    NLSR_SF_OTHER,
    NLSR_SF_SKIP,
    NLSR_SF_BAD
} nlsr_sf_class;

typedef struct nlsr_sf_entry {
    char *name;        /* relative to the folder: "config.json", "extra/notes.txt", "original" */
    nlsr_sf_class cls;
    int is_dir;        /* a folder (COPY: created, its entries follow; OTHER: left out whole) */
    uint64_t bytes;    /* regular files: size */
    const char *what;  /* BAD: what it is ("a FIFO", "a dangling link" ...), static */
    char *holds;       /* OTHER folders: the first weight file found in it */
} nlsr_sf_entry;

typedef struct nlsr_sidefiles {
    int loaded;        /* scanned (and checked, for nlsr_sidefiles_load) */
    int dropped;       /* OTHER entries were left out (the job may drop them) */
    char *dir;         /* the folder scanned; NULL for a checkpoint given as a lone file */
    size_t n, cap;
    nlsr_sf_entry *e;  /* folder order: bytewise sorted names, a folder before its entries */
    uint64_t copy_bytes; /* bytes of the COPY files */
} nlsr_sidefiles;

/* Sorts every entry of ck's folder (nothing but the weights for a lone file). Fails only where
 * the folder cannot be listed; OTHER and BAD entries are recorded, not refused. */
int nlsr_sidefiles_scan(nlsr_ctx *ctx, const nlsr_ckpt *ck, nlsr_sidefiles *sf);

/* Scan, then the policy: OTHER entries are refused (NLSR_E_MISMATCH, one line naming them and
 * --drop-other-weights) unless drop; in place (in_place != 0) they are refused always and BAD
 * entries are let be (nothing is copied); otherwise a BAD entry is refused (NLSR_E_FORMAT).
 * Run it before anything is written. */
int nlsr_sidefiles_load(nlsr_ctx *ctx, const nlsr_ckpt *ck, int drop, int in_place,
                        nlsr_sidefiles *sf);

/* Copies the COPY entries of sf (loaded here first when it is not) into dst_dir, which the job
 * created: every file a new regular file (created exclusively, same bytes, fsynced), folders
 * made and fsynced. Counts the bytes in ctx and says in a notice of the log which weights were
 * left out. */
int nlsr_sidefiles_copy(nlsr_ctx *ctx, const nlsr_ckpt *ck, const char *dst_dir, int drop,
                        nlsr_sidefiles *sf);

void nlsr_sidefiles_free(nlsr_sidefiles *sf);

/* 1 if a file name looks like weights (the OTHER list above, case-insensitive). */
int nlsr_sidefiles_is_weight_name(const char *name);

#endif
