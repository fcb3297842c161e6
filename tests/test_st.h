/* SPDX-License-Identifier: Apache-2.0 */
/* Small safetensors checkpoints written by the tests: tensors given as f32 values, stored in
 * any float dtype. Include after test.h, with _GNU_SOURCE defined. */
#ifndef NLSR_TEST_ST_H
#define NLSR_TEST_ST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../src/compute/convert.h"
#include "../src/io/safetensors.h"

typedef struct tst_tensor {
    const char *name;
    nlsr_dtype dt;
    int ndim;
    uint64_t shape[3];
    const float *v; /* numel values */
} tst_tensor;

/* Writes the tensors to path (one safetensors file), with one metadata entry if key != NULL. */
static inline void tst_write(const char *path, const tst_tensor *t, size_t n, const char *key,
                      const char *val)
{
    st_wtensor *w = calloc(n ? n : 1, sizeof *w);
    if (!w) abort();
    for (size_t i = 0; i < n; i++) w[i] = (st_wtensor){t[i].name, t[i].dt, t[i].ndim, t[i].shape};
    st_meta meta = {(char *)key, (char *)val};
    st_writer *sw = NULL;
    nlsr_err e = {0, ""};
    if (st_writer_begin(path, w, n, key ? &meta : NULL, key ? 1 : 0, &sw, &e) < 0) {
        fprintf(stderr, "write %s: %s\n", path, e.msg);
        abort();
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t cnt = 1;
        for (int d = 0; d < t[i].ndim; d++) cnt *= t[i].shape[d];
        size_t es = nlsr_dtype_size(t[i].dt);
        unsigned char *buf = calloc((size_t)cnt ? (size_t)cnt : 1, es);
        if (!buf) abort();
        nlsr_from_f32(t[i].dt, t[i].v, buf, (size_t)cnt);
        if (st_writer_write(sw, buf, (size_t)cnt * es) < 0) abort();
        free(buf);
    }
    if (st_writer_commit(sw) < 0) abort();
    free(w);
}

/* A checkpoint folder dir/model.safetensors. */
static inline void tst_write_dir(const char *dir, const tst_tensor *t, size_t n)
{
    mkdir(dir, 0755);
    char *file = NULL;
    if (asprintf(&file, "%s/model.safetensors", dir) < 0) abort();
    tst_write(file, t, n, NULL, NULL);
    free(file);
}

/* A standard normal value from a splitmix-style generator (Box-Muller). */
static inline double tst_gauss(uint64_t *s)
{
    *s += 0x9E3779B97F4A7C15ull;
    uint64_t z = *s;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    double u1 = ((double)(z >> 11) + 0.5) * 0x1p-53, u2 = (double)((z & 0x7FF) + 1) / 2049.0;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

#endif
