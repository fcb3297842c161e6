/* SPDX-License-Identifier: Apache-2.0 */
/* Minimal test harness: assertions that print both values (libuv's ASSERT_EQ), a pass/fail
 * count, and the closing line "N passed, N failed[, N skipped]".
 *
 * A test that needs what the machine may not allow (mount(2), seccomp) calls TEST_SKIP and is
 * registered as a CTest entry of its own: the program runs only the test named by its argument
 * (test_init), RUN_TEST_ALONE tests run only when named, and a program whose tests were all
 * skipped exits 77, which CTest (SKIP_RETURN_CODE 77) reports as skipped, not passed. */
#ifndef NLSR_TEST_H
#define NLSR_TEST_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_failed_ = 0, test_passed_ = 0, test_cur_failed_ = 0;
static int test_skipped_ = 0, test_cur_skipped_ = 0, test_ran_ = 0;
static const char *test_only_ = NULL; /* run only this test (argv[1]) */

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
/* Doubles compared exactly (bit-identical results; 0.0 == -0.0). */
#define ASSERT_EQ_D(a, b)                                                                         \
    do {                                                                                          \
        double a_ = (double)(a), b_ = (double)(b);                                                \
        if (!(a_ == b_)) FAILF("%s == %s: %.17g != %.17g", #a, #b, a_, b_);                       \
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

/* The current test cannot run here: says why on stdout and ends it as skipped (only from the
 * test function itself; helpers set test_cur_skipped_ and return). */
#define TEST_SKIP(...)                                                                            \
    do {                                                                                          \
        printf("  skipped: ");                                                                    \
        printf(__VA_ARGS__);                                                                      \
        putchar('\n');                                                                            \
        test_cur_skipped_ = 1;                                                                    \
        return;                                                                                   \
    } while (0)

/* argv[1], if given, names the one test to run. */
static inline void test_init(int argc, char **argv)
{
    test_only_ = argc > 1 ? argv[1] : NULL;
}

/* Whether the test named `name` runs in this invocation; if so, it starts. */
static inline int test_begin_(const char *name, int alone)
{
    if (test_only_ ? strcmp(test_only_, name) != 0 : alone) return 0;
    test_ran_++;
    test_cur_failed_ = 0;
    test_cur_skipped_ = 0;
    return 1;
}

static inline void test_end_(const char *name)
{
    if (test_cur_failed_) {
        test_failed_++;
        fprintf(stderr, "FAIL %s\n", name);
    } else if (test_cur_skipped_) {
        test_skipped_++;
        printf("SKIP %s\n", name);
    } else {
        test_passed_++;
    }
}

#define RUN_TEST_(fn, alone)                                                                      \
    do {                                                                                          \
        if (test_begin_(#fn, alone)) {                                                            \
            fn();                                                                                 \
            test_end_(#fn);                                                                       \
        }                                                                                         \
    } while (0)
/* Runs one test function and counts it. */
#define RUN_TEST(fn) RUN_TEST_(fn, 0)
/* A test that runs only when named on the command line (a CTest entry of its own). */
#define RUN_TEST_ALONE(fn) RUN_TEST_(fn, 1)
/* A test that needs the library's test hooks (environment switches that only builds configured
 * with -DNLSR_TEST_HOOKS=ON obey: src/common/testhook.h); skipped, and said, otherwise. */
#ifdef NLSR_TEST_HOOKS
#define RUN_HOOK_TEST(fn) RUN_TEST(fn)
#else
static inline void test_hooks_missing_(void)
{
    TEST_SKIP("needs a build with -DNLSR_TEST_HOOKS=ON");
}
#define RUN_HOOK_TEST(fn)                                                                         \
    do {                                                                                          \
        (void)fn;                                                                                 \
        if (test_begin_(#fn, 0)) {                                                                \
            test_hooks_missing_();                                                                \
            test_end_(#fn);                                                                       \
        }                                                                                         \
    } while (0)
#endif

/* Exit status: 1 if a test failed (or the named test does not exist), 77 if every test that
 * ran was skipped, else 0. */
static inline int test_finish(void)
{
    if (test_skipped_) printf("%d passed, %d failed, %d skipped\n", test_passed_, test_failed_,
                              test_skipped_);
    else printf("%d passed, %d failed\n", test_passed_, test_failed_);
    if (test_only_ && !test_ran_) {
        fprintf(stderr, "no test named %s\n", test_only_);
        return 1;
    }
    if (test_failed_) return 1;
    return test_passed_ == 0 && test_skipped_ > 0 ? 77 : 0;
}

#endif
