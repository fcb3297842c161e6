/* SPDX-License-Identifier: Apache-2.0 */
/* Hugging Face hub cache layouts: which snapshot a repository folder means (hub.h). Only stat,
 * opendir, realpath and small reads: the cache is shared by every program on the machine (and
 * its blobs by every revision), so nlsr never writes into it, not even a lock file. */
#define _GNU_SOURCE
#include "hub.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../common/ctx.h"
#include "file.h"

#define DEFAULT_REVISION "main"
#define MAX_REF_FILE 4096
#define MIN_PREFIX 7

int nlsr_hub_revision_ok(const char *rev)
{
    size_t n = rev ? strlen(rev) : 0;
    if (n == 0 || n > NLSR_HUB_MAX_REVISION || rev[0] == '/' || rev[n - 1] == '/') return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)rev[i];
        if (c < 0x20 || c == 0x7f || c == '\\') return 0;
    }
    /* Every '/'-separated part is a plain name: no '', '.' or '..' that would leave refs/. */
    for (const char *p = rev; *p;) {
        const char *s = strchr(p, '/');
        size_t L = s ? (size_t)(s - p) : strlen(p);
        if (L == 0 || (L == 1 && p[0] == '.') || (L == 2 && p[0] == '.' && p[1] == '.')) return 0;
        p += L + (s != NULL);
    }
    return 1;
}

static int is_dir_at(const char *dir, const char *name)
{
    char *p = nlsr_path_join(dir, name);
    int r = p ? nlsr_is_dir(p) == 1 : 0;
    free(p);
    return r;
}

static int is_file_at(const char *dir, const char *name)
{
    char *p = nlsr_path_join(dir, name);
    struct stat st;
    int r = p && stat(p, &st) == 0 && S_ISREG(st.st_mode);
    free(p);
    return r;
}

/* "a, b, c" of a folder's entries (hidden ones skipped), shortened to fit `cap`. */
static void list_names(const char *dir, char *buf, size_t cap)
{
    size_t k = 0;
    buf[0] = '\0';
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(buf, cap, "none");
        return;
    }
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        size_t L = strlen(de->d_name);
        if (k + L + 8 >= cap) {
            snprintf(buf + k, cap - k, "%s...", n ? ", " : "");
            n++;
            break;
        }
        k += (size_t)snprintf(buf + k, cap - k, "%s%s", n ? ", " : "", de->d_name);
        n++;
    }
    closedir(d);
    if (n == 0) snprintf(buf, cap, "none");
}

/* A commit hash as refs/ files hold it: one plain name (hex in practice). */
static int commit_ok(const char *s)
{
    if (!*s || strcmp(s, ".") == 0 || strcmp(s, "..") == 0) return 0;
    for (; *s; s++)
        if (*s == '/' || *s == '\\' || !isgraph((unsigned char)*s)) return 0;
    return 1;
}

static int all_hex(const char *s)
{
    for (; *s; s++)
        if (!isxdigit((unsigned char)*s)) return 0;
    return 1;
}

/* The snapshot `rev` names in repository folder `repo` (`shown` names it in messages). */
static int resolve_repo(const char *repo, const char *shown, const char *rev, char **out,
                        nlsr_err *e)
{
    char refs_list[160], snaps_list[240];
    *out = NULL;
    const char *r = rev ? rev : DEFAULT_REVISION;
    char *refdir = nlsr_path_join(repo, "refs");
    char *snapdir = nlsr_path_join(repo, "snapshots");
    if (!refdir || !snapdir) {
        free(refdir);
        free(snapdir);
        return nlsr_fail(e, -ENOMEM, "%s: out of memory", shown);
    }
    int rc = 0;
    char *text = NULL;
    size_t len = 0;
    if (is_file_at(refdir, r)) {
        char *rp = nlsr_path_join(refdir, r);
        rc = rp ? nlsr_read_small_file(rp, MAX_REF_FILE, &text, &len, e)
                : nlsr_fail(e, -ENOMEM, "%s: out of memory", shown);
        free(rp);
        if (rc == 0) {
            while (len > 0 && isspace((unsigned char)text[len - 1])) text[--len] = '\0';
            if (!commit_ok(text))
                rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: refs/%s holds '%.64s', not a commit hash",
                               shown, r, text);
            else if (!is_dir_at(snapdir, text))
                rc = nlsr_fail(e, NLSR_E_NOTFOUND,
                               "%s: refs/%s names %s, which has no snapshots/%s/ folder (not "
                               "downloaded yet?)",
                               shown, r, text, text);
            else if (!(*out = nlsr_path_join(snapdir, text)))
                rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", shown);
        }
    } else if (!strchr(r, '/') && is_dir_at(snapdir, r)) {
        if (!(*out = nlsr_path_join(snapdir, r)))
            rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", shown);
    } else {
        /* An abbreviated commit hash, as `git log --oneline` prints it: unique prefix only. */
        char *match = NULL;
        int nmatch = 0;
        size_t L = strlen(r);
        if (L >= MIN_PREFIX && all_hex(r)) {
            DIR *d = opendir(snapdir);
            struct dirent *de;
            while (d && (de = readdir(d)) != NULL)
                if (strncmp(de->d_name, r, L) == 0 && is_dir_at(snapdir, de->d_name)) {
                    if (nmatch++ == 0) match = strdup(de->d_name);
                }
            if (d) closedir(d);
        }
        if (nmatch == 1 && match) {
            if (!(*out = nlsr_path_join(snapdir, match)))
                rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", shown);
        } else {
            list_names(refdir, refs_list, sizeof refs_list);
            list_names(snapdir, snaps_list, sizeof snaps_list);
            if (nmatch > 1)
                rc = nlsr_fail(e, NLSR_E_USAGE,
                               "%s: revision '%s' is the start of %d snapshot names; give more "
                               "of the commit hash (snapshots: %s)",
                               shown, r, nmatch, snaps_list);
            else if (!rev)
                rc = nlsr_fail(e, NLSR_E_NOTFOUND,
                               "%s: a hub cache repository folder without refs/main: pass "
                               "--revision REF-OR-COMMIT (refs: %s; snapshots: %s)",
                               shown, refs_list, snaps_list);
            else
                rc = nlsr_fail(e, NLSR_E_NOTFOUND,
                               "%s: no revision '%s': neither refs/%s nor snapshots/%s/ (refs: "
                               "%s; snapshots: %s)",
                               shown, r, r, r, refs_list, snaps_list);
        }
        free(match);
    }
    free(text);
    free(refdir);
    free(snapdir);
    return rc;
}

