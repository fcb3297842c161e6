/* SPDX-License-Identifier: Apache-2.0 */
/* Output paths, temporary names, tree removal and safe opens: the rules are in outpath.h. */
#define _GNU_SOURCE
#include "../common/log.h"
#include "outpath.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "../common/testhook.h"
#include "file.h"

#define MARKER_MAGIC "nlsr-output 1\n"
#define XATTR_NAME "user.nlsr.owner"
/* Deeper trees than this are not removed: nothing nlsr writes is more than two levels deep,
 * and a hostile tree must not exhaust descriptors or the stack. */
#define MAX_DEPTH 64

/* ---- small path helpers ------------------------------------------------------------------ */

static char *dir_of(const char *path)
{
    char *d = strdup(path);
    if (!d) return NULL;
    char *s = strrchr(d, '/');
    if (!s) {
        free(d);
        return strdup(".");
    }
    if (s == d) s[1] = '\0';
    else *s = '\0';
    return d;
}

static const char *base_of(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static int path_inside(const char *inner, const char *outer)
{
    size_t n = strlen(outer);
    if (n == 1 && outer[0] == '/') return inner[0] == '/' && inner[1] != '\0';
    return strncmp(inner, outer, n) == 0 && inner[n] == '/';
}

static const char *type_name(mode_t m)
{
    return nlsr_file_type_name(m);
}

static mode_t file_mode(void)
{
    /* The umask from /proc (umask(2) would change it, racing other threads). */
    mode_t mask = 022;
    FILE *f = fopen("/proc/self/status", "re");
    if (f) {
        char line[128];
        while (fgets(line, sizeof line, f))
            if (strncmp(line, "Umask:", 6) == 0) {
                mask = (mode_t)strtoul(line + 6, NULL, 8);
                break;
            }
        fclose(f);
    }
    return mask;
}

/* ---- resolution ------------------------------------------------------------------------- */

int nlsr_out_resolve(nlsr_err *e, const char *path, char **abs)
{
    *abs = NULL;
    NLSR_FAIL_IF(!path || !*path, e, NLSR_E_USAGE, "an output path is empty");
    char *full = NULL;
    if (path[0] == '/') full = strdup(path);
    else {
        char cwd[PATH_MAX];
        NLSR_FAIL_IF(!getcwd(cwd, sizeof cwd), e, -errno, "cannot read the current folder: %s",
                     strerror(errno));
        full = nlsr_path_join(cwd, path);
    }
    NLSR_FAIL_IF(!full, e, -ENOMEM, "out of memory");
    size_t cap = strlen(full) + PATH_MAX + 2;
    char *cur = malloc(cap);
    if (!cur) {
        free(full);
        return nlsr_fail(e, -ENOMEM, "out of memory");
    }
    strcpy(cur, "/");
    int rc = 0;
    size_t tail = 0; /* components appended lexically below the last existing folder */
    char *save = NULL;
    for (char *c = strtok_r(full, "/", &save); c && rc == 0; c = strtok_r(NULL, "/", &save)) {
        if (strcmp(c, ".") == 0) continue;
        if (strcmp(c, "..") == 0) {
            char *s = strrchr(cur, '/');
            if (s == cur) cur[1] = '\0';
            else if (s) *s = '\0';
            if (tail > 0) tail--;
            continue;
        }
        size_t L = strlen(cur);
        if (L + strlen(c) + 2 >= cap) {
            rc = nlsr_fail(e, -ENAMETOOLONG, "%s: path too long", path);
            break;
        }
        if (L > 1) cur[L++] = '/';
        strcpy(cur + L, c);
        if (tail > 0) {
            tail++;
            continue;
        }
        /* The final component is never followed; one with anything after it (even "." or
         * "..") is traversed by the kernel, so it is resolved as the kernel would. */
        const char *q = save;
        while (q && *q == '/') q++;
        if (!q || !*q) continue;
        struct stat st;
        if (lstat(cur, &st) != 0) {
            if (errno != ENOENT) {
                rc = nlsr_fail(e, -errno, "%s: cannot resolve %s: %s", path, cur, strerror(errno));
                break;
            }
            tail = 1;
            continue;
        }
        char *r = realpath(cur, NULL);
        if (!r) {
            rc = nlsr_fail(e, -errno, "%s: cannot resolve %s: %s", path, cur, strerror(errno));
            break;
        }
        if (stat(r, &st) != 0 || !S_ISDIR(st.st_mode)) {
            rc = nlsr_fail(e, NLSR_E_USAGE, "%s: %s is not a folder", path, cur);
            free(r);
            break;
        }
        if (strlen(r) + 1 > cap) {
            rc = nlsr_fail(e, -ENAMETOOLONG, "%s: path too long", path);
            free(r);
            break;
        }
        strcpy(cur, r);
        free(r);
    }
    free(full);
    if (rc < 0) {
        free(cur);
        return rc;
    }
    *abs = cur;
    return 0;
}

/* ---- the inputs an output must keep away from --------------------------------------------- */

typedef struct prot {
    char *path;     /* resolved */
    const char *given;
    int dir;
    dev_t dev;
    ino_t ino;
} prot;

typedef struct prot_set {
    prot *v;
    size_t n, cap;
} prot_set;

static int prot_add(prot_set *s, const char *resolved, const char *given, const struct stat *st)
{
    if (s->n == s->cap) {
        size_t c = s->cap ? s->cap * 2 : 16;
        prot *v = realloc(s->v, c * sizeof *v);
        if (!v) return -ENOMEM;
        s->v = v;
        s->cap = c;
    }
    char *p = strdup(resolved);
    if (!p) return -ENOMEM;
    s->v[s->n++] = (prot){p, given, S_ISDIR(st->st_mode), st->st_dev, st->st_ino};
    return 0;
}

static void prot_free(prot_set *s)
{
    for (size_t i = 0; i < s->n; i++) free(s->v[i].path);
    free(s->v);
}

/* An input, and every file or folder its folder's entries resolve to (links into a hub cache's
 * blobs/, hard links by inode). Paths that do not resolve are left to the job's own open. */
static int prot_input(prot_set *s, const char *given)
{
    char *r = realpath(given, NULL);
    if (!r) return 0;
    struct stat st;
    int rc = 0;
    if (stat(r, &st) == 0) rc = prot_add(s, r, given, &st);
    if (rc == 0 && S_ISDIR(st.st_mode)) {
        DIR *d = opendir(r);
        struct dirent *de;
        while (rc == 0 && d && (de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
            char *p = nlsr_path_join(r, de->d_name);
            if (!p) {
                rc = -ENOMEM;
                break;
            }
            struct stat ls, ts;
            if (lstat(p, &ls) == 0) {
                if (S_ISLNK(ls.st_mode)) {
                    char *t = realpath(p, NULL);
                    if (t && stat(t, &ts) == 0) rc = prot_add(s, t, given, &ts);
                    free(t);
                } else if (S_ISREG(ls.st_mode)) {
                    rc = prot_add(s, p, given, &ls);
                }
            }
            free(p);
        }
        if (d) closedir(d);
    }
    free(r);
    return rc;
}

static int dir_is_empty(const char *path)
{
    DIR *d = opendir(path);
    if (!d) return 0;
    struct dirent *de;
    int empty = 1;
    while (empty && (de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) empty = 0;
    closedir(d);
    return empty;
}

/* What --force may replace at an existing folder: one nlsr wrote, or an empty one. */
static int replaceable_dir(nlsr_err *e, const char *shown, const char *abs)
{
    struct stat st;
    if (lstat(abs, &st) != 0) return 0;
    NLSR_FAIL_IF(S_ISLNK(st.st_mode), e, NLSR_E_USAGE,
                 "%s is a symbolic link: nlsr never writes or deletes through links; remove the "
                 "link or choose another output",
                 shown);
    NLSR_FAIL_IF(!S_ISDIR(st.st_mode), e, NLSR_E_USAGE,
                 "%s exists and is a %s, not a folder: nlsr never replaces it, even with --force",
                 shown, type_name(st.st_mode));
    NLSR_FAIL_IF(!nlsr_marker_present(abs) && !dir_is_empty(abs), e, NLSR_E_USAGE,
                 "%s is a folder nlsr did not write (no %s marker) and is not empty: not "
                 "replaced, even with --force; remove it yourself or choose another output",
                 shown, NLSR_MARKER_NAME);
    return 0;
}

int nlsr_out_check(nlsr_ctx *ctx, const char *out, nlsr_out_kind kind, int force,
                   const char *const *inputs, size_t ninputs, char **resolved)
{
    nlsr_err *e = &ctx->err;
    if (resolved) *resolved = NULL;
    char *o = NULL;
    NLSR_FORWARD(nlsr_out_resolve(e, out, &o));
    prot_set s = {0};
    int rc = 0;
    for (size_t i = 0; i < ninputs && rc == 0; i++)
        if (inputs[i]) rc = prot_input(&s, inputs[i]);
    if (rc < 0) rc = nlsr_fail(e, rc, "out of memory");
    struct stat ost;
    int exists = rc == 0 && lstat(o, &ost) == 0;
    for (size_t i = 0; i < s.n && rc == 0; i++) {
        const prot *P = &s.v[i];
        const char *how = NULL;
        if (strcmp(o, P->path) == 0) how = "the same path";
        else if (P->dir && path_inside(o, P->path)) how = "inside it";
        else if (path_inside(P->path, o)) how = "the output would contain it";
        else if (exists && !P->dir && S_ISREG(ost.st_mode) && ost.st_dev == P->dev &&
                 ost.st_ino == P->ino)
            how = "the same file under another name";
        if (how)
            rc = nlsr_fail(e, NLSR_E_USAGE,
                           "output %s is on input %s (%s%s%s): write it outside the input "
                           "checkpoints",
                           out, P->given, how, strcmp(P->given, P->path) ? ": " : "",
                           strcmp(P->given, P->path) ? P->path : "");
    }
    prot_free(&s);
    if (rc == 0 && exists) {
        if (S_ISLNK(ost.st_mode))
            rc = nlsr_fail(e, NLSR_E_USAGE,
                           "%s is a symbolic link: nlsr never writes or deletes through links; "
                           "remove the link or choose another output",
                           out);
        else if (kind == NLSR_OUT_FILE && S_ISDIR(ost.st_mode))
            rc = nlsr_fail(e, NLSR_E_USAGE, "%s: is a folder, not a file name", out);
        else if (kind == NLSR_OUT_FILE && !S_ISREG(ost.st_mode))
            rc = nlsr_fail(e, NLSR_E_USAGE,
                           "%s exists and is a %s: nlsr never replaces it, even with --force",
                           out, type_name(ost.st_mode));
        else if (kind == NLSR_OUT_DIR && !S_ISDIR(ost.st_mode))
            rc = nlsr_fail(e, NLSR_E_USAGE,
                           "%s exists and is a %s, not a folder: nlsr never replaces it, even "
                           "with --force",
                           out, type_name(ost.st_mode));
        else if (!force)
            rc = nlsr_fail(e, NLSR_E_EXISTS, "%s: exists (use --force to replace it)", out);
        else if (kind == NLSR_OUT_DIR)
            rc = replaceable_dir(e, out, o);
    }
    if (rc == 0 && resolved) *resolved = o;
    else free(o);
    return rc;
}

/* ---- owner markers ---------------------------------------------------------------------- */

static void read_line_file(const char *path, char *buf, size_t cap)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "re");
    if (!f) return;
    if (fgets(buf, (int)cap, f)) buf[strcspn(buf, "\n")] = '\0';
    fclose(f);
}

/* Field 22 of /proc/PID/stat: the process's start time in clock ticks since boot. */
static unsigned long long proc_start(long pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    read_line_file(path, buf, sizeof buf);
    char *p = strrchr(buf, ')');
    if (!p) return 0;
    unsigned long long v = 0;
    int field = 2;
    for (char *save = NULL, *t = strtok_r(p + 1, " ", &save); t; t = strtok_r(NULL, " ", &save))
        if (++field == 22) {
            v = strtoull(t, NULL, 10);
            break;
        }
    return v;
}

static void owner_text(char *buf, size_t cap)
{
    char host[256] = "", boot[64];
    if (gethostname(host, sizeof host - 1) != 0) strcpy(host, "?");
    read_line_file("/proc/sys/kernel/random/boot_id", boot, sizeof boot);
    long pid = (long)getpid();
    snprintf(buf, cap, MARKER_MAGIC "host %s\nboot %s\npid %ld\nstart %llu\n", host, boot, pid,
             proc_start(pid));
}

/* 1: the owner named by marker text is a process of this host that no longer runs; 0: alive or
 * unknown (another host, unreadable); -1: not an nlsr marker. *pid gets the owner's pid. */
static int owner_dead(const char *txt, long *pid)
{
    *pid = 0;
    if (strncmp(txt, MARKER_MAGIC, strlen(MARKER_MAGIC)) != 0) return -1;
    char host[256] = "", boot[64] = "";
    unsigned long long start = 0;
    const char *h = strstr(txt, "\nhost "), *b = strstr(txt, "\nboot "), *p = strstr(txt, "\npid "),
               *s = strstr(txt, "\nstart ");
    if (!h || !b || !p || !s) return -1;
    if (strstr(txt, "\ncommitted\n")) return 0; /* a finished output, never a leftover */
    sscanf(h + 6, "%255[^\n]", host);
    sscanf(b + 6, "%63[^\n]", boot);
    *pid = strtol(p + 5, NULL, 10);
    start = strtoull(s + 7, NULL, 10);
    char myhost[256] = "", myboot[64];
    if (gethostname(myhost, sizeof myhost - 1) != 0 || strcmp(host, myhost) != 0) return 0;
    read_line_file("/proc/sys/kernel/random/boot_id", myboot, sizeof myboot);
    if (strcmp(boot, myboot) != 0) return 1; /* written before a reboot */
    if (*pid <= 0) return -1;
    if (kill((pid_t)*pid, 0) != 0 && errno == ESRCH) return 1;
    unsigned long long now = proc_start(*pid);
    return now != 0 && now != start ? 1 : 0; /* the pid was reused by another process */
}

static int read_marker(const char *dir, char *buf, size_t cap)
{
    char *m = nlsr_path_join(dir, NLSR_MARKER_NAME);
    if (!m) return -1;
    int fd = open(m, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    free(m);
    if (fd < 0) return -1;
    struct stat st;
    ssize_t n = -1;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (size_t)st.st_size < cap)
        n = pread(fd, buf, cap - 1, 0);
    close(fd);
    if (n < 0) return -1;
    buf[n] = '\0';
    return 0;
}

int nlsr_marker_present(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode)) return 0;
    char buf[1024];
    return read_marker(path, buf, sizeof buf) == 0 &&
           strncmp(buf, MARKER_MAGIC, strlen(MARKER_MAGIC)) == 0;
}

