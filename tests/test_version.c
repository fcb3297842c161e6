/* SPDX-License-Identifier: Apache-2.0 */
/* One version everywhere: include/nlsr.h's NLSR_VERSION_MAJOR/MINOR/PATCH and NLSR_VERSION,
 * nlsr_version() of the static and of the shared library, CMake's project version (which
 * CMakeLists.txt reads from the header), the shared library's SONAME (libnlsr.so.MAJOR),
 * `nlsr --version`, and the newest entry of CHANGELOG.md. The shared library exports the
 * public functions and hides internal ones. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nlsr.h"
#include "test.h"

static char header_version[64];

static void test_macros_agree(void)
{
    snprintf(header_version, sizeof header_version, "%d.%d.%d", NLSR_VERSION_MAJOR,
             NLSR_VERSION_MINOR, NLSR_VERSION_PATCH);
    ASSERT_STR_EQ(NLSR_VERSION, header_version);
    ASSERT_STR_EQ(nlsr_version(), NLSR_VERSION);
    ASSERT_STR_EQ(NLSR_PROJECT_VERSION, NLSR_VERSION);
}

/* The first "## [X.Y.Z]" heading of CHANGELOG.md is the version being built. */
static void test_changelog_newest(void)
{
    FILE *f = fopen(NLSR_CHANGELOG, "r");
    ASSERT_TRUE(f != NULL);
    if (!f) return;
    char line[512], newest[64] = "";
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "## [%63[^]]]", newest) == 1) break;
    fclose(f);
    ASSERT_STR_EQ(newest, NLSR_VERSION);
}

static void test_cli_version(void)
{
    FILE *p = popen("'" NLSR_CLI "' --version", "r");
    ASSERT_TRUE(p != NULL);
    if (!p) return;
    char out[256] = "";
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    ASSERT_EQ_I(pclose(p), 0);
    char want[128];
    snprintf(want, sizeof want, "nlsr %s\n", NLSR_VERSION);
    ASSERT_STR_EQ(out, want);
}

static void test_shared_library(void)
{
    char soname[64];
    snprintf(soname, sizeof soname, "libnlsr.so.%d", NLSR_VERSION_MAJOR);
    const char *base = strrchr(NLSR_SHARED_SONAME_FILE, '/');
    ASSERT_STR_EQ(base ? base + 1 : NLSR_SHARED_SONAME_FILE, soname);
    void *h = dlopen(NLSR_SHARED_SONAME_FILE, RTLD_NOW | RTLD_LOCAL);
    if (!h) FAILF("dlopen %s: %s", NLSR_SHARED_SONAME_FILE, dlerror());
    if (!h) return;
    const char *(*version)(void) = NULL;
    *(void **)&version = dlsym(h, "nlsr_version");
    ASSERT_TRUE(version != NULL);
    if (version) ASSERT_STR_EQ(version(), NLSR_VERSION);
    ASSERT_TRUE(dlsym(h, "nlsr_ckpt_open") != NULL);
    /* Internal functions (src/common/err.h, src/io/file.h) are not part of the ABI. */
    ASSERT_TRUE(dlsym(h, "nlsr_fail") == NULL);
    ASSERT_TRUE(dlsym(h, "nlsr_pread_all") == NULL);
    dlclose(h);
}

int main(void)
{
    RUN_TEST(test_macros_agree);
    RUN_TEST(test_changelog_newest);
    RUN_TEST(test_cli_version);
    RUN_TEST(test_shared_library);
    return test_finish();
}
