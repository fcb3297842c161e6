/* SPDX-License-Identifier: Apache-2.0 */
#define _GNU_SOURCE
/* `nlsr bench`: the machine and its disks. The rates are the physical reference each run is
 * compared with, measured in the same session as the runs, on the same files. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/io_uring.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "../common/ctx.h"
#include "../io/file.h"
#include "../io/io.h"
#include "../plan/progress.h"
#include "bench.h"

static void chomp(char *s)
{
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == ' ')) s[--n] = '\0';
}

void bench_machine_describe(bench_machine *m)
{
    memset(m, 0, sizeof *m);
    snprintf(m->cpu, sizeof m->cpu, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        char *c = strchr(line, ':');
        if (c && strncmp(line, "model name", 10) == 0) {
            snprintf(m->cpu, sizeof m->cpu, "%s", c + 2);
            chomp(m->cpu);
            break;
        }
    }
    if (f) fclose(f);
    m->cpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    struct sysinfo si;
    if (sysinfo(&si) == 0) m->mem_bytes = (uint64_t)si.totalram * si.mem_unit;
    struct utsname u;
    if (uname(&u) == 0) snprintf(m->kernel, sizeof m->kernel, "%s %s %s", u.sysname, u.release, u.machine);
    /* io_uring as the engine would meet it: seccomp profiles (Docker's) refuse the setup call
     * itself, so try exactly that. */
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    long fd = syscall(__NR_io_uring_setup, 4, &p);
    if (fd >= 0) {
        snprintf(m->io_uring, sizeof m->io_uring, "yes");
        close((int)fd);
    } else {
        snprintf(m->io_uring, sizeof m->io_uring, "no (%s)", strerror(errno));
    }
    if ((f = fopen("/proc/loadavg", "r"))) {
        if (fgets(m->load, sizeof m->load, f)) chomp(m->load);
        fclose(f);
    }
    m->euid = (int)geteuid();
}

/* mountinfo line: id parent major:minor root mountpoint opts [optional...] - fstype source ...
 * Of the mounts of the path's device, the longest mount point containing it (bind mounts share
 * a device). */
void bench_fs_describe(bench_fs *f, const char *path)
{
    struct stat st;
    snprintf(f->fstype, sizeof f->fstype, "?");
    if (stat(path, &st) != 0) return;
    f->dev = (unsigned long)st.st_dev;
    char *real = realpath(path, NULL);
    const char *rp = real ? real : path;
    unsigned maj = major(st.st_dev), min = minor(st.st_dev);
    FILE *m = fopen("/proc/self/mountinfo", "r");
    char line[4096];
    size_t best = 0;
    while (m && fgets(line, sizeof line, m)) {
        unsigned a, b;
        char mp[1024];
        if (sscanf(line, "%*s %*s %u:%u %*s %1023s", &a, &b, mp) != 3 || a != maj || b != min)
            continue;
        size_t ml = strlen(mp);
        int inside = strncmp(rp, mp, ml) == 0 && (rp[ml] == '/' || rp[ml] == '\0' || ml == 1);
        if (f->mount[0] && !(inside && ml + 1 > best)) continue;
        best = inside ? ml + 1 : 0;
        char *dash = strstr(line, " - ");
        char fst[64] = "", src[512] = "";
        if (dash) sscanf(dash + 3, "%63s %511s", fst, src);
        snprintf(f->mount, sizeof f->mount, "%s", mp);
        snprintf(f->fstype, sizeof f->fstype, "%s", fst);
        snprintf(f->source, sizeof f->source, "%s", src);
    }
    if (m) fclose(m);
    free(real);
}

#define RATE_CHUNK (1u << 20)
#define RATE_QD 16u

/* O_DIRECT reads through the engine's own request backends (io_uring where it works, else its
 * pread pool), RATE_QD requests of RATE_CHUNK in flight, as the read stream keeps them. */
