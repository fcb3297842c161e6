/* SPDX-License-Identifier: Apache-2.0 */
/* The output folder's contents beside the weights: which entries of an input checkpoint folder
 * are copied, left out or refused (the policy is in sidefiles.h), and the copy itself. */
#define _GNU_SOURCE
#include "../common/log.h"
#include "sidefiles.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dirent.h>

#include "checkpoint.h"
#include "file.h"

/* Deeper than this is a link loop or nothing a model folder holds. */
#define MAX_DEPTH 8
#define COPY_BUF (256u << 10)

static const char *const weight_ext[] = {
    ".safetensors", ".bin",   ".pt",     ".pth",        ".ckpt", ".gguf",   ".ggml",
    ".h5",          ".hdf5",  ".keras",  ".msgpack",    ".onnx", ".onnx_data", ".npz",
    ".npy",         ".tflite", ".pdparams", ".ot",      ".pkl",  ".pickle",
};

static int ends_with_ci(const char *s, size_t L, const char *suf)
{
    size_t n = strlen(suf);
    return L >= n && strncasecmp(s + L - n, suf, n) == 0;
}

int nlsr_sidefiles_is_weight_name(const char *name)
{
    size_t L = strlen(name);
    /* An index of weights (pytorch_model.bin.index.json) points a loader at them. */
    if (ends_with_ci(name, L, ".index.json")) L -= strlen(".index.json");
    for (size_t i = 0; i < sizeof weight_ext / sizeof weight_ext[0]; i++)
        if (ends_with_ci(name, L, weight_ext[i])) return 1;
    return 0;
}

/* Dot-files (VCS and cache bookkeeping, nlsr's lock, journal and state), nlsr's temporary
 * names and prepared patch files are not part of the model. */
static int is_skipped(const char *nm)
{
    size_t L = strlen(nm);
    return nm[0] == '.' || strstr(nm, ".nlsr-tmp-") || strstr(nm, ".nlsr-old-") ||
           ends_with_ci(nm, L, ".nlsrp");
}

static void entry_free(nlsr_sf_entry *x)
{
    free(x->name);
    free(x->holds);
}

void nlsr_sidefiles_free(nlsr_sidefiles *sf)
{
    if (!sf) return;
    for (size_t i = 0; i < sf->n; i++) entry_free(&sf->e[i]);
    free(sf->e);
    free(sf->dir);
    memset(sf, 0, sizeof *sf);
}

static int add(nlsr_sidefiles *sf, nlsr_err *e, const char *name, nlsr_sf_class cls, int is_dir,
               uint64_t bytes, const char *what)
{
    if (sf->n == sf->cap) {
        size_t cap = sf->cap ? 2 * sf->cap : 16;
        nlsr_sf_entry *ne = realloc(sf->e, cap * sizeof *ne);
        NLSR_FAIL_IF(!ne, e, -ENOMEM, "out of memory");
        sf->e = ne;
        sf->cap = cap;
    }
    nlsr_sf_entry *x = &sf->e[sf->n];
    memset(x, 0, sizeof *x);
    x->name = strdup(name);
    NLSR_FAIL_IF(!x->name, e, -ENOMEM, "out of memory");
    x->cls = cls;
    x->is_dir = is_dir;
    x->bytes = bytes;
    x->what = what;
    sf->n++;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The sorted names of a folder (without . and ..). */
static int list_dir(const char *path, char ***names, size_t *n, nlsr_err *e)
{
    *names = NULL;
    *n = 0;
    DIR *d = opendir(path);
    NLSR_FAIL_IF(!d, e, -errno, "%s: cannot list folder: %s", path, strerror(errno));
    size_t cap = 0;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 32;
            char **nn = realloc(*names, cap * sizeof *nn);
            if (!nn) {
                rc = nlsr_fail(e, -ENOMEM, "out of memory");
                break;
            }
            *names = nn;
        }
        if (!((*names)[*n] = strdup(de->d_name))) {
            rc = nlsr_fail(e, -ENOMEM, "out of memory");
            break;
        }
        (*n)++;
    }
    closedir(d);
    if (rc == 0) qsort(*names, *n, sizeof **names, cmp_str);
    return rc;
}

