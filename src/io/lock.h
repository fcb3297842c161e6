/* SPDX-License-Identifier: Apache-2.0 */
/* The lock of a checkpoint folder: flock(2) on the folder itself (its directory descriptor),
 * exclusive for in-place runs and rollbacks, shared for jobs that only read it, so that no
 * reader and in-place writer ever interleave, on any folder, and readers create no file. The
 * kernel drops the lock when the holder exits, however it exits, so a crash never leaves a
 * stale lock behind. An in-place holder also writes its pid into DIR/.nlsr.lock, for the
 * message of whoever finds the folder locked. */
#ifndef NLSR_IO_LOCK_H
#define NLSR_IO_LOCK_H

#include "../common/ctx.h"

#define NLSR_LOCK_NAME ".nlsr.lock"

/* Takes the folder's exclusive lock and records the holder's pid in DIR/.nlsr.lock. wait != 0 blocks until the lock is free (saying so in a notice of the context's log); otherwise a
 * held lock is NLSR_E_LOCKED with a message naming the folder and the holder's pid.
 * *fd receives the descriptor to pass to nlsr_lock_release. */
int nlsr_lock_acquire(nlsr_ctx *ctx, const char *dir, int wait, int *fd);
/* The reader's side, for jobs that only read a folder (run/apply/prepare with --out): a shared
 * lock on the folder, so that no in-place run or rollback starts on it while it is read, and
 * one in progress is NLSR_E_LOCKED (never waited for). Nothing is created. */
int nlsr_lock_shared(nlsr_ctx *ctx, const char *dir, int *fd);
/* 1 if another process holds dir's lock now, 0 if not (nothing is created), < 0 on error;
 * *holder gets its pid when known (0 otherwise). For dry runs. */
int nlsr_lock_probe(nlsr_ctx *ctx, const char *dir, long *holder);
/* Releases and closes; a negative fd is a no-op. */
void nlsr_lock_release(int fd);

#endif