static int direct_rate(nlsr_ctx *ctx, const char *file, uint64_t total, bench_fs *f)
{
    nlsr_err *e = &ctx->err;
    int fd = nlsr_io_open_direct(file, 0);
    if (fd < 0) {
        snprintf(f->direct_note, sizeof f->direct_note, "O_DIRECT refused: %s", strerror(-fd));
        return 0;
    }
    nlsr_io *io = NULL;
    nlsr_io_kind used;
    int rc = nlsr_io_open(NLSR_IO_AUTO, RATE_QD, "bench read", ctx, &io, &used, e);
    void *mem = NULL;
    if (rc < 0 || !io) goto done;
    if (posix_memalign(&mem, NLSR_IO_ALIGN, (size_t)RATE_QD * RATE_CHUNK) != 0) {
        rc = nlsr_fail(e, -ENOMEM, "bench: out of memory");
        goto done;
    }
    nlsr_io_req req[RATE_QD];
    uint64_t next = 0, got = 0;
    unsigned busy = 0;
    double t0 = nlsr_now();
    for (unsigned i = 0; i < RATE_QD && next < total; i++, busy++) {
        req[i] = (nlsr_io_req){.fd = fd, .op = NLSR_IO_OP_READ,
                               .buf = (unsigned char *)mem + (size_t)i * RATE_CHUNK,
                               .off = next, .buf_index = -1};
        req[i].len = req[i].need = (size_t)(total - next < RATE_CHUNK ? total - next : RATE_CHUNK);
        next += req[i].len;
        if ((rc = nlsr_io_submit(io, &req[i])) < 0) goto done;
    }
    while (busy > 0) {
        nlsr_io_req *r;
        if ((rc = nlsr_io_wait(io, &r)) < 0) goto done;
        busy--;
        if (r->res < 0) {
            rc = nlsr_fail(e, r->res, "%s: O_DIRECT read failed: %s", file, strerror(-r->res));
            goto done;
        }
        got += r->done;
        if (next < total) {
            r->off = next;
            r->len = r->need = (size_t)(total - next < RATE_CHUNK ? total - next : RATE_CHUNK);
            next += r->len;
            if ((rc = nlsr_io_submit(io, r)) < 0) goto done;
            busy++;
        }
    }
    double dt = nlsr_now() - t0;
    f->direct_bps = dt > 0 ? (double)got / dt : 0;
    snprintf(f->direct_note, sizeof f->direct_note, "%s, qd %u",
             used == NLSR_IO_URING ? "io_uring" : "pread", RATE_QD);
done:
    nlsr_io_close(io);
    free(mem);
    close(fd);
    return rc;
}

int bench_read_rates(nlsr_ctx *ctx, const char *file, uint64_t max, bench_fs *f)
{
    struct stat st;
    if (stat(file, &st) != 0)
        return nlsr_fail(&ctx->err, -errno, "%s: cannot stat: %s", file, strerror(errno));
    uint64_t total = (uint64_t)st.st_size & ~(uint64_t)(NLSR_IO_ALIGN - 1);
    if (total > max) total = max;
    f->probe_bytes = total;
    snprintf(f->path, sizeof f->path, "%s", file);
    if (total < 16 * NLSR_IO_ALIGN) return 0; /* too small to say anything */
    bench_drop_pages(file, 1);
    NLSR_FORWARD(direct_rate(ctx, file, total, f));
    /* Buffered: the same bytes, cold, one sequential reader with the kernel's readahead. */
    bench_drop_pages(file, 1);
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return nlsr_fail(&ctx->err, -errno, "%s: cannot open: %s", file, strerror(errno));
    char *buf = malloc(RATE_CHUNK);
    int rc = buf ? 0 : nlsr_fail(&ctx->err, -ENOMEM, "bench: out of memory");
    uint64_t got = 0;
    double t0 = nlsr_now();
    while (rc == 0 && got < total) {
        ssize_t n = read(fd, buf, RATE_CHUNK);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (uint64_t)n;
    }
    double dt = nlsr_now() - t0;
    f->buffered_bps = dt > 0 ? (double)got / dt : 0;
    free(buf);
    close(fd);
    bench_drop_pages(file, 1);
    return rc;
}

