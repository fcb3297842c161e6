/* SPDX-License-Identifier: Apache-2.0 */
/* --mem-budget auto: the figures of /proc/meminfo and the cgroup files, and the rule that turns
 * them into a budget (sysmem.h). */
#define _GNU_SOURCE
#include "sysmem.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nlsr.h"

/* "max" or a number of bytes on the first line; 0 if unreadable, UINT64_MAX for "max". */
static uint64_t read_u64(const char *root, const char *a, const char *b, const char *c)
{
    char path[4096];
    snprintf(path, sizeof path, "%s%s%s%s", root, a, b, c);
    FILE *f = fopen(path, "re");
    if (!f) return 0;
    char line[128] = "";
    uint64_t v = 0;
    if (fgets(line, sizeof line, f)) {
        if (strncmp(line, "max", 3) == 0) v = UINT64_MAX;
        else v = strtoull(line, NULL, 10);
    }
    fclose(f);
    return v;
}

/* The value of `key` (a "key value" line) in a memory.stat or meminfo file; 0 if none.
 * meminfo's values are in kB. */
static uint64_t read_key(const char *path, const char *key, uint64_t mul)
{
    FILE *f = fopen(path, "re");
    if (!f) return 0;
    char line[256];
    size_t kl = strlen(key);
    uint64_t v = 0;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, kl) == 0 && (line[kl] == ' ' || line[kl] == ':')) {
            v = strtoull(line + kl + 1 + strspn(line + kl + 1, " \t"), NULL, 10) * mul;
            break;
        }
    fclose(f);
    return v;
}

/* Limits of at least 2^60 bytes are "no limit" (cgroup v1 writes 9223372036854771712). */
#define NO_LIMIT (1ull << 60)

/* The cgroup in `dir` if it has a limit tighter (less room) than what m holds. */
static void consider(nlsr_sysmem *m, int version, const char *dir)
{
    uint64_t lim, use, file;
    char stat[4200];
    if (version == 2) {
        lim = read_u64(dir, "/memory.max", "", "");
        use = read_u64(dir, "/memory.current", "", "");
        snprintf(stat, sizeof stat, "%s/memory.stat", dir);
        file = read_key(stat, "file", 1);
    } else {
        lim = read_u64(dir, "/memory.limit_in_bytes", "", "");
        use = read_u64(dir, "/memory.usage_in_bytes", "", "");
        snprintf(stat, sizeof stat, "%s/memory.stat", dir);
        file = read_key(stat, "total_cache", 1);
        if (!file) file = read_key(stat, "cache", 1);
    }
    if (lim == 0 || lim >= NO_LIMIT) return;
    if (file > use) file = use;
    uint64_t room = use - file >= lim ? 0 : lim - (use - file);
    uint64_t old = !m->cg_version                           ? UINT64_MAX
                   : m->cg_usage - m->cg_file >= m->cg_limit ? 0
                                                             : m->cg_limit - (m->cg_usage - m->cg_file);
    if (room >= old) return;
    m->cg_version = version;
    m->cg_limit = lim;
    m->cg_usage = use;
    m->cg_file = file;
}

/* The cgroup at `rel` (as /proc/self/cgroup names it) under `base`, and each ancestor. */
static void walk(nlsr_sysmem *m, int version, const char *base, const char *rel)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s%s", base, rel);
    size_t root_len = strlen(base);
    for (;;) {
        size_t n = strlen(dir);
        while (n > root_len && dir[n - 1] == '/') dir[--n] = '\0';
        consider(m, version, dir);
        char *slash = strrchr(dir, '/');
        if (!slash || (size_t)(slash - dir) < root_len) break;
        *slash = '\0';
    }
}