/* ---- tree removal ------------------------------------------------------------------------ */

static int remove_at(int dfd, const char *name, dev_t dev, int depth)
{
    int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOTDIR || errno == ELOOP) return unlinkat(dfd, name, 0) == 0 ? 0 : -errno;
        return errno == ENOENT ? 0 : -errno;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_dev != dev || depth > MAX_DEPTH) {
        close(fd);
        return -EXDEV; /* another file system mounted inside, or absurdly deep: left alone */
    }
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -errno;
    }
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        struct stat es;
        int r;
        if (fstatat(dirfd(d), de->d_name, &es, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(es.st_mode))
            r = remove_at(dirfd(d), de->d_name, dev, depth + 1);
        else
            r = unlinkat(dirfd(d), de->d_name, 0) == 0 || errno == ENOENT ? 0 : -errno;
        if (r < 0 && rc == 0) rc = r;
    }
    closedir(d);
    if (unlinkat(dfd, name, AT_REMOVEDIR) != 0 && errno != ENOENT && rc == 0) rc = -errno;
    return rc;
}

int nlsr_tree_remove(const char *path)
{
    if (!path || !*path) return -EINVAL;
    char *p = strdup(path);
    if (!p) return -ENOMEM;
    size_t L = strlen(p);
    while (L > 1 && p[L - 1] == '/') p[--L] = '\0';
    char *dir = dir_of(p);
    int rc = -ENOMEM;
    if (dir) {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        struct stat st;
        if (dfd < 0) rc = -errno;
        else if (fstatat(dfd, base_of(p), &st, AT_SYMLINK_NOFOLLOW) != 0)
            rc = errno == ENOENT ? 0 : -errno;
        else if (!S_ISDIR(st.st_mode))
            rc = unlinkat(dfd, base_of(p), 0) == 0 ? 0 : -errno;
        else
            rc = remove_at(dfd, base_of(p), st.st_dev, 0);
        if (dfd >= 0) close(dfd);
    }
    free(dir);
    free(p);
    return rc;
}

