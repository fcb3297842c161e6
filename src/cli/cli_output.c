/* SPDX-License-Identifier: Apache-2.0 */
/* The program's printer (cli_output.h). One job runs at a time in the program, so the state is
 * one static record: the verbosity, whether stderr is a terminal, and the bar drawn last. */
#define _GNU_SOURCE
#include "cli_output.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BAR 24
#define TTY_INTERVAL 0.1

static struct {
    int verbosity;
    int tty;
    double interval;  /* non-terminal lines */
    int drawn;        /* characters of the bar on the terminal's last line, 0 if none */
} out;

/* "1.50 GiB" (binary units, as the summaries). */
static const char *fmt_bytes(double b, char *buf, size_t len)
{
    static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    int u = 0;
    while (b >= 1024.0 && u < 5) {
        b /= 1024.0;
        u++;
    }
    if (u == 0) snprintf(buf, len, "%.0f B", b);
    else snprintf(buf, len, "%.2f %s", b, unit[u]);
    return buf;
}

static const char *fmt_eta(const nlsr_progress *p, double rate, char *buf, size_t len)
{
    if (!(rate > 0) || p->bytes_done > p->bytes_total) {
        snprintf(buf, len, "--");
        return buf;
    }
    double s = (double)(p->bytes_total - p->bytes_done) / rate;
    if (s < 60) snprintf(buf, len, "%.0f s", ceil(s));
    else if (s < 3600) snprintf(buf, len, "%ld min %02ld s", (long)s / 60, (long)s % 60);
    else snprintf(buf, len, "%ld h %02ld min", (long)s / 3600, ((long)s / 60) % 60);
    return buf;
}

void cli_output_clear(void)
{
    if (!out.drawn) return;
    fprintf(stderr, "\r%*s\r", out.drawn, "");
    fflush(stderr);
    out.drawn = 0;
}

static void on_log(void *user, nlsr_log_level level, const char *line)
{
    (void)user;
    if (level != NLSR_LOG_WARN && out.verbosity < 0) return;
    if (level == NLSR_LOG_DEBUG && out.verbosity < 1) return;
    cli_output_clear();
    switch (level) {
    case NLSR_LOG_WARN: fprintf(stderr, "nlsr: warning: %s\n", line); break;
    case NLSR_LOG_INFO: fprintf(stderr, "%s\n", line); break; /* the summary: its own prefix */
    default: fprintf(stderr, "nlsr: %s\n", line); break;
    }
    fflush(stderr);
}

static double percent(const nlsr_progress *p)
{
    if (!p->bytes_total) return p->finished ? 100.0 : 0.0;
    return 100.0 * (double)p->bytes_done / (double)p->bytes_total;
}

/* The bar, redrawn over itself: "run similarities [#####...] 1.20 GiB / 8.40 GiB  310 MiB/s
 * ETA 23 s". */
static void draw_bar(const nlsr_progress *p, double rate)
{
    char bar[BAR + 1], d[32], t[32], r[32], eta[32];
    int fill = (int)(percent(p) / 100.0 * BAR);
    for (int i = 0; i < BAR; i++) bar[i] = i < fill ? '#' : '.';
    bar[BAR] = '\0';
    int n = fprintf(stderr, "\r%s %s [%s] %s / %s  %s/s  ETA %s ", p->job, p->phase, bar,
                    fmt_bytes((double)p->bytes_done, d, sizeof d),
                    fmt_bytes((double)p->bytes_total, t, sizeof t), fmt_bytes(rate, r, sizeof r),
                    fmt_eta(p, rate, eta, sizeof eta));
    /* A shorter line than the last one leaves the rest of it: blank what is left over. */
    if (n < out.drawn) fprintf(stderr, "%*s", out.drawn - n, "");
    if (n > out.drawn) out.drawn = n;
    fflush(stderr);
}

static void on_progress(void *user, const nlsr_progress *p)
{
    (void)user;
    if (out.verbosity < 0) return;
    double rate = p->seconds > 0 ? (double)p->bytes_done / p->seconds : 0.0;
    char d[32], t[32], r[32], eta[32], units[64] = "";
    if (p->units_total)
        snprintf(units, sizeof units, ", %llu of %llu units", (unsigned long long)p->units_done,
                 (unsigned long long)p->units_total);
    if (out.tty) {
        if (!p->finished) {
            draw_bar(p, rate);
            return;
        }
        cli_output_clear();
        if (out.verbosity < 1) return;
    } else if (!p->finished && p->bytes_done == 0 && p->units_done == 0) {
        return; /* a phase's first report says nothing a log needs */
    }
    if (p->finished)
        fprintf(stderr, "nlsr: %s: %s done: %s in %.1f s (%s/s)\n", p->job, p->phase,
                fmt_bytes((double)p->bytes_total, t, sizeof t), p->seconds,
                fmt_bytes(rate, r, sizeof r));
    else
        fprintf(stderr, "nlsr: %s: %s %s of %s (%.0f%%%s), %s/s, ETA %s\n", p->job, p->phase,
                fmt_bytes((double)p->bytes_done, d, sizeof d),
                fmt_bytes((double)p->bytes_total, t, sizeof t), floor(percent(p)), units,
                fmt_bytes(rate, r, sizeof r), fmt_eta(p, rate, eta, sizeof eta));
    fflush(stderr);
}

void cli_output_install(nlsr_ctx *ctx, int verbosity, double progress_interval)
{
    if (progress_interval < 0) progress_interval = CLI_PROGRESS_INTERVAL;
    out.verbosity = verbosity < 0 ? -1 : verbosity > 0 ? 1 : 0;
    out.tty = isatty(STDERR_FILENO);
    out.interval = progress_interval;
    nlsr_ctx_set_quiet(ctx, verbosity < 0);
    nlsr_ctx_set_log(ctx, on_log, NULL);
    if (verbosity < 0) nlsr_ctx_set_progress(ctx, NULL, NULL, 0);
    else
        nlsr_ctx_set_progress(ctx, on_progress, NULL,
                              out.tty && progress_interval > TTY_INTERVAL ? TTY_INTERVAL
                                                                          : progress_interval);
}
