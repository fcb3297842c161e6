/* SPDX-License-Identifier: Apache-2.0 */
/* The output-path rules (src/io/outpath.h) at the function level: resolution without following
 * the last component, refusals on and around inputs, the --force policy, tree removal that
 * never follows links, stale temporary outputs, non-blocking opens, and the mmap SIGBUS guard.
 * The same rules through the nlsr program, with every file of a sandbox checked, are in
 * tests/hostile/. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/common/ctx.h"
#include "../src/io/file.h"
#include "../src/io/io.h"
#include "../src/io/outpath.h"
#include "test.h"

static char root[] = "/tmp/nlsr-test-outpath-XXXXXX";

static char *P(const char *rel)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", root, rel) < 0) abort();
    return p;
}

static void put(const char *rel, const char *txt)
{
    char *p = P(rel);
    FILE *f = fopen(p, "w");
    if (!f) abort();
    fputs(txt, f);
    fclose(f);
    free(p);
}

static void mk(const char *rel)
{
    char *p = P(rel);
    if (mkdir(p, 0755) != 0 && errno != EEXIST) abort();
    free(p);
}

static void ln(const char *target, const char *rel)
{
    char *p = P(rel);
    if (symlink(target, p) != 0) abort();
    free(p);
}

static int exists(const char *rel)
{
    char *p = P(rel);
    struct stat st;
    int r = lstat(p, &st) == 0;
    free(p);
    return r;
}

/* nlsr_out_check on `out` (relative to root) with inputs ft/ and base.safetensors. */
static int check(const char *out, nlsr_out_kind kind, int force, char *msg, size_t cap)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    char *o = P(out), *ft = P("ft"), *b = P("base.safetensors");
    const char *in[2] = {ft, b};
    int rc = nlsr_out_check(ctx, o, kind, force, in, 2, NULL);
    if (msg) snprintf(msg, cap, "%s", nlsr_ctx_error(ctx));
    nlsr_ctx_free(ctx);
    free(o);
    free(ft);
    free(b);
    return rc;
}

static void test_resolve(void)
{
    nlsr_err e = {0};
    char *r = NULL, *want = NULL;
    char *dir = P("ft");
    /* A missing middle part is taken lexically, as mkdir -p then makes it. */
    char *q = P("nonexist/../ft");
    ASSERT_EQ_I(nlsr_out_resolve(&e, q, &r), 0);
    ASSERT_STR_EQ(r, dir);
    free(r);
    free(q);
    /* Trailing slashes and "." do not make a link's target the output. */
    q = P("latest/");
    ASSERT_EQ_I(nlsr_out_resolve(&e, q, &r), 0);
    want = P("latest");
    ASSERT_STR_EQ(r, want);
    free(r);
    free(q);
    free(want);
    /* A link in the middle is followed, as the kernel follows it. */
    q = P("latest/sub");
    ASSERT_EQ_I(nlsr_out_resolve(&e, q, &r), 0);
    want = P("ft/sub");
    ASSERT_STR_EQ(r, want);
    free(r);
    free(q);
    free(want);
    free(dir);
}

static void test_on_inputs(void)
{
    char msg[1024];
    ASSERT_EQ_I(check("ft", NLSR_OUT_DIR, 1, msg, sizeof msg), NLSR_E_USAGE);
    ASSERT_CONTAINS(msg, "is on input");
    ASSERT_EQ_I(check("nonexist/../ft", NLSR_OUT_DIR, 1, msg, sizeof msg), NLSR_E_USAGE);
    ASSERT_EQ_I(check("ft/sub/deeper", NLSR_OUT_DIR, 0, msg, sizeof msg), NLSR_E_USAGE);
    ASSERT_CONTAINS(msg, "inside it");
    ASSERT_EQ_I(check("latest/x", NLSR_OUT_DIR, 0, msg, sizeof msg), NLSR_E_USAGE);
    ASSERT_EQ_I(check(".", NLSR_OUT_DIR, 1, msg, sizeof msg), NLSR_E_USAGE);
    ASSERT_CONTAINS(msg, "would contain it");
    ASSERT_EQ_I(check("ft/model.safetensors", NLSR_OUT_FILE, 1, msg, sizeof msg), NLSR_E_USAGE);
    /* A hard link to an input file, and the blob an input folder's link points to. */
    ASSERT_EQ_I(check("hard.json", NLSR_OUT_FILE, 1, msg, sizeof msg), NLSR_E_USAGE);
    ASSERT_CONTAINS(msg, "same file under another name");
    ASSERT_EQ_I(check("blobs/cfg", NLSR_OUT_FILE, 1, msg, sizeof msg), NLSR_E_USAGE);
    ASSERT_EQ_I(check("blobs", NLSR_OUT_DIR, 1, msg, sizeof msg), NLSR_E_USAGE);
    ASSERT_EQ_I(check("base.safetensors", NLSR_OUT_FILE, 1, msg, sizeof msg), NLSR_E_USAGE);
    /* Beside the inputs is fine. */
    ASSERT_EQ_I(check("fresh", NLSR_OUT_DIR, 0, msg, sizeof msg), 0);
    ASSERT_EQ_I(check("fresh/deeper/report.json", NLSR_OUT_FILE, 0, msg, sizeof msg), 0);
}