void nlsr_tmp_remove(const char *tmp)
{
    if (tmp) (void)nlsr_tree_remove(tmp);
}

/* ---- temporary files and folders ---------------------------------------------------------- */

static char *tmp_template(const char *dest)
{
    size_t L = strlen(dest);
    while (L > 1 && dest[L - 1] == '/') L--;
    char *t = malloc(L + sizeof NLSR_TMP_INFIX + 7);
    if (t) sprintf(t, "%.*s" NLSR_TMP_INFIX "XXXXXX", (int)L, dest);
    return t;
}

int nlsr_tmp_file(nlsr_err *e, const char *dest, char **tmp, int *fd)
{
    *tmp = NULL;
    *fd = -1;
    NLSR_FORWARD(nlsr_mkdir_parents(dest, e));
    char *t = tmp_template(dest);
    NLSR_FAIL_IF(!t, e, -ENOMEM, "out of memory");
    /* mkostemp: O_CREAT|O_EXCL with a random name; an existing name (or a link) is never
     * opened. */
    int f = mkostemp(t, O_CLOEXEC);
    if (f < 0) {
        int rc = -errno;
        nlsr_fail(e, rc, "%s: cannot create a temporary file beside it: %s", dest, strerror(-rc));
        free(t);
        return rc;
    }
    (void)fchmod(f, 0666 & ~file_mode());
    char owner[512];
    owner_text(owner, sizeof owner);
    (void)fsetxattr(f, XATTR_NAME, owner, strlen(owner), 0); /* best effort: some fs lack it */
    *tmp = t;
    *fd = f;
    return 0;
}