void nlsr_sysmem_read(const char *root, nlsr_sysmem *m)
{
    memset(m, 0, sizeof *m);
    char path[4096];
    snprintf(path, sizeof path, "%s/proc/meminfo", root);
    m->mem_available = read_key(path, "MemAvailable", 1024);
    snprintf(path, sizeof path, "%s/proc/self/cgroup", root);
    FILE *f = fopen(path, "re");
    char line[4096];
    int found = 0;
    while (f && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) continue;
        *c1 = '\0';
        *c2 = '\0';
        const char *ctrl = c1 + 1, *rel = c2 + 1;
        char base[4200];
        if (strcmp(line, "0") == 0 && *ctrl == '\0') {
            snprintf(base, sizeof base, "%s/sys/fs/cgroup", root);
            walk(m, 2, base, rel);
            found = 1;
        } else {
            /* v1: the memory controller's line ("4:memory:/x" or "4:cpu,memory:/x") */
            char list[256];
            snprintf(list, sizeof list, ",%s,", ctrl);
            if (!strstr(list, ",memory,")) continue;
            snprintf(base, sizeof base, "%s/sys/fs/cgroup/memory", root);
            walk(m, 1, base, rel);
            found = 1;
        }
    }
    if (f) fclose(f);
    /* Without /proc/self/cgroup (or inside a namespace that hides it): the mount's top. */
    if (!found) {
        snprintf(path, sizeof path, "%s/sys/fs/cgroup", root);
        consider(m, 2, path);
        snprintf(path, sizeof path, "%s/sys/fs/cgroup/memory", root);
        consider(m, 1, path);
    }
}

static void gib(char *out, size_t cap, uint64_t v)
{
    if (v >= (1ull << 30)) snprintf(out, cap, "%.1f GiB", (double)v / 1073741824.0);
    else snprintf(out, cap, "%.0f MiB", (double)v / 1048576.0);
}

uint64_t nlsr_budget_auto(const nlsr_sysmem *m, char *why, size_t cap)
{
    char a[32], b[32], c[32];
    const char *frac = NLSR_AUTO_NUM * 2 == NLSR_AUTO_DEN ? "half" : "a share";
    uint64_t room = 0;
    if (m->cg_version) {
        uint64_t used = m->cg_usage - (m->cg_file < m->cg_usage ? m->cg_file : m->cg_usage);
        room = used >= m->cg_limit ? 0 : m->cg_limit - used;
    }
    uint64_t base;
    if (!m->mem_available && !m->cg_version) {
        snprintf(why, cap, "neither /proc/meminfo nor a cgroup limit readable: the default");
        return NLSR_DEFAULT_MEM_BUDGET;
    }
    int by_cg = m->cg_version && (!m->mem_available || room < m->mem_available);
    base = by_cg ? room : m->mem_available;
    uint64_t v = base / NLSR_AUTO_DEN * NLSR_AUTO_NUM;
    int n;
    if (by_cg) {
        gib(a, sizeof a, room);
        gib(b, sizeof b, m->cg_limit);
        gib(c, sizeof c, m->mem_available);
        n = snprintf(why, cap, "%s of the cgroup v%d room %s (limit %s less what it holds but "
                               "page cache)%s%s",
                     frac, m->cg_version, a, b, m->mem_available ? ", below MemAvailable " : "",
                     m->mem_available ? c : "");
    } else {
        gib(a, sizeof a, m->mem_available);
        gib(b, sizeof b, m->cg_limit);
        if (m->cg_version)
            n = snprintf(why, cap, "%s of MemAvailable %s, below the cgroup limit %s", frac, a, b);
        else n = snprintf(why, cap, "%s of MemAvailable %s, no cgroup limit", frac, a);
    }
    size_t used = n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
    if (v < NLSR_AUTO_FLOOR) {
        gib(a, sizeof a, NLSR_AUTO_FLOOR);
        snprintf(why + used, cap - used, ", raised to the floor %s", a);
        v = NLSR_AUTO_FLOOR;
    } else if (v > NLSR_AUTO_CEIL) {
        gib(a, sizeof a, NLSR_AUTO_CEIL);
        snprintf(why + used, cap - used, ", capped at %s", a);
        v = NLSR_AUTO_CEIL;
    }
    return v;
}
