/* SPDX-License-Identifier: Apache-2.0 */
/* The library's voice (README "Progress and logs"): with no callback it writes nothing to stdout
 * or stderr, whatever it has to say (a step-down, a summary, a warning); the log callback gets
 * those lines at their levels; the progress callback gets every long job's phases in order,
 * from the job's thread, with bytes that only grow up to the planned total, throttled. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nlsr.h"
#include "test.h"

#define FX NLSR_TEST_DATA "/hf-tiny-llama"
#define SFT FX "/sft"
#define ALIGNED FX "/aligned"
#define FT FX "/finetuned"

static char work[256];

static char *wpath(const char *name)
{
    static char buf[8][512];
    static int k;
    char *b = buf[k++ % 8];
    snprintf(b, sizeof buf[0], "%s/%s", work, name);
    return b;
}

/* rm -rf dir && cp -r src dir */
static int fresh_copy(const char *src, const char *dir)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", dir, src, dir);
    return system(cmd);
}

/* ---- what the callbacks receive ----------------------------------------------------------- */

typedef struct {
    nlsr_log_level level;
    char text[600];
} logline;

static logline logs[256];
static int nlogs;

static void on_log(void *user, nlsr_log_level level, const char *line)
{
    (void)user;
    if (nlogs < 256) {
        logs[nlogs].level = level;
        snprintf(logs[nlogs].text, sizeof logs[0].text, "%s", line);
        nlogs++;
    }
}

static int count_logs(nlsr_log_level level, const char *needle)
{
    int n = 0;
    for (int i = 0; i < nlogs; i++)
        if (logs[i].level == level && strstr(logs[i].text, needle)) n++;
    return n;
}

typedef struct {
    nlsr_progress p;
    char job[32], phase[32];
    int other_thread;
} prec;

static prec recs[20000];
static int nrecs;
static pthread_t main_thread;

static void on_progress(void *user, const nlsr_progress *p)
{
    (void)user;
    if (nrecs >= 20000) return;
    prec *r = &recs[nrecs++];
    r->p = *p;
    snprintf(r->job, sizeof r->job, "%s", p->job);
    snprintf(r->phase, sizeof r->phase, "%s", p->phase);
    r->p.job = r->job;
    r->p.phase = r->phase;
    r->other_thread = !pthread_equal(pthread_self(), main_thread);
}

static nlsr_ctx *watched_ctx(double interval)
{
    nlogs = nrecs = 0;
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ctx_set_log(ctx, on_log, NULL);
    nlsr_ctx_set_progress(ctx, on_progress, NULL, interval);
    return ctx;
}

/* The reports make up exactly `phases`, in order, each begun at 0 and finished once at its
 * total, bytes and units never going back or past the total; `several`: some report between a
 * phase's first and last (interval 0 reports every update). */
static void expect_phases(const char *job, const char *const *phases, int nph, int several)
{
    int i = 0, between = 0;
    for (int ph = 0; ph < nph; ph++) {
        if (i >= nrecs) {
            FAILF("%s: no report of phase %s", job, phases[ph]);
            return;
        }
        const nlsr_progress *first = &recs[i].p;
        if (strcmp(first->phase, phases[ph]) != 0) {
            FAILF("%s: phase %d is '%s', expected '%s'", job, ph, first->phase, phases[ph]);
            return;
        }
        ASSERT_EQ_U(first->bytes_done, 0);
        ASSERT_EQ_I(first->finished, 0);
        ASSERT_TRUE(first->bytes_total > 0);
        uint64_t last_b = 0, last_u = 0;
        int finished = 0;
        for (; i < nrecs && strcmp(recs[i].phase, phases[ph]) == 0 && !finished; i++) {
            const nlsr_progress *p = &recs[i].p;
            ASSERT_STR_EQ(p->job, job);
            ASSERT_EQ_I(p->phase_index, ph);
            ASSERT_EQ_I(recs[i].other_thread, 0);
            ASSERT_EQ_U(p->bytes_total, first->bytes_total);
            ASSERT_EQ_U(p->units_total, first->units_total);
            ASSERT_TRUE(p->bytes_done >= last_b && p->bytes_done <= p->bytes_total);
            ASSERT_TRUE(p->units_done >= last_u && p->units_done <= p->units_total);
            ASSERT_TRUE(p->seconds >= 0);
            last_b = p->bytes_done;
            last_u = p->units_done;
            finished = p->finished;
            if (finished) {
                ASSERT_EQ_U(p->bytes_done, p->bytes_total);
                ASSERT_EQ_U(p->units_done, p->units_total);
            } else if (p != first) {
                between++;
            }
        }
        if (!finished) FAILF("%s: phase %s has no finished report", job, phases[ph]);
    }
    if (i != nrecs) FAILF("%s: %d reports after the last phase (next: %s)", job, nrecs - i,
                          recs[i].phase);
    if (several && between < nph) FAILF("%s: only %d reports between starts and ends", job, between);
}

