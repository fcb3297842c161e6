/* SPDX-License-Identifier: Apache-2.0 */
/* The progress bar (progress.h). */
#define _GNU_SOURCE
#include "progress.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BAR 24

double nlsr_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

const char *nlsr_fmt_bytes(double b, char *buf, size_t len)
{
    static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024.0 && u < 4) {
        b /= 1024.0;
        u++;
    }
    if (u == 0) snprintf(buf, len, "%.0f B", b);
    else snprintf(buf, len, "%.2f %s", b, unit[u]);
    return buf;
}

void nlsr_progress_start(nlsr_progress *p, const nlsr_ctx *ctx, const char *label,
                         uint64_t total)
{
    memset(p, 0, sizeof *p);
    p->on = !ctx->quiet && isatty(STDERR_FILENO);
    p->label = label;
    p->total = total;
    p->t0 = p->last = nlsr_now();
}

static void draw(nlsr_progress *p, double now)
{
    double frac = p->total ? (double)p->done / (double)p->total : 1.0;
    if (frac > 1.0) frac = 1.0;
    char bar[BAR + 1];
    int fill = (int)(frac * BAR);
    for (int i = 0; i < BAR; i++) bar[i] = i < fill ? '#' : '.';
    bar[BAR] = '\0';
    double dt = now - p->t0;
    double rate = dt > 0 ? (double)p->done / dt : 0;
    char d[32], t[32], r[32], eta[32] = "--:--";
    if (rate > 0 && p->total >= p->done) {
        long s = (long)((double)(p->total - p->done) / rate + 0.5);
        snprintf(eta, sizeof eta, "%ld:%02ld", s / 60, s % 60);
    }
    int n = fprintf(stderr, "\r%s [%s] %s / %s  %s/s  ETA %s ", p->label, bar,
                    nlsr_fmt_bytes((double)p->done, d, sizeof d),
                    nlsr_fmt_bytes((double)p->total, t, sizeof t),
                    nlsr_fmt_bytes(rate, r, sizeof r), eta);
    if (n > p->width) p->width = n;
    fflush(stderr);
}

void nlsr_progress_add(nlsr_progress *p, uint64_t bytes)
{
    p->done += bytes;
    if (!p->on) return;
    double now = nlsr_now();
    if (now - p->last < 0.1 && p->done < p->total) return;
    p->last = now;
    draw(p, now);
}

void nlsr_progress_end(nlsr_progress *p)
{
    if (!p->on || p->width == 0) return;
    fprintf(stderr, "\r%*s\r", p->width, "");
    fflush(stderr);
}
