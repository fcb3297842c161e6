/* SPDX-License-Identifier: Apache-2.0 */
/* Plain file helpers: whole reads/writes that survive EINTR and short transfers, durable
 * renames, cheap copies. Everything returns 0 or -errno and records a message naming the path. */
#ifndef NLSR_IO_FILE_H
#define NLSR_IO_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "../common/err.h"

int nlsr_pread_all(int fd, void *buf, size_t len, uint64_t off, const char *path, nlsr_err *e);
int nlsr_pwrite_all(int fd, const void *buf, size_t len, uint64_t off, const char *path,
                    nlsr_err *e);
/* Reads a whole small file (config, index) into a NUL-terminated buffer, refusing files over
 * max_len. *out is malloc'd. */
int nlsr_read_small_file(const char *path, size_t max_len, char **out, size_t *len, nlsr_err *e);
/* fsync of the folder holding `path`, so that a rename or create in it is durable. */
int nlsr_fsync_parent(const char *path, nlsr_err *e);
int nlsr_fsync_dir(const char *dir, nlsr_err *e);
/* Copies src to dst (created exclusively) with copy_file_range (reflink where the file system
 * can), falling back to read/write; fsyncs dst. */
int nlsr_copy_file(const char *src, const char *dst, nlsr_err *e);
/* Copies bytes [off, off+len) of `in` to the same offsets of `out` with copy_file_range (a
 * kernel-side copy, no user buffer), falling back to pread/pwrite through `buf` (buf_len bytes,
 * the caller's, charged to its budget) where the file systems refuse. Does not fsync. */
int nlsr_copy_range(int in, int out, uint64_t off, uint64_t len, unsigned char *buf,
                    size_t buf_len, const char *src, const char *dst, nlsr_err *e);
/* "dir/name" into a malloc'd string (NULL on out-of-memory). */
char *nlsr_path_join(const char *dir, const char *name);
/* 1 if path is an existing directory, 0 if not, -errno on other errors. */
int nlsr_is_dir(const char *path);
int nlsr_exists(const char *path);
/* Creates the missing folders above `path` (mkdir -p of its parent), so that an output such
 * as out/run-1/realigned can be named before out/ exists. */
int nlsr_mkdir_parents(const char *path, nlsr_err *e);

/* Opens an input for reading (flags: O_RDONLY or O_RDWR, plus O_DIRECT etc.) without
 * blocking: a FIFO, device or socket is refused with a message naming it (a FIFO in place of a
 * shard must never hang a sweep that holds a lock); follow = 0 also refuses a symbolic link. */
int nlsr_open_regular(nlsr_err *e, const char *path, int flags, int follow, int *fd);
/* "regular file", "FIFO", "symbolic link" ... for a st_mode. */
const char *nlsr_file_type_name(unsigned mode);

#endif