/* What an entry is once links are followed: 'd' folder, 'f' regular file, or *what says. */
static int kind_of(const char *path, struct stat *st, const char **what, nlsr_err *e)
{
    struct stat ls;
    *what = NULL;
    NLSR_FAIL_IF(lstat(path, &ls) != 0, e, -errno, "%s: cannot stat: %s", path, strerror(errno));
    if (stat(path, st) != 0) {
        int err = errno;
        NLSR_FAIL_IF(!S_ISLNK(ls.st_mode), e, -err, "%s: cannot stat: %s", path, strerror(err));
        *what = err == ENOENT ? "a dangling link" : err == ELOOP ? "a link loop"
                                                                 : "a link that cannot be followed";
        return 0;
    }
    if (S_ISDIR(st->st_mode)) return 'd';
    if (S_ISREG(st->st_mode)) return 'f';
    *what = S_ISFIFO(st->st_mode)   ? "a FIFO"
            : S_ISSOCK(st->st_mode) ? "a socket"
            : S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode) ? "a device"
                                                           : "not a regular file";
    return 0;
}

static int scan_dir(nlsr_sidefiles *sf, const nlsr_ckpt *ck, const char *rel, int depth,
                    nlsr_err *e);

static int scan_entry(nlsr_sidefiles *sf, const nlsr_ckpt *ck, const char *rel, const char *nm,
                      int depth, nlsr_err *e)
{
    char *name = rel ? nlsr_path_join(rel, nm) : strdup(nm);
    char *path = name ? nlsr_path_join(sf->dir, name) : NULL;
    int rc = 0;
    if (!name || !path) {
        rc = nlsr_fail(e, -ENOMEM, "out of memory");
        goto done;
    }
    if (is_skipped(nm)) {
        rc = add(sf, e, name, NLSR_SF_SKIP, 0, 0, NULL);
        goto done;
    }
    struct stat st;
    const char *what = NULL;
    int k = kind_of(path, &st, &what, e);
    if (k < 0) {
        rc = k;
    } else if (k == 0) {
        rc = add(sf, e, name, NLSR_SF_BAD, 0, 0, what);
    } else if (k == 'f') {
        nlsr_sf_class c = NLSR_SF_COPY;
        for (size_t i = 0; !rel && i < ck->nshards && c == NLSR_SF_COPY; i++)
            if (strcmp(ck->shard_names[i], nm) == 0) c = NLSR_SF_WEIGHTS;
        int own_index = !rel && ck->index_name && strcmp(ck->index_name, nm) == 0;
        if (c == NLSR_SF_COPY && !own_index && nlsr_sidefiles_is_weight_name(nm))
            c = NLSR_SF_OTHER;
        rc = add(sf, e, name, c, 0, (uint64_t)st.st_size, NULL);
        if (rc == 0 && c == NLSR_SF_COPY) sf->copy_bytes += (uint64_t)st.st_size;
    } else if (depth >= MAX_DEPTH) {
        rc = add(sf, e, name, NLSR_SF_BAD, 1, 0, "a folder nested too deep (a link loop?)");
    } else {
        /* A folder is copied whole unless it holds weights anywhere: then it goes whole. */
        size_t start = sf->n;
        uint64_t bytes0 = sf->copy_bytes;
        rc = add(sf, e, name, NLSR_SF_COPY, 1, 0, NULL);
        if (rc == 0) rc = scan_dir(sf, ck, name, depth + 1, e);
        size_t w = start + 1;
        while (rc == 0 && w < sf->n && sf->e[w].cls != NLSR_SF_OTHER) w++;
        if (rc == 0 && w < sf->n) {
            char *holds = strdup(sf->e[w].name);
            for (size_t i = start + 1; i < sf->n; i++) entry_free(&sf->e[i]);
            sf->n = start + 1;
            sf->copy_bytes = bytes0;
            sf->e[start].cls = NLSR_SF_OTHER;
            sf->e[start].holds = holds;
            if (!holds) rc = nlsr_fail(e, -ENOMEM, "out of memory");
        }
    }
done:
    free(path);
    free(name);
    return rc;
}

