/* SPDX-License-Identifier: Apache-2.0 */
/* What memory the machine can give a job, and the budget `--mem-budget auto` derives from it:
 * MemAvailable from /proc/meminfo, and the cgroup's limit (v2 memory.max and memory.current,
 * v1 memory.limit_in_bytes and memory.usage_in_bytes) of this process's cgroup and its
 * ancestors, less the page cache the cgroup could reclaim. The budget is NLSR_AUTO_NUM /
 * NLSR_AUTO_DEN of the smaller room, between the floor and the ceiling below; README "Memory
 * budget" explains the choice. */
#ifndef NLSR_COMMON_SYSMEM_H
#define NLSR_COMMON_SYSMEM_H

#include <stddef.h>
#include <stdint.h>

/* Half: the rest covers what the budget does not count (code, libraries, the allocator's
 * slack, about 64 MiB) and leaves the page cache, which streams the checkpoints, its share. */
#define NLSR_AUTO_NUM 1u
#define NLSR_AUTO_DEN 2u
#define NLSR_AUTO_FLOOR (256ull << 20) /* the smallest budget every job runs in */
#define NLSR_AUTO_CEIL (64ull << 30)   /* beyond it no plan runs faster (70B single pass: 2.8 GiB,
                                        * 405B: about 7 GiB) */

typedef struct nlsr_sysmem {
    uint64_t mem_available; /* /proc/meminfo MemAvailable in bytes; 0 if unreadable */
    int cg_version;         /* 1 or 2: a cgroup limit applies; 0: none found or unlimited */
    uint64_t cg_limit;      /* the tightest limit's bytes */
    uint64_t cg_usage;      /* that cgroup's usage (memory.current / usage_in_bytes) */
    uint64_t cg_file;       /* of it, page cache (memory.stat file / total_cache) */
} nlsr_sysmem;

/* Reads the machine's figures under `root` ("" for the real /, a folder laid out like / in
 * tests). Missing or unreadable files leave their fields 0. */
void nlsr_sysmem_read(const char *root, nlsr_sysmem *m);
/* The auto budget for m, and in why (cap bytes) one phrase saying how it was derived, e.g.
 * "half of MemAvailable 12.4 GiB, below the cgroup limit 20.0 GiB". */
uint64_t nlsr_budget_auto(const nlsr_sysmem *m, char *why, size_t cap);

#endif
