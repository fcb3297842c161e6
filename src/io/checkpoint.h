/* SPDX-License-Identifier: Apache-2.0 */
/* A checkpoint: one safetensors file, a sharded folder with its index, or a PEFT adapter; a
 * Hugging Face hub cache snapshot or repository folder holding one (hub.h).
 * Tensors are kept in bytewise name order across all shards (METHOD.md's module order). */
#ifndef NLSR_IO_CHECKPOINT_H
#define NLSR_IO_CHECKPOINT_H

#include "safetensors.h"

typedef struct ck_entry {
    const st_tensor *t; /* owned by shards[shard] */
    uint32_t shard;
} ck_entry;

struct nlsr_ckpt {
    char *path;         /* as given (messages name it) */
    char *resolved;     /* hub cache repository folder: its snapshot folder; else NULL */
    int hub;            /* nlsr_hub_kind of path */
    char *dir;          /* folder holding the shards (and config files) */
    nlsr_ckpt_kind kind;
    char *index_name;   /* "model.safetensors.index.json" when sharded, else NULL */
    size_t nshards;
    st_file **shards;   /* sorted by file name */
    char **shard_names; /* base names, parallel to shards */
    size_t n;
    ck_entry *t;        /* sorted by name */
    /* PEFT adapter_config.json */
    int lora_r;
    double lora_alpha;
    size_t ntargets;
    char **targets;
};

/* Absolute offset in its shard's file of tensor i's first data byte. */
uint64_t ck_tensor_offset(const nlsr_ckpt *ck, size_t i);

#endif
