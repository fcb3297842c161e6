/* SPDX-License-Identifier: Apache-2.0 */
/* File and folder comparison shared by the job tests: outputs are compared byte for byte.
 * Include after test.h, with _GNU_SOURCE defined and src/io/file.h and src/io/outpath.h
 * included. */
#ifndef NLSR_TEST_FILES_H
#define NLSR_TEST_FILES_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The whole file (up to 1 GiB), malloc'd; NULL if it cannot be read. */
static inline unsigned char *read_all(const char *path, size_t *len)
{
    char *buf = NULL;
    size_t n = 0;
    nlsr_err e = {0, ""};
    if (nlsr_read_small_file(path, 1u << 30, &buf, &n, &e) < 0) return NULL;
    if (len) *len = n;
    return (unsigned char *)buf;
}

static inline int files_equal(const char *a, const char *b)
{
    size_t na = 0, nb = 0;
    unsigned char *x = read_all(a, &na), *y = read_all(b, &nb);
    int eq = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return eq;
}

/* Every file of folder a not starting with '.' is in folder b with the same bytes, and b has
 * no other such files. Differences are named on stderr. */
static inline int folders_equal(const char *a, const char *b)
{
    int eq = 1, na = 0, nb = 0;
    DIR *d = opendir(a);
    if (!d) return 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        na++;
        char *pa = NULL, *pb = NULL;
        if (asprintf(&pa, "%s/%s", a, de->d_name) < 0 || asprintf(&pb, "%s/%s", b, de->d_name) < 0)
            abort();
        if (!files_equal(pa, pb)) {
            fprintf(stderr, "  differs: %s vs %s\n", pa, pb);
            eq = 0;
        }
        free(pa);
        free(pb);
    }
    closedir(d);
    if (!(d = opendir(b))) return 0;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.') nb++;
    closedir(d);
    return eq && na == nb;
}

/* dst becomes a fresh copy of folder src's visible files (a fixture to patch in place). */
static inline void copy_dir(const char *src, const char *dst)
{
    (void)nlsr_tree_remove(dst);
    if (mkdir(dst, 0755) != 0) abort();
    DIR *d = opendir(src);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char *s = nlsr_path_join(src, de->d_name), *t = nlsr_path_join(dst, de->d_name);
        nlsr_err e = {0, ""};
        if (!s || !t || nlsr_copy_file(s, t, &e) < 0) abort();
        free(s);
        free(t);
    }
    if (d) closedir(d);
}

#endif
