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
/* The reader's side, for jobs that only read a folder (run/apply/prepare with --out): a shared
 * lock on the folder's lock file, so that no in-place run or rollback starts on it while it is
 * read, and one in progress is NLSR_E_LOCKED (never waited for). Only when the lock file
 * exists: nothing is created, a reader writes nothing into its inputs (a folder never realigned
 * in place has no lock file). *fd is -1 when there is none. */
int nlsr_lock_shared(nlsr_ctx *ctx, const char *dir, int *fd);
/* 1 if another process holds dir's lock now, 0 if not (nothing is created), < 0 on error;
 * *holder gets its pid when known (0 otherwise). For dry runs. */
int nlsr_lock_probe(nlsr_ctx *ctx, const char *dir, long *holder);
/* Releases and closes; a negative fd is a no-op. */
void nlsr_lock_release(int fd);

#endif