/* Folder names a checkpoint folder holds; a repository folder holds none of them. */
static int has_checkpoint_files(const char *dir)
{
    static const char *const names[] = {"model.safetensors", "model.safetensors.index.json",
                                        "adapter_model.safetensors", "adapter_config.json"};
    char *p;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        p = nlsr_path_join(dir, names[i]);
        int hit = p && nlsr_exists(p);
        free(p);
        if (hit) return 1;
    }
    return 0;
}

static char *parent_of(const char *p)
{
    char *d = strdup(p);
    char *s = d ? strrchr(d, '/') : NULL;
    if (!s) {
        free(d);
        return NULL;
    }
    if (s == d) s[1] = '\0';
    else *s = '\0';
    return d;
}

static const char *base_of(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

int nlsr_hub_resolve(const char *path, const char *revision, nlsr_hub_kind *kind,
                     char **resolved, nlsr_err *e)
{
    *kind = NLSR_HUB_NONE;
    *resolved = NULL;
    NLSR_FAIL_IF(revision && !nlsr_hub_revision_ok(revision), e, NLSR_E_USAGE,
                 "revision '%.300s' is not a ref name or commit hash (no '..', '.', empty or "
                 "leading '/' parts)",
                 revision);
    if (nlsr_is_dir(path) != 1) return 0;
    if (is_dir_at(path, "snapshots") && !has_checkpoint_files(path)) {
        *kind = NLSR_HUB_REPO;
        return resolve_repo(path, path, revision, resolved, e);
    }
    /* A snapshot: the real folder sits in a folder named snapshots beside blobs/ or refs/ (the
     * snapshot folders are real folders; only the files in them are links). */
    char *real = realpath(path, NULL);
    char *snaps = real ? parent_of(real) : NULL;
    char *repo = snaps ? parent_of(snaps) : NULL;
    int rc = 0;
    if (repo && strcmp(base_of(snaps), "snapshots") == 0 &&
        (is_dir_at(repo, "blobs") || is_dir_at(repo, "refs"))) {
        *kind = NLSR_HUB_SNAPSHOT;
        char *want = NULL;
        /* A snapshot is a pinned revision already: the revision (meant for the repository
         * folders among the inputs) only contradicts it when this repository has it too. */
        nlsr_err saved = *e;
        if (revision) rc = resolve_repo(repo, repo, revision, &want, e);
        if (rc == NLSR_E_NOTFOUND) {
            *e = saved;
            rc = 0;
        }
        char *want_real = want ? realpath(want, NULL) : NULL;
        if (rc == 0 && want && (!want_real || strcmp(want_real, real) != 0))
            rc = nlsr_fail(e, NLSR_E_USAGE,
                           "%s: is snapshot %s, but revision '%s' is snapshot %s; give the "
                           "repository folder %s to read that revision",
                           path, base_of(real), revision, base_of(want), repo);
        free(want_real);
        free(want);
    }
    free(repo);
    free(snaps);
    free(real);
    return rc;
}

int nlsr_ctx_set_revision(nlsr_ctx *ctx, const char *revision)
{
    if (!revision) {
        ctx->revision[0] = '\0';
        return 0;
    }
    NLSR_FAIL_IF(!nlsr_hub_revision_ok(revision), &ctx->err, NLSR_E_USAGE,
                 "revision '%.300s' is not a ref name or commit hash (no '..', '.', empty or "
                 "leading '/' parts)",
                 revision);
    snprintf(ctx->revision, sizeof ctx->revision, "%s", revision);
    return 0;
}