static int scan_dir(nlsr_sidefiles *sf, const nlsr_ckpt *ck, const char *rel, int depth,
                    nlsr_err *e)
{
    char *path = rel ? nlsr_path_join(sf->dir, rel) : strdup(sf->dir);
    NLSR_FAIL_IF(!path, e, -ENOMEM, "out of memory");
    char **names = NULL;
    size_t n = 0;
    int rc = list_dir(path, &names, &n, e);
    for (size_t i = 0; i < n && rc == 0; i++) rc = scan_entry(sf, ck, rel, names[i], depth, e);
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    free(path);
    return rc;
}

int nlsr_sidefiles_scan(nlsr_ctx *ctx, const nlsr_ckpt *ck, nlsr_sidefiles *sf)
{
    nlsr_err *e = &ctx->err;
    memset(sf, 0, sizeof *sf);
    int rc = 0;
    if (nlsr_is_dir(ck->path) == 1) {
        /* A folder: every entry, the shards among them. */
        sf->dir = strdup(ck->dir);
        rc = sf->dir ? scan_dir(sf, ck, NULL, 0, e) : nlsr_fail(e, -ENOMEM, "out of memory");
    } else {
        /* A lone file: its neighbours are not part of it. */
        for (size_t i = 0; i < ck->nshards && rc == 0; i++)
            rc = add(sf, e, ck->shard_names[i], NLSR_SF_WEIGHTS, 0, ck->shards[i]->file_size,
                     NULL);
    }
    if (rc < 0) nlsr_sidefiles_free(sf);
    else sf->loaded = 1;
    return rc;
}

/* "a, b/, c" of the entries of one class, cut short with a count where it gets long. */
static void names_of(const nlsr_sidefiles *sf, nlsr_sf_class cls, char *buf, size_t cap)
{
    size_t k = 0, total = 0, shown = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sf->n; i++) {
        const nlsr_sf_entry *x = &sf->e[i];
        if (x->cls != cls) continue;
        total++;
        if (k + strlen(x->name) + 24 > cap / 2 && shown) continue;
        k += (size_t)snprintf(buf + k, cap - k, "%s%s%s", shown ? ", " : "", x->name,
                              x->is_dir ? "/" : "");
        if (k >= cap) k = cap - 1;
        shown++;
    }
    if (shown < total) snprintf(buf + k, cap - k, " and %zu more", total - shown);
}

int nlsr_sidefiles_load(nlsr_ctx *ctx, const nlsr_ckpt *ck, int drop, int in_place,
                        nlsr_sidefiles *sf)
{
    nlsr_err *e = &ctx->err;
    NLSR_FORWARD(nlsr_sidefiles_scan(ctx, ck, sf));
    char list[640];
    names_of(sf, NLSR_SF_OTHER, list, sizeof list);
    int rc = 0;
    if (list[0] && in_place)
        rc = nlsr_fail(e, NLSR_E_MISMATCH,
                       "%s: holds weights nlsr does not realign (%s): in place they would stay "
                       "beside the realigned shards, unpatched, for a loader to pick; move them "
                       "out of the folder, or write a new folder with --out and "
                       "--drop-other-weights",
                       ck->path, list);
    else if (list[0] && !drop)
        rc = nlsr_fail(e, NLSR_E_MISMATCH,
                       "%s: holds weights nlsr does not realign (%s), which the output would "
                       "carry unpatched; --drop-other-weights leaves them out",
                       ck->path, list);
    else if (list[0])
        sf->dropped = 1;
    for (size_t i = 0; i < sf->n && rc == 0 && !in_place; i++)
        if (sf->e[i].cls == NLSR_SF_BAD)
            rc = nlsr_fail(e, NLSR_E_FORMAT,
                           "%s/%s: is %s, not a regular file or folder; nlsr copies only those "
                           "into the output: remove it from the folder",
                           sf->dir, sf->e[i].name, sf->e[i].what);
    if (rc < 0) nlsr_sidefiles_free(sf);
    return rc;
}

