/* The lock of a checkpoint folder: flock(2) on DIR/.nlsr.lock, so that two in-place runs (or a
 * run and a rollback) on one checkpoint never interleave. The kernel drops the lock when the
 * holder exits, however it exits, so a crash never leaves a stale lock behind; the file itself
 * stays (removing a lock file others may have open would let two holders in). */
#ifndef NLSR_IO_LOCK_H
#define NLSR_IO_LOCK_H

#include "../common/ctx.h"

#define NLSR_LOCK_NAME ".nlsr.lock"

/* Takes the folder's lock (creating the lock file if needed) and records the holder's pid in
 * it. wait != 0 blocks until the lock is free (saying so on stderr unless quiet); otherwise a
 * held lock is NLSR_E_LOCKED with a message naming the folder and the holder's pid.
 * *fd receives the descriptor to pass to nlsr_lock_release. */
int nlsr_lock_acquire(nlsr_ctx *ctx, const char *dir, int wait, int *fd);
/* 1 if another process holds dir's lock now, 0 if not (nothing is created), < 0 on error;
 * *holder gets its pid when known (0 otherwise). For dry runs. */
int nlsr_lock_probe(nlsr_ctx *ctx, const char *dir, long *holder);
/* Releases and closes; a negative fd is a no-op. */
void nlsr_lock_release(int fd);

#endif
