/* SPDX-License-Identifier: Apache-2.0 */
/* nlsr_output_verify: whether a task of a split job (a sweep's checkpoint, docs/SCALE.md) is
 * already done. A requeued or repeated task skips an output only when it is a committed nlsr
 * folder and its weight files read back to the fingerprints its report recorded when the job
 * wrote them; anything less (no report, a file missing, changed or extra) is redone. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nlsr.h"
#include "../common/ctx.h"
#include "../common/budget.h"
#include "../common/err.h"
#include "../io/file.h"
#include "../io/outpath.h"
#include "../io/patchfile.h"
#include "split.h"

int nlsr_file_xxh64(nlsr_ctx *ctx, const char *path, uint64_t *h)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return 0;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return 0;
    }
    /* The read buffer is the job's like any other: 8 MiB, or half the room left, at least
     * 64 KiB. */
    uint64_t room = nlsr_budget_room(&ctx->budget) / 2;
    size_t chunk = room >= (8u << 20) ? (8u << 20) : room >= (64u << 10) ? (size_t)room : (64u << 10);
    unsigned char *buf = NULL;
    nlsr_err scratch;
    memset(&scratch, 0, sizeof scratch);
    if (nlsr_budget_alloc(&ctx->budget, chunk, "file hash buffer", (void **)&buf, &scratch) != 0) {
        close(fd);
        return 0;
    }
    nlsr_xxh64_state s;
    nlsr_xxh64_init(&s, 0);
    int ok = 1;
    for (ssize_t n; ok && (n = read(fd, buf, chunk)) != 0;) {
        if (n < 0) {
            if (errno == EINTR) continue;
            ok = 0;
            break;
        }
        nlsr_xxh64_update(&s, buf, (size_t)n);
    }
    nlsr_budget_free(&ctx->budget, buf, chunk);
    close(fd);
    *h = nlsr_xxh64_digest(&s);
    return ok;
}

static int count_weights(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    for (struct dirent *de; (de = readdir(d));) {
        size_t L = strlen(de->d_name);
        n += de->d_name[0] != '.' && L > 12 && strcmp(de->d_name + L - 12, ".safetensors") == 0;
    }
    closedir(d);
    return n;
}

int nlsr_output_verify(nlsr_ctx *ctx, const char *out_dir, const char *report)
{
    if (!nlsr_marker_present(out_dir)) return 0;
    size_t len = 0;
    char *txt = NULL;
    FILE *f = fopen(report, "re");
    if (!f) return 0;
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) && st.st_size < (64 << 20) &&
        (txt = malloc((size_t)st.st_size + 1)))
        len = fread(txt, 1, (size_t)st.st_size, f);
    fclose(f);
    if (!txt) return 0;
    txt[len] = '\0';
    cJSON *root = cJSON_Parse(txt);
    free(txt);
    int ok = root != NULL, listed = 0;
    const cJSON *outs = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(root, "audit"), "outputs");
    ok = ok && cJSON_IsArray(outs) && cJSON_GetArraySize(outs) > 0;
    const cJSON *o;
    cJSON_ArrayForEach(o, outs)
    {
        const cJSON *files = cJSON_GetObjectItemCaseSensitive(o, "files"), *fj;
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(o, "role");
        if (!cJSON_IsString(role) || strcmp(role->valuestring, "out") != 0) continue;
        cJSON_ArrayForEach(fj, files)
        {
            const cJSON *p = cJSON_GetObjectItemCaseSensitive(fj, "path");
            const cJSON *x = cJSON_GetObjectItemCaseSensitive(fj, "xxh64");
            if (!ok || !cJSON_IsString(p) || !cJSON_IsString(x)) {
                ok = 0;
                break;
            }
            const char *base = strrchr(p->valuestring, '/');
            char *path = nlsr_path_join(out_dir, base ? base + 1 : p->valuestring);
            uint64_t h = 0;
            char hex[20];
            ok = path && nlsr_file_xxh64(ctx, path, &h);
            snprintf(hex, sizeof hex, "%016" PRIx64, h);
            ok = ok && strcmp(hex, x->valuestring) == 0;
            free(path);
            listed++;
        }
    }
    cJSON_Delete(root);
    /* Every weight file there was one the job wrote: a folder with an extra one is not it. */
    return ok && listed > 0 && count_weights(out_dir) == listed;
}
