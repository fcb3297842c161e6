/* SPDX-License-Identifier: Apache-2.0 */
/* mmap windows: the third backend. A window is mapped per span and unmapped as soon as the
 * caller moves past it, so resident memory stays bounded by the windows in use (which the
 * caller charges to the budget) however large the file. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "io.h"

#ifdef MADV_POPULATE_WRITE
#define MADV_POPULATE_READ_ MADV_POPULATE_READ
#define MADV_POPULATE_WRITE_ MADV_POPULATE_WRITE
#else
#define MADV_POPULATE_READ_ 22 /* <linux/mman.h>, Linux 5.14 */
#define MADV_POPULATE_WRITE_ 23
#endif

static uint64_t page_size(void)
{
    long p = sysconf(_SC_PAGESIZE);
    return p > 0 ? (uint64_t)p : 4096u;
}

/* ---- the SIGBUS guard of read windows --------------------------------------------------- */

#define GUARD_SLOTS 512
static struct {
    _Atomic uintptr_t addr;
    _Atomic size_t len;
    atomic_int faulted;
} guard[GUARD_SLOTS];
static struct sigaction prev_bus;
static uintptr_t guard_page = 4096;
static pthread_once_t guard_once = PTHREAD_ONCE_INIT;

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    uintptr_t a = (uintptr_t)si->si_addr;
    for (int i = 0; i < GUARD_SLOTS; i++) {
        uintptr_t s = atomic_load(&guard[i].addr);
        size_t l = atomic_load(&guard[i].len);
        if (!s || a < s || a - s >= l) continue;
        /* Past the end of a truncated file: a zero page in its place lets the access finish;
         * the window is marked so that the job fails before it commits. */
        void *r = mmap((void *)(a & ~(guard_page - 1)), guard_page, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (r != MAP_FAILED) {
            atomic_store(&guard[i].faulted, 1);
            return;
        }
        break;
    }
    /* Not a guarded window: whatever handled SIGBUS before us (by default, death) does. */
    sigaction(SIGBUS, &prev_bus, NULL);
}

static void guard_install(void)
{
    guard_page = (uintptr_t)page_size();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &prev_bus);
}

static int guard_add(void *addr, size_t len)
{
    pthread_once(&guard_once, guard_install);
    for (int i = 0; i < GUARD_SLOTS; i++) {
        uintptr_t expect = 0;
        if (atomic_compare_exchange_strong(&guard[i].addr, &expect, (uintptr_t)addr)) {
            atomic_store(&guard[i].faulted, 0);
            atomic_store(&guard[i].len, len);
            return i;
        }
    }
    return -1; /* more windows than slots: this one is unguarded */
}

static int guard_remove(int i)
{
    if (i < 0) return 0;
    int f = atomic_load(&guard[i].faulted);
    atomic_store(&guard[i].len, 0);
    atomic_store(&guard[i].addr, 0);
    return f;
}

int nlsr_io_map_read(int fd, uint64_t off, size_t len, int willneed, nlsr_io_map *m,
                     const unsigned char **data, const char *path, nlsr_err *e)
{
    uint64_t ps = page_size();
    uint64_t start = off & ~(ps - 1);
    size_t mlen = (size_t)(off - start) + len;
    void *a = mmap(NULL, mlen, PROT_READ, MAP_SHARED, fd, (off_t)start);
    if (a == MAP_FAILED) {
        int rc = -errno;
        return nlsr_fail(e, rc, "%s: mmap of %zu bytes at offset %llu failed: %s", path, mlen,
                         (unsigned long long)start, strerror(-rc));
    }
    /* Sequential use: the kernel reads ahead more and drops pages behind. WILLNEED starts the
     * read now, before the caller touches the window. Both are hints; failures do not matter. */
    (void)madvise(a, mlen, MADV_SEQUENTIAL);
    if (willneed) (void)madvise(a, mlen, MADV_WILLNEED);
    m->addr = a;
    m->len = mlen;
    m->path = path;
    m->guard = guard_add(a, mlen);
    *data = (const unsigned char *)a + (off - start);
    return 0;
}

int nlsr_io_map_populate(const nlsr_io_map *m, nlsr_err *e)
{
    if (!m->addr) return 0;
    /* EFAULT: part of the window lies past the end of the file (it was truncated). */
    if (madvise(m->addr, m->len, MADV_POPULATE_READ_) != 0 && errno == EFAULT)
        return nlsr_fail(e, NLSR_E_FORMAT,
                         "%s: the file shrank while it was read (truncated by another process?)",
                         m->path ? m->path : "input");
    return 0;
}

int nlsr_io_map_write(int fd, uint64_t off, size_t len, nlsr_io_map *m, unsigned char **data,
                      const char *path, nlsr_err *e)
{
    void *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)off);
    if (a == MAP_FAILED) {
        int rc = -errno;
        return nlsr_fail(e, rc, "%s: mmap of %zu bytes at offset %llu for writing failed: %s",
                         path, len, (unsigned long long)off, strerror(-rc));
    }
    /* Fault the whole window in writable at once (Linux 5.14+) rather than one page fault per
     * 4 KiB as the caller fills it; older kernels just fault on demand. */
    (void)madvise(a, len, MADV_POPULATE_WRITE_);
    m->addr = a;
    m->len = len;
    m->path = path;
    m->guard = -1; /* our own temporary output: nobody else truncates it */
    *data = a;
    return 0;
}

int nlsr_io_unmap(nlsr_io_map *m)
{
    if (!m->addr) return 0;
    int faulted = guard_remove(m->guard);
    m->guard = -1;
    /* munmap drops the window's pages from the resident set at once; the data stays in the
     * page cache (dirty pages of a writable window are written back by the kernel). */
    munmap(m->addr, m->len);
    m->addr = NULL;
    m->len = 0;
    return faulted;
}