static void test_force_policy(void)
{
    char msg[1024];
    ASSERT_EQ_I(check("latest", NLSR_OUT_DIR, 1, msg, sizeof msg), NLSR_E_USAGE);
    ASSERT_CONTAINS(msg, "symbolic link");
    ASSERT_EQ_I(check("dangling", NLSR_OUT_FILE, 1, msg, sizeof msg), NLSR_E_USAGE);
    ASSERT_EQ_I(check("plain.txt", NLSR_OUT_DIR, 1, msg, sizeof msg), NLSR_E_USAGE);
    ASSERT_CONTAINS(msg, "not a folder");
    ASSERT_EQ_I(check("fifo", NLSR_OUT_FILE, 1, msg, sizeof msg), NLSR_E_USAGE);
    ASSERT_CONTAINS(msg, "FIFO");
    ASSERT_EQ_I(check("theirs", NLSR_OUT_DIR, 1, msg, sizeof msg), NLSR_E_USAGE);
    ASSERT_CONTAINS(msg, "did not write");
    ASSERT_EQ_I(check("theirs", NLSR_OUT_DIR, 0, msg, sizeof msg), NLSR_E_EXISTS);
    ASSERT_EQ_I(check("empty", NLSR_OUT_DIR, 1, msg, sizeof msg), 0);
    ASSERT_EQ_I(check("plain.txt", NLSR_OUT_FILE, 0, msg, sizeof msg), NLSR_E_EXISTS);
    ASSERT_EQ_I(check("plain.txt", NLSR_OUT_FILE, 1, msg, sizeof msg), 0);
}

/* A folder made by nlsr_tmp_dir and committed can be replaced with force; the exchange removes
 * the old one, and its links are removed, never followed. */
static void test_commit_replace(void)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    char *out = P("made"), *tmp = NULL;
    ASSERT_EQ_I(nlsr_tmp_dir(ctx, out, &tmp), 0);
    ASSERT_TRUE(strstr(tmp, ".nlsr-tmp-") != NULL);
    ASSERT_EQ_I(nlsr_tmp_dir_commit(ctx, tmp, out, 0), 0);
    free(tmp);
    ASSERT_TRUE(nlsr_marker_present(out));
    /* Plant a link to a victim inside the old output. */
    char *victim = P("victim");
    char *inside = P("made/link");
    if (symlink(victim, inside) != 0) abort();
    char *out_s = P("made");
    ASSERT_EQ_I(check("made", NLSR_OUT_DIR, 1, NULL, 0), 0);
    ASSERT_EQ_I(nlsr_tmp_dir(ctx, out_s, &tmp), 0);
    ASSERT_EQ_I(nlsr_tmp_dir_commit(ctx, tmp, out_s, 0), NLSR_E_EXISTS);
    ASSERT_EQ_I(nlsr_tmp_dir_commit(ctx, tmp, out_s, 1), 0);
    ASSERT_TRUE(exists("victim/keep"));
    ASSERT_TRUE(!exists("made/link"));
    /* No temporary folder is left beside it. */
    ASSERT_EQ_I(system("ls -a /tmp/nlsr-test-outpath-* | grep -q 'made.nlsr-tmp'"), 256);
    free(tmp);
    free(victim);
    free(inside);
    free(out_s);
    free(out);
    nlsr_ctx_free(ctx);
}

static void test_tree_remove(void)
{
    mk("tree");
    mk("tree/sub");
    put("tree/sub/a", "a");
    ln("../../victim", "tree/sub/up");
    ln("../victim", "tree/v");
    char *t = P("tree");
    ASSERT_EQ_I(nlsr_tree_remove(t), 0);
    ASSERT_TRUE(!exists("tree"));
    ASSERT_TRUE(exists("victim/keep"));
    /* A link given as the tree: the link goes, its target stays. */
    ln("victim", "vlink");
    char *v = P("vlink");
    ASSERT_EQ_I(nlsr_tree_remove(v), 0);
    ASSERT_TRUE(!exists("vlink"));
    ASSERT_TRUE(exists("victim/keep"));
    free(v);
    free(t);
}

/* Leftovers: a dead run's marked folder goes; a look-alike without a marker, a live run's
 * folder and a committed output stay. */
