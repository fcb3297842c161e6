/* SPDX-License-Identifier: Apache-2.0 */
/* examples/api.c: realigning a fine-tune through the public API (include/nlsr.h), the way a
 * program linked against an installed libnlsr does it:
 *
 *   cc api.c $(pkg-config --cflags --libs nlsr) -o api          # libnlsr.so
 *   find_package(nlsr) + target_link_libraries(api nlsr::nlsr)   # examples/CMakeLists.txt
 *
 *   ./api BASE ALIGNED FINETUNED OUT REPORT
 *
 * It opens the three checkpoints (every header validated, no tensor data read), runs the three
 * steps with nlsr_run into OUT with the JSON report written to REPORT, stops cleanly on Ctrl-C
 * (the cancel flag), shows the job's progress (a line per phase as it ends, and at most one a
 * second while it runs: nlsr_ctx_set_progress) and what the library has to say (warnings and
 * notices: nlsr_ctx_set_log; the library itself prints nothing), prints the bytes the job read
 * and wrote (nlsr_ctx_counters), then reads the report back and prints how many modules were
 * patched. Exit status: 0, 1 on failure (the context's one-line message), 2 usage, 130
 * interrupted. */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nlsr.h>

static volatile sig_atomic_t stop;

static void on_sigint(int sig)
{
    stop = sig; /* read by the job at its next safe point: nlsr_ctx_set_cancel_flag */
}

/* The library's log: warnings and notices (a step-down to another I/O backend, a lock waited
 * for) on stderr; the human summary (info) is left out, as this program prints its own. */
static void on_log(void *user, nlsr_log_level level, const char *line)
{
    (void)user;
    if (level == NLSR_LOG_WARN || level == NLSR_LOG_NOTICE)
        fprintf(stderr, "api: %s: %s\n", nlsr_log_level_name(level), line);
}

/* Progress: the job's phases ("similarities", then "output" for the single pass), with the bytes
 * done of the planned total. Called from the thread running the job. */
static void on_progress(void *user, const nlsr_progress *p)
{
    (void)user;
    if (p->finished)
        printf("%s %s: done, %llu bytes in %.2f s\n", p->job, p->phase,
               (unsigned long long)p->bytes_total, p->seconds);
    else if (p->bytes_done > 0)
        printf("%s %s: %llu of %llu bytes (%.0f%%)\n", p->job, p->phase,
               (unsigned long long)p->bytes_done, (unsigned long long)p->bytes_total,
               100.0 * (double)p->bytes_done / (double)p->bytes_total);
    fflush(stdout);
}

/* Opens a checkpoint and says what it is. */
static int describe(nlsr_ctx *ctx, const char *role, const char *path)
{
    nlsr_ckpt *ck = NULL;
    int rc = nlsr_ckpt_open(ctx, path, &ck);
    if (rc < 0) return rc;
    printf("%-9s %s: %s, %zu tensors in %zu file(s)\n", role, path,
           nlsr_ckpt_get_kind(ck) == NLSR_CKPT_PEFT ? "PEFT adapter" : "full weights",
           nlsr_ckpt_tensor_count(ck), nlsr_ckpt_shard_count(ck));
    nlsr_ckpt_free(ck);
    return 0;
}

/* The report's summary counts: {"modules": [...], "summary": {"modules": M, "patched": P, ...}}.
 * A few string searches keep the example free of a JSON library. */
static int read_summary(const char *path, long *modules, long *patched)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            char *nb = realloc(buf, 2 * cap + 1);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (!buf) return -1;
    buf[n] = '\0';
    int rc = -1;
    const char *s = strstr(buf, "\"summary\"");
    const char *m = s ? strstr(s, "\"modules\":") : NULL;
    const char *p = s ? strstr(s, "\"patched\":") : NULL;
    if (m && p) {
        *modules = strtol(m + strlen("\"modules\":"), NULL, 10);
        *patched = strtol(p + strlen("\"patched\":"), NULL, 10);
        rc = 0;
    }
    free(buf);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s BASE ALIGNED FINETUNED OUT REPORT\n", argv[0]);
        return 2;
    }
    const char *base = argv[1], *aligned = argv[2], *finetuned = argv[3];
    const char *out = argv[4], *report = argv[5];
    printf("libnlsr %s (compiled against %s)\n", nlsr_version(), NLSR_VERSION);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);

    nlsr_ctx *ctx = nlsr_ctx_create();
    if (!ctx) {
        fprintf(stderr, "api: out of memory\n");
        return 1;
    }
    nlsr_ctx_set_cancel_flag(ctx, &stop);
    nlsr_ctx_set_log(ctx, on_log, NULL);
    nlsr_ctx_set_progress(ctx, on_progress, NULL, 1.0); /* at most a line a second per phase */
    nlsr_ctx_set_mem_budget(ctx, 256ull << 20);

    int rc = describe(ctx, "base", base);
    if (rc == 0) rc = describe(ctx, "aligned", aligned);
    if (rc == 0) rc = describe(ctx, "finetuned", finetuned);
    if (rc == 0) {
        nlsr_realign_params p;
        nlsr_realign_params_init(&p); /* the defaults: adaptive selection, seed 42 */
        p.report_path = report;
        rc = nlsr_run(ctx, base, aligned, NULL, finetuned, out, &p);
    }
    if (rc < 0) {
        int why = nlsr_ctx_cancelled(ctx);
        fprintf(stderr, "api: %s\n", *nlsr_ctx_error(ctx) ? nlsr_ctx_error(ctx) : nlsr_strerror(rc));
        nlsr_ctx_free(ctx);
        return rc == NLSR_E_CANCELLED && why ? 128 + why : 1;
    }

    uint64_t rd = 0, wr = 0;
    nlsr_ctx_counters(ctx, &rd, &wr);
    printf("realigned into %s: read %llu bytes, wrote %llu bytes, %s I/O, peak buffers %llu "
           "bytes\n",
           out, (unsigned long long)rd, (unsigned long long)wr,
           nlsr_io_kind_name(nlsr_ctx_io_used(ctx)), (unsigned long long)nlsr_ctx_mem_peak(ctx));
    nlsr_ctx_free(ctx);

    long modules = 0, patched = 0;
    if (read_summary(report, &modules, &patched) != 0) {
        fprintf(stderr, "api: %s: no summary with modules and patched counts\n", report);
        return 1;
    }
    printf("report %s: %ld modules, %ld patched\n", report, modules, patched);
    printf("patched modules: %ld\n", patched);
    return 0;
}