int nlsr_tmp_file_commit(nlsr_err *e, const char *tmp, const char *dest, int force)
{
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, dest, RENAME_NOREPLACE) != 0) {
        int err = errno;
        struct stat st;
        int exists = lstat(dest, &st) == 0;
        if (err == EEXIST || ((err == EINVAL || err == ENOSYS) && exists)) {
            NLSR_FAIL_IF(!force, e, NLSR_E_EXISTS, "%s: appeared while the job ran; not replaced",
                         dest);
            NLSR_FAIL_IF(!S_ISREG(st.st_mode), e, NLSR_E_USAGE,
                         "%s is now a %s: nlsr never replaces it", dest, type_name(st.st_mode));
            err = rename(tmp, dest) == 0 ? 0 : errno;
        } else if (err == EINVAL || err == ENOSYS) {
            err = rename(tmp, dest) == 0 ? 0 : errno;
        }
        NLSR_FAIL_IF(err, e, -err, "%s: rename to %s failed: %s", tmp, dest, strerror(err));
    }
    (void)lremovexattr(dest, XATTR_NAME);
    return nlsr_fsync_parent(dest, e);
}

int nlsr_tmp_dir(nlsr_ctx *ctx, const char *dest, char **tmp)
{
    nlsr_err *e = &ctx->err;
    *tmp = NULL;
    char *t = tmp_template(dest);
    NLSR_FAIL_IF(!t, e, -ENOMEM, "out of memory");
    int rc = nlsr_mkdir_parents(t, e);
    if (rc == 0) {
        char *dir = dir_of(t);
        size_t L = strlen(base_of(t)) - 6; /* the prefix "<name>.nlsr-tmp-" */
        char *prefix = strndup(base_of(t), L);
        if (dir && prefix) nlsr_tmp_sweep(ctx, dir, prefix);
        free(dir);
        free(prefix);
    }
    if (rc == 0 && !mkdtemp(t)) {
        rc = -errno;
        nlsr_fail(e, rc, "%s: cannot create a temporary folder beside it: %s", dest,
                  strerror(-rc));
    }
    int fd = -1;
    if (rc == 0) {
        int dfd = open(t, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        fd = dfd < 0 ? -1
                     : openat(dfd, NLSR_MARKER_NAME,
                              O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (dfd >= 0) close(dfd);
        char owner[512];
        owner_text(owner, sizeof owner);
        if (fd < 0) rc = nlsr_fail(e, -errno, "%s: cannot create its marker: %s", t,
                                   strerror(errno));
        else rc = nlsr_pwrite_all(fd, owner, strlen(owner), 0, t, e);
        if (fd >= 0) close(fd);
        if (rc < 0) nlsr_tree_remove(t);
    }
    if (rc < 0) {
        free(t);
        return rc;
    }
    *tmp = t;
    nlsr_test_point("outdir");
    return 0;
}

int nlsr_tmp_dir_commit(nlsr_ctx *ctx, const char *tmp, const char *dest, int force)
{
    nlsr_err *e = &ctx->err;
    nlsr_test_point("commit");
    /* The last safe point: a job asked to stop now leaves nothing behind. */
    NLSR_FORWARD(nlsr_ctx_check_cancel(ctx));
    /* The marker stays in the output (it is what lets --force replace it later), saying it is
     * committed, so that no sweep ever takes it for a dead run's temporary folder. */
    char *m = nlsr_path_join(tmp, NLSR_MARKER_NAME);
    int mfd = m ? open(m, O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC) : -1;
    free(m);
    if (mfd >= 0) {
        (void)!write(mfd, "committed\n", 10);
        close(mfd);
    }
    NLSR_FORWARD(nlsr_fsync_dir(tmp, e));
    /* mkdtemp made it 0700; the output gets the mode a plain mkdir would give it. */
    (void)chmod(tmp, 0777 & ~file_mode());
    char *o = strdup(dest);
    NLSR_FAIL_IF(!o, e, -ENOMEM, "out of memory");
    size_t L = strlen(o);
    while (L > 1 && o[L - 1] == '/') o[--L] = '\0';
    int rc = 0;
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, o, RENAME_NOREPLACE) == 0) goto synced;
    int err = errno;
    struct stat st;
    int exists = lstat(o, &st) == 0;
    if (!exists && (err == EINVAL || err == ENOSYS)) {
        if (rename(tmp, o) != 0) rc = nlsr_fail(e, -errno, "%s: rename to %s failed: %s", tmp, o,
                                                strerror(errno));
        goto synced;
    }
    if (!exists || (err != EEXIST && err != EINVAL && err != ENOSYS && err != ENOTEMPTY)) {
        rc = nlsr_fail(e, -err, "%s: rename to %s failed: %s", tmp, o, strerror(err));
        goto done;
    }
    if (!force) {
        rc = nlsr_fail(e, NLSR_E_EXISTS, "%s: appeared while the job ran; not replaced", dest);
        goto done;
    }
    /* Checked again: what sits there now may not be what the job's start saw. */
    rc = replaceable_dir(e, dest, o);
    if (rc < 0) goto done;
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, o, RENAME_EXCHANGE) == 0) {
        /* tmp now names the previous output. */
        (void)nlsr_tree_remove(tmp);
        goto synced;
    }
    {
        /* No atomic exchange here: move the old one onto an empty temporary folder, then the
         * new one into place, then remove the old. */
        char *old = tmp_template(o);
        if (!old || !mkdtemp(old)) {
            rc = nlsr_fail(e, -errno, "%s: cannot move aside: %s", dest, strerror(errno));
            free(old);
            goto done;
        }
        if (rename(o, old) != 0) {
            rc = nlsr_fail(e, -errno, "%s: cannot move aside: %s", dest, strerror(errno));
            rmdir(old);
            free(old);
            goto done;
        }
        if (rename(tmp, o) != 0) {
            rc = nlsr_fail(e, -errno, "%s: rename to %s failed: %s", tmp, dest, strerror(errno));
            (void)rename(old, o); /* put the previous output back */
            free(old);
            goto done;
        }
        (void)nlsr_tree_remove(old);
        free(old);
    }