static void test_sweep(void)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_quiet(ctx, 1);
    char *out = P("swept"), *tmp = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        /* A run that dies after making its temporary folder. */
        char *t = NULL;
        _exit(nlsr_tmp_dir(ctx, out, &t) == 0 ? 0 : 1);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    ASSERT_EQ_I(WEXITSTATUS(st), 0);
    mk("swept.nlsr-tmp-userfile");
    put("swept.nlsr-tmp-userfile/data", "mine");
    ASSERT_EQ_I(nlsr_tmp_dir(ctx, out, &tmp), 0); /* ours, alive: kept by the sweep below */
    char *dir = P("");
    nlsr_tmp_sweep(ctx, dir, "swept.nlsr-tmp-");
    ASSERT_TRUE(exists("swept.nlsr-tmp-userfile/data"));
    ASSERT_TRUE(access(tmp, F_OK) == 0);
    /* Exactly two entries with the prefix remain: the user's and the live one. */
    ASSERT_EQ_I(system("test $(ls -d /tmp/nlsr-test-outpath-*/swept.nlsr-tmp-* | wc -l) = 2"), 0);
    ASSERT_EQ_I(nlsr_tmp_dir_commit(ctx, tmp, out, 0), 0);
    free(tmp);
    free(dir);
    free(out);
    nlsr_ctx_free(ctx);
}

static void test_open_regular(void)
{
    nlsr_err e = {0};
    int fd = -1;
    char *f = P("fifo");
    /* Would block forever with a plain open: no writer ever comes. */
    ASSERT_EQ_I(nlsr_open_regular(&e, f, O_RDONLY, 1, &fd), NLSR_E_FORMAT);
    ASSERT_CONTAINS(e.msg, "is a FIFO, not a regular file");
    ASSERT_EQ_I(fd, -1);
    nlsr_err_clear(&e);
    ASSERT_TRUE(nlsr_open_regular(&e, "/dev/null", O_RDONLY, 1, &fd) < 0);
    nlsr_err_clear(&e);
    char *l = P("latest");
    ASSERT_EQ_I(nlsr_open_regular(&e, l, O_RDONLY, 0, &fd), NLSR_E_USAGE);
    nlsr_err_clear(&e);
    char *pl = P("plain.txt");
    ASSERT_EQ_I(nlsr_open_regular(&e, pl, O_RDONLY, 1, &fd), 0);
    ASSERT_TRUE(fd >= 0 && (fcntl(fd, F_GETFL) & O_NONBLOCK) == 0);
    close(fd);
    free(pl);
    free(l);
    free(f);
}

/* A mapped input truncated under the reader: no SIGBUS, the window says so. */
static void test_mmap_guard(void)
{
    char *f = P("mapped.bin");
    int fd = open(f, O_RDWR | O_CREAT | O_TRUNC, 0644);
    static unsigned char buf[65536];
    memset(buf, 7, sizeof buf);
    ASSERT_EQ_I(write(fd, buf, sizeof buf), (long)sizeof buf);
    nlsr_err e = {0};
    nlsr_io_map m = {0};
    const unsigned char *data = NULL;
    ASSERT_EQ_I(nlsr_io_map_read(fd, 0, sizeof buf, 0, &m, &data, f, &e), 0);
    ASSERT_EQ_I(nlsr_io_map_populate(&m, &e), 0);
    ASSERT_EQ_I(data[40000], 7);
    ASSERT_EQ_I(ftruncate(fd, 4096), 0);
    /* The pages past the new end are gone from the mapping: touching one would kill us. */
    volatile unsigned char v = data[40000];
    ASSERT_EQ_I(v, 0);
    ASSERT_EQ_I(data[100], 7);
    ASSERT_EQ_I(nlsr_io_unmap(&m), 1);
    /* populate itself notices a window past the end. */
    nlsr_io_map m2 = {0};
    ASSERT_EQ_I(nlsr_io_map_read(fd, 0, sizeof buf, 0, &m2, &data, f, &e), 0);
    ASSERT_EQ_I(nlsr_io_map_populate(&m2, &e), NLSR_E_FORMAT);
    ASSERT_CONTAINS(e.msg, "shrank");
    ASSERT_EQ_I(nlsr_io_unmap(&m2), 0);
    close(fd);
    free(f);
}

int main(void)
{
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    mk("ft");
    put("ft/model.safetensors", "x");
    put("base.safetensors", "b");
    mk("blobs");
    put("blobs/cfg", "{}");
    ln("../blobs/cfg", "ft/config.json");
    char *a = P("ft/model.safetensors"), *h = P("hard.json");
    if (link(a, h) != 0) abort();
    free(a);
    free(h);
    ln("ft", "latest");
    ln("nowhere", "dangling");
    put("plain.txt", "p");
    char *fifo = P("fifo");
    if (mkfifo(fifo, 0644) != 0) abort();
    free(fifo);
    mk("theirs");
    put("theirs/data", "d");
    mk("empty");
    mk("victim");
    put("victim/keep", "k");
    RUN_TEST(test_resolve);
    RUN_TEST(test_on_inputs);
    RUN_TEST(test_force_policy);
    RUN_TEST(test_commit_replace);
    RUN_TEST(test_tree_remove);
    RUN_TEST(test_sweep);
    RUN_TEST(test_open_regular);
    RUN_TEST(test_mmap_guard);
    (void)nlsr_tree_remove(root);
    return test_finish();
}
