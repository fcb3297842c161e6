/* SPDX-License-Identifier: Apache-2.0 */
#define _GNU_SOURCE
#include "file.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int nlsr_pread_all(int fd, void *buf, size_t len, uint64_t off, const char *path, nlsr_err *e)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR) continue;
            int rc = -errno;
            return nlsr_fail(e, rc, "%s: read of %zu bytes at offset %llu failed: %s", path, len,
                             (unsigned long long)off, strerror(-rc));
        }
        if (n == 0)
            return nlsr_fail(e, NLSR_E_FORMAT, "%s: unexpected end of file at offset %llu",
                             path, (unsigned long long)off);
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int nlsr_pwrite_all(int fd, const void *buf, size_t len, uint64_t off, const char *path,
                    nlsr_err *e)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR) continue;
            int rc = -errno;
            return nlsr_fail(e, rc, "%s: write of %zu bytes at offset %llu failed: %s", path,
                             len, (unsigned long long)off, strerror(-rc));
        }
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int nlsr_read_small_file(const char *path, size_t max_len, char **out, size_t *len, nlsr_err *e)
{
    int rc = 0;
    char *buf = NULL;
    int fd = -1;
    NLSR_FORWARD(nlsr_open_regular(e, path, O_RDONLY, 1, &fd));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = -errno;
        nlsr_fail(e, rc, "%s: cannot stat: %s", path, strerror(-rc));
        goto fail_fd;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: not a regular file", path);
        goto fail_fd;
    }
    if ((uint64_t)st.st_size > max_len) {
        rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: %lld bytes, more than the %zu allowed", path,
                       (long long)st.st_size, max_len);
        goto fail_fd;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", path);
        goto fail_fd;
    }
    rc = nlsr_pread_all(fd, buf, (size_t)st.st_size, 0, path, e);
    if (rc < 0) goto fail_buf;
    buf[st.st_size] = '\0';
    *out = buf;
    if (len) *len = (size_t)st.st_size;
    close(fd);
    return 0;
fail_buf:
    free(buf);
fail_fd:
    close(fd);
    return rc;
}

int nlsr_fsync_dir(const char *dir, nlsr_err *e)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        int rc = -errno;
        return nlsr_fail(e, rc, "%s: cannot open folder: %s", dir, strerror(-rc));
    }
    int rc = 0;
    if (fsync(fd) != 0 && errno != EINVAL) {
        rc = -errno;
        nlsr_fail(e, rc, "%s: fsync of folder failed: %s", dir, strerror(-rc));
    }
    close(fd);
    return rc;
}

int nlsr_fsync_parent(const char *path, nlsr_err *e)
{
    char dir[PATH_MAX];
    size_t n = strlen(path);
    if (n >= sizeof dir) return nlsr_fail(e, -ENAMETOOLONG, "%s: path too long", path);
    memcpy(dir, path, n + 1);
    char *slash = strrchr(dir, '/');
    if (!slash) return nlsr_fsync_dir(".", e);
    if (slash == dir) slash[1] = '\0';
    else *slash = '\0';
    return nlsr_fsync_dir(dir, e);
}

int nlsr_copy_range(int in, int out, uint64_t off, uint64_t len, unsigned char *buf,
                    size_t buf_len, const char *src, const char *dst, nlsr_err *e)
{
    int use_cfr = 1;
    while (len > 0) {
        size_t want = len > (1u << 30) ? (1u << 30) : (size_t)len;
        ssize_t n;
        if (use_cfr) {
            loff_t io = (loff_t)off, oo = (loff_t)off;
            n = copy_file_range(in, &io, out, &oo, want, 0);
            if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP ||
                          errno == EINVAL)) {
                use_cfr = 0;
                continue;
            }
        } else {
            NLSR_FAIL_IF(!buf || buf_len == 0, e, NLSR_E_USAGE,
                         "%s: no buffer to copy to %s with", src, dst);
            n = pread(in, buf, want < buf_len ? want : buf_len, (off_t)off);
            if (n > 0) NLSR_FORWARD(nlsr_pwrite_all(out, buf, (size_t)n, off, dst, e));
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            int rc = -errno;
            return nlsr_fail(e, rc, "%s: copy to %s failed: %s", src, dst, strerror(-rc));
        }
        NLSR_FAIL_IF(n == 0, e, NLSR_E_FORMAT, "%s: file shrank while copying", src);
        off += (uint64_t)n;
        len -= (uint64_t)n;
    }
    return 0;
}