int bench_write_rate(nlsr_ctx *ctx, const char *dir, uint64_t bytes, bench_fs *f)
{
    char *path = nlsr_path_join(dir, ".nlsr-bench-write");
    if (!path) return nlsr_fail(&ctx->err, -ENOMEM, "bench: out of memory");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int rc = 0;
    char *buf = malloc(RATE_CHUNK);
    if (fd < 0 || !buf) {
        rc = nlsr_fail(&ctx->err, fd < 0 ? -errno : -ENOMEM, "%s: cannot write: %s", path,
                       fd < 0 ? strerror(errno) : "out of memory");
        goto done;
    }
    memset(buf, 0x5a, RATE_CHUNK);
    double t0 = nlsr_now();
    for (uint64_t at = 0; at < bytes; at += RATE_CHUNK) {
        if ((rc = nlsr_pwrite_all(fd, buf, RATE_CHUNK, at, path, &ctx->err)) < 0) goto done;
    }
    if (fsync(fd) != 0) {
        rc = nlsr_fail(&ctx->err, -errno, "%s: fsync failed: %s", path, strerror(errno));
        goto done;
    }
    double dt = nlsr_now() - t0;
    f->write_bps = dt > 0 ? (double)bytes / dt : 0;
done:
    free(buf);
    if (fd >= 0) {
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
    }
    unlink(path);
    free(path);
    return rc;
}

/* Dirty pages cannot be dropped: write them back first. fsync needs no write access. */
static int drop_one(const char *path)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return -errno;
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        if (fsync(fd) != 0 && errno != EINVAL) rc = -errno;
        int a = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        if (a != 0 && rc == 0) rc = -a;
    }
    close(fd);
    return rc;
}

static int g_drop_failed;

static int drop_visit(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)ftw;
    if (type == FTW_F && S_ISREG(st->st_mode) && drop_one(path) < 0) g_drop_failed++;
    return 0;
}

int bench_drop_pages(const char *path, int follow)
{
    g_drop_failed = 0;
    if (nftw(path, drop_visit, 16, (follow ? 0 : FTW_PHYS) | FTW_MOUNT) != 0) return 1;
    return g_drop_failed;
}

int bench_drop_caches(void)
{
    sync();
    int fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    int rc = write(fd, "3\n", 2) == 2 ? 0 : -errno;
    close(fd);
    return rc;
}

static uint64_t g_big_size;
static char *g_big;

static int big_visit(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)ftw;
    if (type == FTW_F && S_ISREG(st->st_mode) && (uint64_t)st->st_size > g_big_size) {
        char *c = strdup(path);
        if (c) {
            free(g_big);
            g_big = c;
            g_big_size = (uint64_t)st->st_size;
        }
    }
    return 0;
}

char *bench_largest_file(const char *path, uint64_t *size)
{
    g_big = NULL;
    g_big_size = 0;
    /* Links are followed here: a hub cache snapshot's files are links to its blobs. */
    nftw(path, big_visit, 16, FTW_MOUNT);
    if (size) *size = g_big_size;
    return g_big;
}

static int rm_visit(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    if (type == FTW_DP) return rmdir(path) == 0 || errno == ENOENT ? 0 : -1;
    return unlink(path) == 0 || errno == ENOENT ? 0 : -1;
}

int bench_remove_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : -errno;
    if (!S_ISDIR(st.st_mode)) return unlink(path) == 0 ? 0 : -errno;
    return nftw(path, rm_visit, 16, FTW_PHYS | FTW_DEPTH | FTW_MOUNT) == 0 ? 0 : -EIO;
}

int bench_copy_folder(nlsr_ctx *ctx, const char *src, const char *dst)
{
    nlsr_err *e = &ctx->err;
    if (mkdir(dst, 0755) != 0) return nlsr_fail(e, -errno, "%s: cannot create: %s", dst, strerror(errno));
    DIR *d = opendir(src);
    if (!d) return nlsr_fail(e, -errno, "%s: cannot open: %s", src, strerror(errno));
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d))) {
        if (de->d_name[0] == '.') continue; /* locks, journals, state: not the checkpoint */
        char *s = nlsr_path_join(src, de->d_name), *t = nlsr_path_join(dst, de->d_name);
        struct stat st;
        if (!s || !t) rc = nlsr_fail(e, -ENOMEM, "bench: out of memory");
        else if (stat(s, &st) == 0 && S_ISREG(st.st_mode)) rc = nlsr_copy_file(s, t, e);
        free(s);
        free(t);
    }
    closedir(d);
    return rc;
}