synced:
    if (rc == 0) rc = nlsr_fsync_parent(o, e);
done:
    free(o);
    return rc;
}

/* ---- the shared folder of a split job ----------------------------------------------------- */

static int shared_check(nlsr_err *e, const char *shared, const char *tag)
{
    struct stat st;
    if (lstat(shared, &st) != 0) {
        int err = errno;
        NLSR_FAIL_IF(err == ENOENT, e, NLSR_E_NOTFOUND,
                     "%s: missing (no shard task of this job has started)", shared);
        return nlsr_fail(e, -err, "%s: %s", shared, strerror(err));
    }
    NLSR_FAIL_IF(!S_ISDIR(st.st_mode), e, NLSR_E_USAGE,
                 "%s is a %s, not a split job's folder: nlsr leaves it alone", shared,
                 type_name(st.st_mode));
    char buf[1024], line[128];
    snprintf(line, sizeof line, "\nsplit %s\n", tag);
    NLSR_FAIL_IF(read_marker(shared, buf, sizeof buf) != 0 ||
                     strncmp(buf, MARKER_MAGIC, strlen(MARKER_MAGIC)) != 0 || !strstr(buf, line),
                 e, NLSR_E_USAGE,
                 "%s exists but is not this split job's folder (no marker naming split %s): "
                 "nlsr leaves it alone",
                 shared, tag);
    return 0;
}

