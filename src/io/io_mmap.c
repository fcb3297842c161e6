/* mmap windows: the third backend. A window is mapped per span and unmapped as soon as the
 * caller moves past it, so resident memory stays bounded by the windows in use (which the
 * caller charges to the budget) however large the file. */
#define _GNU_SOURCE
#include <errno.h>
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
    *data = (const unsigned char *)a + (off - start);
    return 0;
}

void nlsr_io_map_populate(const nlsr_io_map *m)
{
    if (m->addr) (void)madvise(m->addr, m->len, MADV_POPULATE_READ_);
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
    *data = a;
    return 0;
}

void nlsr_io_unmap(nlsr_io_map *m)
{
    if (!m->addr) return;
    /* munmap drops the window's pages from the resident set at once; the data stays in the
     * page cache (dirty pages of a writable window are written back by the kernel). */
    munmap(m->addr, m->len);
    m->addr = NULL;
    m->len = 0;
}
