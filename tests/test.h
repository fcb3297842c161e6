/* SPDX-License-Identifier: Apache-2.0 */
/* Minimal test harness: assertions that print both values (libuv's ASSERT_EQ), a pass/fail
 * count, and the closing line "N passed, N failed". Exit status 77 means skipped (CTest). */
#ifndef NLSR_TEST_H
#define NLSR_TEST_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_failed_ = 0, test_passed_ = 0, test_cur_failed_ = 0, test_skipped_ = 0;

#define FAILF(...)                                                                                \
    do {                                                                                          \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                                           \
        fprintf(stderr, __VA_ARGS__);                                                             \
        fputc('\n', stderr);                                                                      \
        test_cur_failed_ = 1;                                                                     \
    } while (0)
#define ASSERT_TRUE(c)                                                                            \
    do {                                                                                          \
        if (!(c)) FAILF("assertion failed: %s", #c);                                              \
    } while (0)
#define ASSERT_EQ_I(a, b)                                                                         \
    do {                                                                                          \
        long long a_ = (long long)(a), b_ = (long long)(b);                                       \
        if (a_ != b_) FAILF("%s == %s: %lld != %lld", #a, #b, a_, b_);                            \
    } while (0)
#define ASSERT_EQ_U(a, b)                                                                         \
    do {                                                                                          \
        unsigned long long a_ = (unsigned long long)(a), b_ = (unsigned long long)(b);            \
        if (a_ != b_) FAILF("%s == %s: %llu != %llu", #a, #b, a_, b_);                            \
    } while (0)
#define ASSERT_NEAR(a, b, tol)                                                                    \
    do {                                                                                          \
        double a_ = (double)(a), b_ = (double)(b);                                                \
        if (!(a_ - b_ <= (tol) && b_ - a_ <= (tol)))                                              \
            FAILF("%s ~= %s: %.17g vs %.17g (tol %g)", #a, #b, a_, b_, (double)(tol));            \
    } while (0)
#define ASSERT_STR_EQ(a, b)                                                                       \
    do {                                                                                          \
        const char *a_ = (a), *b_ = (b);                                                          \
        if (!a_ || !b_ || strcmp(a_, b_) != 0)                                                    \
            FAILF("%s == %s: \"%s\" != \"%s\"", #a, #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)");  \
    } while (0)
#define ASSERT_CONTAINS(hay, needle)                                                              \
    do {                                                                                          \
        const char *h_ = (hay), *n_ = (needle);                                                   \
        if (!h_ || !strstr(h_, n_)) FAILF("\"%s\" does not contain \"%s\"", h_ ? h_ : "", n_);    \
    } while (0)

/* Runs one test function and counts it. */
#define RUN_TEST(fn)                                                                              \
    do {                                                                                          \
        test_cur_failed_ = 0;                                                                     \
        fn();                                                                                     \
        if (test_cur_failed_) {                                                                   \
            test_failed_++;                                                                       \
            fprintf(stderr, "FAIL %s\n", #fn);                                                    \
        } else {                                                                                  \
            test_passed_++;                                                                       \
        }                                                                                         \
    } while (0)

/* A test that needs the library's test hooks (environment switches that only builds
 * configured with -DNLSR_TEST_HOOKS=ON obey: src/common/testhook.h); skipped, and said,
 * otherwise. */
#ifdef NLSR_TEST_HOOKS
#define RUN_HOOK_TEST(fn) RUN_TEST(fn)
#else
#define RUN_HOOK_TEST(fn)                                                                         \
    do {                                                                                          \
        (void)fn;                                                                                 \
        test_skipped_++;                                                                          \
        fprintf(stderr, "SKIP %s: needs a build with -DNLSR_TEST_HOOKS=ON\n", #fn);               \
    } while (0)
#endif

/* 77 (skipped) when every test was skipped. */
static inline int test_finish(void)
{
    printf("%d passed, %d failed, %d skipped\n", test_passed_, test_failed_, test_skipped_);
    if (test_failed_) return 1;
    return test_skipped_ && !test_passed_ ? 77 : 0;
}

#endif