int nlsr_shared_dir(nlsr_ctx *ctx, const char *shared, const char *tag, int create, int *made)
{
    nlsr_err *e = &ctx->err;
    if (made) *made = 0;
    struct stat st;
    if (!create || lstat(shared, &st) == 0) return shared_check(e, shared, tag);
    char *t = NULL;
    NLSR_FORWARD(nlsr_tmp_dir(ctx, shared, &t));
    char *m = nlsr_path_join(t, NLSR_MARKER_NAME);
    int mfd = m ? open(m, O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC) : -1;
    free(m);
    char line[128];
    int n = snprintf(line, sizeof line, "split %s\n", tag);
    int rc = mfd >= 0 && write(mfd, line, (size_t)n) == n ? 0 : -EIO;
    if (mfd >= 0 && fsync(mfd) != 0) rc = -errno;
    if (mfd >= 0) close(mfd);
    if (rc < 0) nlsr_fail(e, rc, "%s: cannot write its marker", t);
    if (rc == 0) rc = nlsr_fsync_dir(t, e);
    if (rc == 0) (void)chmod(t, 0777 & ~file_mode());
    if (rc == 0 && renameat2(AT_FDCWD, t, AT_FDCWD, shared, RENAME_NOREPLACE) == 0) {
        if (made) *made = 1;
        free(t);
        return nlsr_fsync_parent(shared, e);
    }
    int err = rc == 0 ? errno : 0;
    nlsr_tree_remove(t);
    free(t);
    NLSR_FORWARD(rc);
    /* Another task made it first (EEXIST, or ENOTEMPTY on some file systems). */
    if (err == EEXIST || err == ENOTEMPTY) return shared_check(e, shared, tag);
    return nlsr_fail(e, -err, "%s: cannot create: %s", shared, strerror(err));
}