static nlsr_realign_params params(void)
{
    nlsr_realign_params p;
    nlsr_realign_params_init(&p);
    return p;
}

/* ---- no callback: not a byte on stdout or stderr -------------------------------------------- */

/* An in-place realignment of a copy of FT in `dir` whose state file is then damaged: rolling
 * it back restores the bytes and warns that the damaged state was removed. */
static int inplace_then_damage(nlsr_ctx *ctx, const char *dir)
{
    if (fresh_copy(FT, dir) != 0) return -1;
    nlsr_realign_params p = params();
    nlsr_inplace_params ip;
    nlsr_inplace_params_init(&ip);
    int rc = nlsr_run_inplace(ctx, SFT, ALIGNED, NULL, dir, &p, &ip, NULL);
    if (rc < 0) return rc;
    char state[600];
    snprintf(state, sizeof state, "%s/.nlsr-state.json", dir);
    FILE *f = fopen(state, "w");
    if (!f) return -2;
    fputs("{ not json", f);
    fclose(f);
    return 0;
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static void test_silent_without_callbacks(void)
{
    char *out_path = wpath("silent.stdout"), *err_path = wpath("silent.stderr");
    fflush(stdout);
    fflush(stderr);
    int so = dup(1), se = dup(2);
    int fo = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int fe = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_TRUE(so >= 0 && se >= 0 && fo >= 0 && fe >= 0);
    dup2(fo, 1);
    dup2(fe, 2);
    /* Nothing here may print: results are checked once the descriptors are back. */
#ifdef NLSR_TEST_HOOKS
    setenv("NLSR_IO_FAULT", "uring-setup", 1); /* a step-down notice to say */
#endif
    int rc[4];
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_realign_params p = params();
    rc[0] = nlsr_run(ctx, SFT, ALIGNED, NULL, FT, wpath("silent_run"), &p);
    nlsr_io_kind used = nlsr_ctx_io_used(ctx);
    rc[1] = nlsr_amplify(ctx, SFT, ALIGNED, wpath("silent_amp"), &p);
    rc[2] = inplace_then_damage(ctx, wpath("silent_ip"));
    nlsr_inplace_result res;
    rc[3] = rc[2] == 0 ? nlsr_rollback(ctx, wpath("silent_ip"), NULL, &res) : -1;
    nlsr_ctx_free(ctx);
    unsetenv("NLSR_IO_FAULT");
    fflush(stdout);
    fflush(stderr);
    dup2(so, 1);
    dup2(se, 2);
    close(so);
    close(se);
    close(fo);
    close(fe);
    for (int i = 0; i < 4; i++) ASSERT_EQ_I(rc[i], 0);
#ifdef NLSR_TEST_HOOKS
    ASSERT_EQ_I(used, NLSR_IO_PREAD); /* the step-down did happen */
#else
    (void)used;
#endif
    ASSERT_EQ_I(file_size(out_path), 0);
    ASSERT_EQ_I(file_size(err_path), 0);
}

/* ---- the log callback --------------------------------------------------------------------- */

static void test_log_levels(void)
{
#ifdef NLSR_TEST_HOOKS
    setenv("NLSR_IO_FAULT", "uring-setup", 1);
#endif
    nlsr_ctx *ctx = watched_ctx(0);
    nlsr_realign_params p = params();
    ASSERT_EQ_I(nlsr_run(ctx, SFT, ALIGNED, NULL, FT, wpath("log_run"), &p), 0);
    unsetenv("NLSR_IO_FAULT");
#ifdef NLSR_TEST_HOOKS
    /* The step-down, once per context however many streams step down. */
    ASSERT_EQ_I(count_logs(NLSR_LOG_NOTICE, "io_uring unavailable"), 1);
    ASSERT_EQ_I(count_logs(NLSR_LOG_NOTICE, "using pread"), 1);
#endif
    /* The human summary, at info level, one line per call. */
    ASSERT_EQ_I(count_logs(NLSR_LOG_INFO, "nlsr run: patched 10 of 21 target modules"), 1);
    ASSERT_TRUE(count_logs(NLSR_LOG_INFO, "  layer 0: 5/7 patched") == 1);
    for (int i = 0; i < nlogs; i++) ASSERT_TRUE(!strchr(logs[i].text, '\n'));
    ASSERT_EQ_I(count_logs(NLSR_LOG_WARN, ""), 0);

    /* The warning of a rollback that removed a damaged state file. */
    ASSERT_EQ_I(inplace_then_damage(ctx, wpath("log_ip")), 0);
    nlogs = 0;
    nlsr_ctx_set_quiet(ctx, 1); /* quiet: warnings still come */
    nlsr_inplace_result res;
    ASSERT_EQ_I(nlsr_rollback(ctx, wpath("log_ip"), NULL, &res), 0);
    ASSERT_EQ_I(res.outcome, NLSR_INPLACE_ROLLED_BACK);
    ASSERT_EQ_I(count_logs(NLSR_LOG_WARN, "the rollback is complete, so it was removed"), 1);
    ASSERT_EQ_I(nlogs, 1);

    /* Quiet: no summary, no notice. */
#ifdef NLSR_TEST_HOOKS
    setenv("NLSR_IO_FAULT", "uring-setup", 1);
#endif
    nlsr_ctx *q = watched_ctx(0);
    nlsr_ctx_set_quiet(q, 1);
    ASSERT_EQ_I(nlsr_run(q, SFT, ALIGNED, NULL, FT, wpath("log_quiet"), &p), 0);
    unsetenv("NLSR_IO_FAULT");
    ASSERT_EQ_I(nlogs, 0);
    ASSERT_EQ_I(nrecs, 0);
    nlsr_ctx_free(q);
    ASSERT_STR_EQ(nlsr_log_level_name(NLSR_LOG_WARN), "warning");
    ASSERT_STR_EQ(nlsr_log_level_name(NLSR_LOG_INFO), "info");
    nlsr_ctx_free(ctx);
}

/* ---- progress ------------------------------------------------------------------------------ */

static void test_progress_jobs(void)
{
    nlsr_realign_params p = params();
    nlsr_ctx *ctx = watched_ctx(0);
    /* run, the single pass (the default budget holds the fixtures' modules). */
    ASSERT_EQ_I(nlsr_run(ctx, SFT, ALIGNED, NULL, FT, wpath("pr_run"), &p), 0);
    const char *run1[] = {"similarities", "output"};
    expect_phases("run", run1, 2, 1);
    /* The single pass's phase A reads the target modules of the three checkpoints: the plan's
     * total is the sum of their sizes, which the fixtures' inspect gives (21 modules). */
    ASSERT_EQ_U(recs[0].p.units_total, 21);
    nlsr_ctx_free(ctx);

#ifdef NLSR_TEST_HOOKS
    setenv("NLSR_RUN_PLAN", "patch-file", 1);
    ctx = watched_ctx(0);
    ASSERT_EQ_I(nlsr_run(ctx, SFT, ALIGNED, NULL, FT, wpath("pr_run_pf"), &p), 0);
    unsetenv("NLSR_RUN_PLAN");
    const char *run2[] = {"prepare", "similarities", "output"};
    expect_phases("run", run2, 3, 1);
    nlsr_ctx_free(ctx);
#endif

    ctx = watched_ctx(0);
    char *patches = wpath("pr.nlsrp");
    ASSERT_EQ_I(nlsr_prepare(ctx, SFT, ALIGNED, NULL, patches, &p), 0);
    const char *prep[] = {"prepare"};
    expect_phases("prepare", prep, 1, 1);

    nrecs = 0;
    ASSERT_EQ_I(nlsr_apply(ctx, patches, FT, wpath("pr_apply"), &p), 0);
    const char *apply[] = {"similarities", "output"};
    expect_phases("apply", apply, 2, 1);

    nrecs = 0;
    ASSERT_EQ_I(nlsr_amplify(ctx, SFT, ALIGNED, wpath("pr_amp"), &p), 0);
    const char *amp[] = {"amplify"};
    expect_phases("amplify", amp, 1, 1);

    nrecs = 0;
    nlsr_synth_params sp;
    nlsr_synth_params_init(&sp);
    ASSERT_EQ_I(nlsr_synth(ctx, &sp, wpath("pr_synth")), 0);
    const char *syn[] = {"write"};
    expect_phases("synth", syn, 1, 1);

    /* In place: the apply's phases (the journal's copies counted in "output"), then the
     * rollback's. */
    char *dir = wpath("pr_ip");
    ASSERT_EQ_I(fresh_copy(FT, dir), 0);
    nlsr_inplace_params ip;
    nlsr_inplace_params_init(&ip);
    nrecs = 0;
    ASSERT_EQ_I(nlsr_apply_inplace(ctx, patches, dir, &p, &ip, NULL), 0);
    expect_phases("apply", apply, 2, 1);
    nrecs = 0;
    nlsr_rollback_params rp;
    nlsr_rollback_params_init(&rp);
    ASSERT_EQ_I(nlsr_rollback(ctx, dir, &rp, NULL), 0);
    const char *rb[] = {"restore", "verify"};
    expect_phases("rollback", rb, 2, 1);
    nlsr_ctx_free(ctx);
}

static void test_progress_throttled(void)
{
    /* An hour between reports: only each phase's first and last go out. */
    nlsr_ctx *ctx = watched_ctx(3600);
    nlsr_realign_params p = params();
    ASSERT_EQ_I(nlsr_run(ctx, SFT, ALIGNED, NULL, FT, wpath("thr_run"), &p), 0);
    const char *run1[] = {"similarities", "output"};
    expect_phases("run", run1, 2, 0);
    ASSERT_EQ_I(nrecs, 4);
    /* No callback after nlsr_ctx_set_progress(NULL). */
    nlsr_ctx_set_progress(ctx, NULL, NULL, 0);
    nrecs = 0;
    ASSERT_EQ_I(nlsr_run(ctx, SFT, ALIGNED, NULL, FT, wpath("thr_run2"), &p), 0);
    ASSERT_EQ_I(nrecs, 0);
    nlsr_ctx_free(ctx);
}

/* A failed job leaves no finished report for the phase it stopped in. */
static void test_progress_failure(void)
{
    nlsr_ctx *ctx = watched_ctx(0);
    nlsr_realign_params p = params();
    ASSERT_TRUE(nlsr_run(ctx, SFT, ALIGNED, NULL, FX "/lora_finetuned", wpath("fail_run"), &p) <
                0);
    for (int i = 0; i < nrecs; i++) ASSERT_EQ_I(recs[i].p.finished, 0);
    nlsr_ctx_free(ctx);
}

int main(void)
{
    main_thread = pthread_self();
    snprintf(work, sizeof work, "/tmp/nlsr_test_log_XXXXXX");
    if (!mkdtemp(work)) return 1;
    RUN_TEST(test_silent_without_callbacks);
    RUN_TEST(test_log_levels);
    RUN_TEST(test_progress_jobs);
    RUN_TEST(test_progress_throttled);
    RUN_TEST(test_progress_failure);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", work);
    if (system(cmd) != 0) return 1;
    return test_finish();
}