/* One file: opened without blocking (a FIFO swapped in since the scan cannot hang us) and
 * checked to be regular before a byte is read; the copy is created exclusively. */
static int copy_one(const char *src, const char *dst, unsigned char **buf, uint64_t *bytes,
                    nlsr_err *e)
{
    int in = open(src, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    NLSR_FAIL_IF(in < 0, e, -errno, "%s: cannot open: %s", src, strerror(errno));
    int rc = 0, out = -1;
    struct stat st;
    if (fstat(in, &st) != 0) {
        rc = nlsr_fail(e, -errno, "%s: cannot stat: %s", src, strerror(errno));
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: is no longer a regular file; not copied", src);
        goto done;
    }
    if (!*buf && !(*buf = malloc(COPY_BUF))) {
        rc = nlsr_fail(e, -ENOMEM, "out of memory");
        goto done;
    }
    out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (out < 0) {
        rc = nlsr_fail(e, -errno, "%s: cannot create: %s", dst, strerror(errno));
        goto done;
    }
    rc = nlsr_copy_range(in, out, 0, (uint64_t)st.st_size, *buf, COPY_BUF, src, dst, e);
    if (rc == 0 && fsync(out) != 0)
        rc = nlsr_fail(e, -errno, "%s: fsync failed: %s", dst, strerror(errno));
    if (rc == 0) *bytes += (uint64_t)st.st_size;
done:
    if (out >= 0) close(out);
    close(in);
    return rc;
}

int nlsr_sidefiles_copy(nlsr_ctx *ctx, const nlsr_ckpt *ck, const char *dst_dir, int drop,
                        nlsr_sidefiles *sf)
{
    nlsr_err *e = &ctx->err;
    if (!sf->loaded) NLSR_FORWARD(nlsr_sidefiles_load(ctx, ck, drop, 0, sf));
    int rc = 0;
    uint64_t bytes = 0;
    unsigned char *buf = NULL;
    for (size_t i = 0; i < sf->n && rc == 0; i++) {
        const nlsr_sf_entry *x = &sf->e[i];
        if (x->cls != NLSR_SF_COPY) continue;
        char *s = nlsr_path_join(sf->dir, x->name), *t = nlsr_path_join(dst_dir, x->name);
        if (!s || !t) rc = nlsr_fail(e, -ENOMEM, "out of memory");
        else if (x->is_dir && mkdir(t, 0755) != 0)
            rc = nlsr_fail(e, -errno, "%s: cannot create folder: %s", t, strerror(errno));
        else if (!x->is_dir)
            rc = copy_one(s, t, &buf, &bytes, e);
        free(s);
        free(t);
    }
    free(buf);
    /* Files in the folders made here are durable once those folders are (the top one is the
     * job's, fsynced when it is renamed into place). */
    for (size_t i = 0; i < sf->n && rc == 0; i++) {
        if (sf->e[i].cls != NLSR_SF_COPY || !sf->e[i].is_dir) continue;
        char *t = nlsr_path_join(dst_dir, sf->e[i].name);
        rc = t ? nlsr_fsync_dir(t, e) : nlsr_fail(e, -ENOMEM, "out of memory");
        free(t);
    }
    ctx->bytes_written += bytes;
    if (rc == 0 && sf->dropped) {
        char list[640];
        names_of(sf, NLSR_SF_OTHER, list, sizeof list);
        nlsr_log(ctx, NLSR_LOG_NOTICE, "left out of the output (weights nlsr does not realign): %s",
                 list);
    }
    return rc;
}