int nlsr_copy_file(const char *src, const char *dst, nlsr_err *e)
{
    int rc = 0;
    int in = -1;
    NLSR_FORWARD(nlsr_open_regular(e, src, O_RDONLY, 1, &in));
    int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (out < 0) {
        rc = -errno;
        nlsr_fail(e, rc, "%s: cannot create: %s", dst, strerror(-rc));
        goto fail_in;
    }
    struct stat st;
    if (fstat(in, &st) != 0) {
        rc = -errno;
        nlsr_fail(e, rc, "%s: cannot stat: %s", src, strerror(-rc));
        goto fail_out;
    }
    off_t left = st.st_size;
    int use_cfr = 1;
    char *buf = NULL;
    while (left > 0) {
        ssize_t n;
        if (use_cfr) {
            n = copy_file_range(in, NULL, out, NULL, (size_t)(left > (1 << 30) ? (1 << 30) : left), 0);
            if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP ||
                          errno == EINVAL)) {
                use_cfr = 0;
                continue;
            }
        } else {
            if (!buf && !(buf = malloc(1 << 20))) {
                rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", dst);
                goto fail_out;
            }
            n = read(in, buf, 1 << 20);
            if (n > 0) {
                rc = nlsr_pwrite_all(out, buf, (size_t)n, (uint64_t)(st.st_size - left), dst, e);
                if (rc < 0) goto fail_buf;
            }
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            rc = -errno;
            nlsr_fail(e, rc, "%s: copy to %s failed: %s", src, dst, strerror(-rc));
            goto fail_buf;
        }
        if (n == 0) {
            rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: file shrank while copying", src);
            goto fail_buf;
        }
        left -= n;
    }
    if (fsync(out) != 0) {
        rc = -errno;
        nlsr_fail(e, rc, "%s: fsync failed: %s", dst, strerror(-rc));
        goto fail_buf;
    }
fail_buf:
    free(buf);
fail_out:
    close(out);
    if (rc < 0) unlink(dst);
fail_in:
    close(in);
    return rc;
}

char *nlsr_path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t k = a;
    if (a > 0 && dir[a - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

int nlsr_is_dir(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) return errno == ENOENT || errno == ENOTDIR ? 0 : -errno;
    return S_ISDIR(st.st_mode) ? 1 : 0;
}

int nlsr_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

int nlsr_mkdir_parents(const char *path, nlsr_err *e)
{
    char *p = strdup(path);
    if (!p) return nlsr_fail(e, -ENOMEM, "out of memory");
    int rc = 0;
    char *last = strrchr(p, '/');
    for (char *s = p + 1; last && s < last && rc == 0; s++) {
        if (*s != '/') continue;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            rc = -errno;
            nlsr_fail(e, rc, "%s: cannot create folder: %s", p, strerror(-rc));
        }
        *s = '/';
    }
    if (rc == 0 && last && last != p) {
        *last = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            rc = -errno;
            nlsr_fail(e, rc, "%s: cannot create folder: %s", p, strerror(-rc));
        }
    }
    free(p);
    return rc;
}

const char *nlsr_file_type_name(unsigned mode)
{
    mode_t m = (mode_t)mode;
    if (S_ISREG(m)) return "regular file";
    if (S_ISDIR(m)) return "folder";
    if (S_ISLNK(m)) return "symbolic link";
    if (S_ISFIFO(m)) return "FIFO";
    if (S_ISSOCK(m)) return "socket";
    if (S_ISCHR(m)) return "character device";
    if (S_ISBLK(m)) return "block device";
    return "special file";
}

int nlsr_open_regular(nlsr_err *e, const char *path, int flags, int follow, int *fd_out)
{
    *fd_out = -1;
    int fd = open(path, flags | O_NONBLOCK | O_NOCTTY | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW));
    if (fd < 0) {
        int err = errno;
        NLSR_FAIL_IF(err == ELOOP && !follow, e, NLSR_E_USAGE,
                     "%s is a symbolic link: refused (nlsr does not write through links)", path);
        if (err == ENXIO || err == ENODEV) {
            struct stat st;
            if (stat(path, &st) == 0)
                return nlsr_fail(e, NLSR_E_FORMAT, "%s is a %s, not a regular file: refused",
                                 path, nlsr_file_type_name(st.st_mode));
        }
        return nlsr_fail(e, -err, "%s: cannot open: %s", path, strerror(err));
    }
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) != 0) rc = nlsr_fail(e, -errno, "%s: cannot stat: %s", path, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc = nlsr_fail(e, NLSR_E_FORMAT, "%s is a %s, not a regular file: refused", path,
                       nlsr_file_type_name(st.st_mode));
    else {
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0)
            rc = nlsr_fail(e, -errno, "%s: fcntl failed: %s", path, strerror(errno));
    }
    if (rc < 0) {
        close(fd);
        return rc;
    }
    *fd_out = fd;
    return 0;
}
