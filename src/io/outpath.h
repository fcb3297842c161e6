/* SPDX-License-Identifier: Apache-2.0 */
/* Every path nlsr writes or removes goes through this module, so that the rules that keep a
 * store of other people's checkpoints safe live in one place (README "Output safety"):
 *
 * - An output (folder, patch file, report, mask) is resolved the way the kernel will see it once
 *   its missing parents exist, without following its final component, and refused when it is,
 *   contains or lies inside an input, or is an input file under another name (hard link).
 * - Nothing is ever written, truncated or removed through a symbolic link; trees are removed
 *   with openat/unlinkat and never followed.
 * - --force replaces only a folder nlsr wrote (it holds the marker file .nlsr-output) or an
 *   empty one, or a regular file; never a link, a device, a FIFO, or a folder of someone else's.
 * - Temporary files and folders get unpredictable names, are created exclusively beside their
 *   destination and renamed into place at commit. They carry a marker naming their owner (host,
 *   boot, pid, process start time), so a later run recognises a dead run's leftovers and
 *   removes them only when the marker proves they are nlsr's and their owner is gone.
 * Inputs are opened with nlsr_open_regular (file.h): never blocking, regular files only. */
#ifndef NLSR_IO_OUTPATH_H
#define NLSR_IO_OUTPATH_H

#include <stdint.h>
#include <sys/types.h>

#include "../common/ctx.h"

/* The marker file of folders nlsr wrote (outputs and temporary outputs). */
#define NLSR_MARKER_NAME ".nlsr-output"
/* Infix of temporary names: <dest>.nlsr-tmp-XXXXXX. */
#define NLSR_TMP_INFIX ".nlsr-tmp-"

typedef enum nlsr_out_kind { NLSR_OUT_FILE, NLSR_OUT_DIR } nlsr_out_kind;

/* The absolute path the kernel will reach through `path` once its missing parent folders are
 * created: the existing leading part resolved physically (links followed, as the kernel
 * does), the missing rest lexically ("a/../b" as mkdir -p then makes it), the final component
 * never followed. Trailing slashes are dropped. *abs is malloc'd. */
int nlsr_out_resolve(nlsr_err *e, const char *path, char **abs);

/* The checks before a job writes `out` (kind says what it writes), given the job's inputs
 * (paths as given; NULL entries skipped):
 * - refused (NLSR_E_USAGE, one line naming both) when out is, contains or lies inside an input
 *   folder or file, or a file an input folder's entries link to (a hub cache's blobs), or is the
 *   same inode as an input file;
 * - an existing out that is a symbolic link, or not a regular file (kind FILE) / folder (kind
 *   DIR), is refused (NLSR_E_USAGE): nlsr never replaces those;
 * - an existing out without force is NLSR_E_EXISTS; with force a folder must be empty or hold
 *   the marker of an nlsr output (else NLSR_E_USAGE, saying what is there).
 * *resolved (may be NULL) receives nlsr_out_resolve's path, which the job then uses. */
int nlsr_out_check(nlsr_ctx *ctx, const char *out, nlsr_out_kind kind, int force,
                   const char *const *inputs, size_t ninputs, char **resolved);

/* Temporary file beside `dest` (<dest>.nlsr-tmp-XXXXXX, mode 0644), created exclusively; the
 * missing parent folders of dest are created first. *tmp malloc'd, *fd open for writing. */
int nlsr_tmp_file(nlsr_err *e, const char *dest, char **tmp, int *fd);
/* Renames tmp onto dest and fsyncs the folder. force = 0 never replaces an existing dest;
 * force = 1 replaces it only when it is a regular file (not a link). */
int nlsr_tmp_file_commit(nlsr_err *e, const char *tmp, const char *dest, int force);

/* Temporary folder beside `dest` (<dest>.nlsr-tmp-XXXXXX) holding the owner marker; the
 * missing parents are created first; stale leftovers of dead runs beside it are removed first
 * (nlsr_tmp_sweep). *tmp malloc'd. */
int nlsr_tmp_dir(nlsr_ctx *ctx, const char *dest, char **tmp);
/* Moves the finished folder to dest (atomically exchanged with a previous output when force)
 * and removes what it replaced. The replaced folder is checked again first (marker or empty,
 * not a link): what appeared at dest while the job ran is never removed. */
int nlsr_tmp_dir_commit(nlsr_ctx *ctx, const char *tmp, const char *dest, int force);

/* The shared temporary folder of a split job's tasks (docs/SCALE.md, apply --shard): `shared`
 * is a name every task derives alike; its marker is nlsr's (owner: the task that made it) plus
 * the line "split <tag>". create: made when missing, atomically (a temporary folder with the
 * marker renamed onto the name without replacing, so a racing task finds it whole, never
 * half-made), then checked. An existing one is taken only when it is a folder (not a link)
 * whose marker names the same tag; anything else there is refused (NLSR_E_USAGE) and left.
 * create 0: NLSR_E_NOTFOUND when missing. *made (may be NULL): 1 when this call made it. */
int nlsr_shared_dir(nlsr_ctx *ctx, const char *shared, const char *tag, int create, int *made);

/* Removes a tree without following any link (a link is removed, never what it points to).
 * 0 or -errno of the first failure. */
int nlsr_tree_remove(const char *path);
/* Removes a temporary file or folder this process made (best effort; NULL is a no-op). */
void nlsr_tmp_remove(const char *tmp);

/* Leftovers of dead runs named <prefix>* inside folder `dir`: each one whose marker proves it
 * was made by nlsr on this host in a process that is gone is removed and said in a notice of
 * the context's log; others are reported and left alone. */
void nlsr_tmp_sweep(nlsr_ctx *ctx, const char *dir, const char *prefix);


/* 1 when `path` (not followed) is a folder holding a valid nlsr marker, else 0. */
int nlsr_marker_present(const char *path);

#endif
