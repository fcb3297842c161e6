/* SPDX-License-Identifier: Apache-2.0 */
/* Test points: builds configured with -DNLSR_TEST_HOOKS=ON stop the process (SIGSTOP) at the
 * named point when the environment says NLSR_TEST_STOP_AT=<name>, once per process, so that a
 * test can deliver a signal at an exact moment of a job (tests/hostile/). Release builds have
 * no hook: the call compiles to nothing. Points: "outdir" (temporary output folder made),
 * "shard" (an output shard complete), "journal" (in place: a journal record durable, its range
 * not yet written), "commit" (the output about to be moved into place). On SIGCONT the point
 * returns once a stop signal sent while stopped has been handled, whichever thread took it. */
#ifndef NLSR_COMMON_TESTHOOK_H
#define NLSR_COMMON_TESTHOOK_H

/* The write trace: with NLSR_TEST_IO_TRACE=<file>, every write-class step of the in-place path
 * (src/io/journal.c: creates, pwrites, fsyncs of files and folders, renames, unlinks) appends
 * one line "<op> <path> <offset> <length>" to that file, in the order the steps are made, so
 * that a test can assert the order of writes and flushes per file (tests/test_durability.c):
 * the kill tests keep the page cache and cannot see a missing fsync. */
#include <stdint.h>

#ifdef NLSR_TEST_HOOKS
void nlsr_test_point(const char *name);
void nlsr_test_trace(const char *op, const char *path, uint64_t off, uint64_t len);
#else
static inline void nlsr_test_point(const char *name)
{
    (void)name;
}
static inline void nlsr_test_trace(const char *op, const char *path, uint64_t off, uint64_t len)
{
    (void)op;
    (void)path;
    (void)off;
    (void)len;
}
#endif

/* The environment variables that change what the library does, for tests only (README
 * "Progress and logs", docs/DESIGN.md "Test hooks"): NLSR_IO_FAULT, NLSR_RUN_PLAN,
 * NLSR_RUN_MASK_ONE_THREAD, NLSR_TEST_KILL_AFTER_WRITES, NLSR_TEST_KILL_TORN,
 * NLSR_TEST_JOURNAL_RECORD. getenv(name) in
 * a test build; NULL in a release build, so that a shipped library cannot be made to fail, to
 * kill itself or to take another plan by its environment. */
#ifdef NLSR_TEST_HOOKS
#include <stdlib.h>
static inline const char *nlsr_test_env(const char *name)
{
    return getenv(name);
}
#else
static inline const char *nlsr_test_env(const char *name)
{
    (void)name;
    return (const char *)0;
}
#endif

#endif