/* ---- leftovers of dead runs --------------------------------------------------------------- */

void nlsr_tmp_sweep(nlsr_ctx *ctx, const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    if (!d) return;
    size_t pl = strlen(prefix);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, prefix, pl) != 0) continue;
        char *p = nlsr_path_join(dir, de->d_name);
        struct stat st;
        if (!p || lstat(p, &st) != 0) {
            free(p);
            continue;
        }
        char txt[1024] = "";
        int ok = -1;
        if (S_ISDIR(st.st_mode)) ok = read_marker(p, txt, sizeof txt);
        else if (S_ISREG(st.st_mode)) {
            ssize_t n = lgetxattr(p, XATTR_NAME, txt, sizeof txt - 1);
            if (n >= 0) {
                txt[n] = '\0';
                ok = 0;
            }
        }
        long pid = 0;
        int dead = ok == 0 ? owner_dead(txt, &pid) : -1;
        if (dead == 1) {
            int rc = nlsr_tree_remove(p);
            if (rc == 0)
                nlsr_log(ctx, NLSR_LOG_NOTICE,
                         "removed %s, left by an nlsr run (pid %ld) that died", p, pid);
            else
                nlsr_log(ctx, NLSR_LOG_WARN,
                         "%s, left by an nlsr run (pid %ld) that died, could not be removed: %s",
                         p, pid, strerror(-rc));
        } else if (dead == -1) {
            nlsr_log(ctx, NLSR_LOG_NOTICE,
                     "%s has a temporary name but no nlsr marker; left alone", p);
        }
        free(p);
    }
    closedir(d);
}
