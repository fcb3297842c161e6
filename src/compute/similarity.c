#include "similarity.h"

#include <math.h>

void nlsr_full_reference_f32(const float *a, const float *b, float beta, float *e, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float d = a[i] - b[i];
        float g = beta * d;
        e[i] = a[i] + g;
    }
}

void nlsr_full_score_f32(const float *e, const float *b, float *s, size_t n)
{
    for (size_t i = 0; i < n; i++) s[i] = fabsf(e[i] - b[i]);
}

void nlsr_cos_add_masked(nlsr_cos_sums *acc, const float *t, const float *e, const float *b,
                         size_t m)
{
    double dot = acc->dot, nx = acc->nx, ny = acc->ny;
    for (size_t i = 0; i < m; i++) {
        double x = (double)(t[i] - b[i]);
        double y = (double)(e[i] - b[i]);
        dot += x * y;
        nx += x * x;
        ny += y * y;
    }
    acc->dot = dot;
    acc->nx = nx;
    acc->ny = ny;
}

size_t nlsr_first_nonfinite_f32(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return i;
    return n;
}
