/* SPDX-License-Identifier: Apache-2.0 */
/* --mem-budget auto: the figures read from a fake root laid out like / (meminfo, cgroup v2 and
 * v1 files), and the budget and reason derived from them. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../src/common/sysmem.h"
#include "../src/io/outpath.h"
#include "nlsr.h"
#include "test.h"

static char root[64];

static void put(const char *rel, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    for (char *p = path + strlen(root) + 1; (p = strchr(p, '/')); p++) {
        *p = '\0';
        mkdir(path, 0755);
        *p = '/';
    }
    FILE *f = fopen(path, "w");
    if (!f) abort();
    fputs(text, f);
    fclose(f);
}

#define GiB (1ull << 30)

static void test_meminfo_only(void)
{
    put("proc/meminfo", "MemTotal:       24000000 kB\nMemAvailable:   13002342 kB\n");
    put("proc/self/cgroup", "0::/\n");
    nlsr_sysmem m;
    nlsr_sysmem_read(root, &m);
    ASSERT_EQ_U(m.mem_available, 13002342ull * 1024);
    ASSERT_EQ_I(m.cg_version, 0);
    char why[224];
    uint64_t b = nlsr_budget_auto(&m, why, sizeof why);
    ASSERT_EQ_U(b, 13002342ull * 1024 / 2);
    ASSERT_STR_EQ(why, "half of MemAvailable 12.4 GiB, no cgroup limit");
}

/* The cgroup v2 limit of an ancestor applies; page cache counts as room. */
static void test_cgroup_v2(void)
{
    put("proc/meminfo", "MemAvailable:   13002342 kB\n");
    put("proc/self/cgroup", "0::/jobs/j1\n");
    put("sys/fs/cgroup/jobs/j1/memory.max", "max\n");
    put("sys/fs/cgroup/jobs/j1/memory.current", "1000\n");
    put("sys/fs/cgroup/jobs/memory.max", "8589934592\n");           /* 8 GiB */
    put("sys/fs/cgroup/jobs/memory.current", "6442450944\n");       /* 6 GiB held ... */
    put("sys/fs/cgroup/jobs/memory.stat", "anon 1\nfile 3221225472\n"); /* ... 3 of it cache */
    nlsr_sysmem m;
    nlsr_sysmem_read(root, &m);
    ASSERT_EQ_I(m.cg_version, 2);
    ASSERT_EQ_U(m.cg_limit, 8 * GiB);
    char why[224];
    uint64_t b = nlsr_budget_auto(&m, why, sizeof why);
    ASSERT_EQ_U(b, 5 * GiB / 2); /* room 8 - (6 - 3) = 5 GiB, below MemAvailable */
    ASSERT_CONTAINS(why, "cgroup v2 room 5.0 GiB (limit 8.0 GiB");
    ASSERT_CONTAINS(why, "below MemAvailable 12.4 GiB");
    /* A looser limit than MemAvailable: MemAvailable decides, the limit is named. */
    put("sys/fs/cgroup/jobs/memory.max", "21474836480\n");
    nlsr_sysmem_read(root, &m);
    b = nlsr_budget_auto(&m, why, sizeof why);
    ASSERT_EQ_U(b, 13002342ull * 1024 / 2);
    ASSERT_STR_EQ(why, "half of MemAvailable 12.4 GiB, below the cgroup limit 20.0 GiB");
}

static void test_cgroup_v1_floor_ceiling(void)
{
    put("proc/meminfo", "MemAvailable:   900000 kB\n");
    put("proc/self/cgroup", "5:cpu,memory:/box\n3:pids:/box\n");
    put("sys/fs/cgroup/memory/box/memory.limit_in_bytes", "9223372036854771712\n"); /* none */
    put("sys/fs/cgroup/memory/box/memory.usage_in_bytes", "5\n");
    nlsr_sysmem m;
    nlsr_sysmem_read(root, &m);
    ASSERT_EQ_I(m.cg_version, 0);
    put("sys/fs/cgroup/memory/box/memory.limit_in_bytes", "402653184\n"); /* 384 MiB */
    put("sys/fs/cgroup/memory/box/memory.usage_in_bytes", "268435456\n");
    put("sys/fs/cgroup/memory/box/memory.stat", "cache 0\ntotal_cache 0\n");
    nlsr_sysmem_read(root, &m);
    ASSERT_EQ_I(m.cg_version, 1);
    char why[224];
    uint64_t b = nlsr_budget_auto(&m, why, sizeof why);
    ASSERT_EQ_U(b, NLSR_AUTO_FLOOR); /* half of 128 MiB is below the floor */
    ASSERT_CONTAINS(why, "raised to the floor 256 MiB");
    nlsr_sysmem big = {.mem_available = 1024 * GiB};
    ASSERT_EQ_U(nlsr_budget_auto(&big, why, sizeof why), NLSR_AUTO_CEIL);
    ASSERT_CONTAINS(why, "capped at 64.0 GiB");
    nlsr_sysmem none = {0};
    ASSERT_EQ_U(nlsr_budget_auto(&none, why, sizeof why), NLSR_DEFAULT_MEM_BUDGET);
}

/* The public side: "auto" parses, resolves to bytes with a reason; a number stays exact. */
static void test_ctx(void)
{
    uint64_t v = 0;
    ASSERT_EQ_I(nlsr_parse_mem_budget("auto", &v), 0);
    ASSERT_TRUE(v == NLSR_MEM_BUDGET_AUTO);
    ASSERT_EQ_I(nlsr_parse_mem_budget("512M", &v), 0);
    ASSERT_EQ_U(v, 512ull << 20);
    ASSERT_TRUE(nlsr_parse_mem_budget("automatic", &v) != 0);
    nlsr_ctx *ctx = nlsr_ctx_create();
    ASSERT_EQ_U(nlsr_ctx_mem_budget(ctx), NLSR_DEFAULT_MEM_BUDGET);
    nlsr_ctx_set_mem_budget(ctx, NLSR_MEM_BUDGET_AUTO);
    ASSERT_TRUE(nlsr_ctx_mem_budget(ctx) >= NLSR_AUTO_FLOOR &&
                nlsr_ctx_mem_budget(ctx) <= NLSR_AUTO_CEIL);
    ASSERT_TRUE(strlen(nlsr_ctx_mem_budget_reason(ctx)) > 0);
    nlsr_ctx_set_mem_budget(ctx, 512ull << 20);
    ASSERT_EQ_U(nlsr_ctx_mem_budget(ctx), 512ull << 20);
    ASSERT_STR_EQ(nlsr_ctx_mem_budget_reason(ctx), "");
    nlsr_ctx_free(ctx);
}

int main(void)
{
    snprintf(root, sizeof root, "/tmp/nlsr-test-sysmem-XXXXXX");
    if (!mkdtemp(root)) return 1;
    RUN_TEST(test_meminfo_only);
    RUN_TEST(test_cgroup_v2);
    RUN_TEST(test_cgroup_v1_floor_ceiling);
    RUN_TEST(test_ctx);
    int rc = test_finish();
    if (rc == 0) (void)nlsr_tree_remove(root);
    return rc;
}
