/* SPDX-License-Identifier: Apache-2.0 */
/* In-place realignment and rollback: the order of operations that keeps a checkpoint folder
 * recoverable at every moment is described in inplace.h; the journal's own order in
 * src/io/journal.h. */
#define _GNU_SOURCE
#include "../common/log.h"
#include "inplace.h"

#include <assert.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../common/ctx.h"
#include "../common/testhook.h"
#include "../common/json.h"
#include "../common/params.h"
#include "../io/checkpoint.h"
#include "../io/file.h"
#include "../io/hub.h"
#include "../io/journal.h"
#include "../io/lock.h"
#include "../io/outpath.h"
#include "audit.h"
#include "lora.h"
#include "realign_full.h"
#include "realign_run.h"
#include "report.h"
#include "../plan/targets.h"

#define STATE_MAX (16u << 20)
/* The single pass in place keeps this much of the budget aside for the journal's buffers (its
 * batch of new bytes, a record and its compressed form) or a --force rollback's: an eighth of
 * the budget, between 256 KiB and 320 MiB. Half of it is the batch: each batch costs two
 * fsyncs of the journal, whose latency on a busy disk (an ext4 commit) dominated phase B with
 * 24 MiB batches. */
#define SINGLE_RESERVE_MIN (256u << 10)
#define SINGLE_RESERVE_MAX (320u << 20)
/* LoRA: bytes compared (and staged) at a time between the adapter and its realigned copy. */
#define LORA_CHUNK (4u << 20)

const char *nlsr_inplace_outcome_name(nlsr_inplace_outcome o)
{
    switch (o) {
    case NLSR_INPLACE_REALIGNED: return "realigned";
    case NLSR_INPLACE_ALREADY: return "already";
    case NLSR_INPLACE_WOULD_REALIGN: return "would-realign";
    case NLSR_INPLACE_WOULD_SKIP: return "would-skip";
    case NLSR_INPLACE_ROLLED_BACK: return "rolled-back";
    case NLSR_INPLACE_NOTHING: return "nothing";
    case NLSR_INPLACE_DISCARDED: return "discarded";
    }
    return "?";
}

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void put64le(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void fp_str(char *out, size_t cap, uint64_t v)
{
    snprintf(out, cap, "xxh64:%016" PRIx64, v);
}

uint64_t nlsr_patch_fingerprint(const nlsr_pf_reader *pf)
{
    nlsr_xxh64_state s;
    nlsr_xxh64_init(&s, 0);
    nlsr_xxh64_update(&s, pf->kind, strlen(pf->kind) + 1);
    char *par = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(pf->header, "params"));
    nlsr_xxh64_update(&s, par ? par : "?", par ? strlen(par) + 1 : 2);
    cJSON_free(par);
    for (size_t i = 0; i < pf->nmodules; i++) {
        const nlsr_pf_module *m = &pf->modules[i];
        nlsr_xxh64_update(&s, m->name, strlen(m->name) + 1);
        for (size_t k = 0; k < m->ntensors; k++) {
            const nlsr_pf_tensor *t = &m->t[k];
            nlsr_xxh64_update(&s, t->name, strlen(t->name) + 1);
            nlsr_xxh64_update(&s, t->role, strlen(t->role) + 1);
            /* The directory is read in chunks from the file's block table; a read that fails
             * (the file changed since it was opened) makes a fingerprint no state matches. */
            for (size_t b = 0; b < t->nblocks; b++) {
                nlsr_pf_block blk, *bl = &blk;
                if (nlsr_pf_block_get(pf, t, b, &blk) < 0) {
                    nlsr_xxh64_update(&s, "unreadable", 11);
                    break;
                }
                unsigned char le[40];
                put64le(le, bl->first);
                put64le(le + 8, bl->count);
                put64le(le + 16, bl->mask_count);
                put64le(le + 24, bl->usize);
                put64le(le + 32, bl->xxh);
                nlsr_xxh64_update(&s, le, sizeof le);
            }
        }
    }
    return nlsr_xxh64_digest(&s);
}

uint64_t nlsr_inplace_key(uint64_t patch_fp, const nlsr_select_params *sp)
{
    char buf[256];
    int n = snprintf(buf, sizeof buf, "nlsr-inplace-v1\n%016" PRIx64 "\n%d %d %.17g %.17g %.17g %" PRIu64,
                     patch_fp, (int)sp->mode, (int)sp->semantics, sp->prune_rate, sp->epsilon,
                     sp->tau, sp->seed);
    return nlsr_xxh64(buf, (size_t)n, 0);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

uint64_t nlsr_inplace_key_full(const nlsr_inplace_ident *id, const nlsr_select_params *sp)
{
    nlsr_xxh64_state s;
    nlsr_xxh64_init(&s, 0);
    char buf[512];
    int n = snprintf(buf, sizeof buf,
                     "nlsr-inplace-v2\nfull\nbase %016" PRIx64 "\n%s %016" PRIx64
                     "\nbeta %.17g\nsparsity %.17g\ntargets",
                     id->base_fp, id->is_ref ? "reference" : "aligned", id->src_fp, id->beta,
                     id->sparsity);
    nlsr_xxh64_update(&s, buf, (size_t)n);
    /* Targets as a set: their order on the command line changes nothing. */
    const char *const *names = id->targets ? id->targets : nlsr_target_names;
    size_t nn = id->targets ? id->ntargets : NLSR_NTARGET_NAMES;
    const char **sorted = malloc((nn ? nn : 1) * sizeof *sorted);
    for (size_t i = 0; sorted && i < nn; i++) sorted[i] = names[i];
    if (sorted) qsort(sorted, nn, sizeof *sorted, cmp_str);
    for (size_t i = 0; i < nn; i++) {
        const char *t = sorted ? sorted[i] : names[i];
        nlsr_xxh64_update(&s, " ", 1);
        nlsr_xxh64_update(&s, t, strlen(t));
    }
    free(sorted);
    /* Other scorers depend on more than base and aligned (an activations file): their patches'
     * content is part of the identity. */
    if (id->scorer_magnitude)
        n = snprintf(buf, sizeof buf, "\nscorer magnitude\n");
    else
        n = snprintf(buf, sizeof buf, "\nscorer other, patches %016" PRIx64 "\n", id->patch_fp);
    nlsr_xxh64_update(&s, buf, (size_t)n);
    n = snprintf(buf, sizeof buf, "select %d %d %.17g %.17g %.17g %" PRIu64, (int)sp->mode,
                 (int)sp->semantics, sp->prune_rate, sp->epsilon, sp->tau, sp->seed);
    nlsr_xxh64_update(&s, buf, (size_t)n);
    return nlsr_xxh64_digest(&s);
}

static int parse_fp(const cJSON *src, uint64_t *out)
{
    const char *f = cJSON_IsObject(src) ? jstr(src, "fingerprint") : NULL;
    if (!f || strncmp(f, "xxh64:", 6) != 0 || strlen(f) != 22) return -1;
    char *end;
    unsigned long long v = strtoull(f + 6, &end, 16);
    if (*end) return -1;
    *out = (uint64_t)v;
    return 0;
}

/* The identity of a full patch file's realignment from its header: the content fingerprints
 * of the base and source target bytes prepare wrote, and the parameters (`used`: beta,
 * sparsity, targets from the header). -1 when the header lacks a fingerprint. */
static int ident_from_header(const nlsr_pf_reader *pf, const nlsr_realign_params *used,
                             uint64_t patch_fp, nlsr_inplace_ident *id)
{
    const cJSON *src = cJSON_GetObjectItemCaseSensitive(pf->header, "sources");
    const cJSON *al = cJSON_GetObjectItemCaseSensitive(src, "aligned");
    const cJSON *rf = cJSON_GetObjectItemCaseSensitive(src, "reference");
    memset(id, 0, sizeof *id);
    id->is_ref = !al && rf;
    if (parse_fp(cJSON_GetObjectItemCaseSensitive(src, "base"), &id->base_fp) < 0 ||
        parse_fp(al ? al : rf, &id->src_fp) < 0)
        return -1;
    const cJSON *par = cJSON_GetObjectItemCaseSensitive(pf->header, "params");
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(par, "scorer");
    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(sc, "name");
    id->scorer_magnitude = !sc || (cJSON_IsString(nm) && strcmp(nm->valuestring, "magnitude") == 0);
    id->beta = used->beta;
    id->sparsity = used->sparsity;
    id->targets = used->targets;
    id->ntargets = used->ntargets;
    id->patch_fp = patch_fp;
    return 0;
}

/* Adds to the first error's message: what happened to the checkpoint after it. */
static void append_msg(nlsr_ctx *ctx, const char *fmt, ...) NLSR_PRINTF(2, 3);
static void append_msg(nlsr_ctx *ctx, const char *fmt, ...)
{
    size_t L = strlen(ctx->err.msg);
    if (L + 1 >= sizeof ctx->err.msg) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->err.msg + L, sizeof ctx->err.msg - L, fmt, ap);
    va_end(ap);
}

static int check_dir(nlsr_ctx *ctx, const char *dir)
{
    NLSR_FAIL_IF(nlsr_is_dir(dir) != 1, &ctx->err, NLSR_E_USAGE,
                 "%s: in place works on a checkpoint folder, and this is not one", dir);
    return 0;
}

/* The temporary folder an in-place job keeps inside the checkpoint folder (its patch file, a
 * LoRA job's adapter and report): <dir>/.nlsr-inplace.nlsr-tmp-XXXXXX, marked as nlsr's. */
#define INPLACE_TMP ".nlsr-inplace"

/* Leftovers of killed runs: their temporary folders and the state's temporary file. Called with
 * the lock held; only what a marker proves to be a dead nlsr run's is removed (outpath.h), so
 * a user's file that happens to have such a name stays. */
static void clean_temp(nlsr_ctx *ctx, const char *dir)
{
    nlsr_tmp_sweep(ctx, dir, INPLACE_TMP NLSR_TMP_INFIX);
    nlsr_tmp_sweep(ctx, dir, NLSR_STATE_NAME NLSR_TMP_INFIX);
}

static int inplace_tmp_dir(nlsr_ctx *ctx, const char *dir, char **tdir)
{
    char *dest = nlsr_path_join(dir, INPLACE_TMP);
    NLSR_FAIL_IF(!dest, &ctx->err, -ENOMEM, "out of memory");
    int rc = nlsr_tmp_dir(ctx, dest, tdir);
    free(dest);
    return rc;
}

/* ---- the state file --------------------------------------------------------------------- */

static int state_load(nlsr_ctx *ctx, const char *dir, cJSON **out)
{
    nlsr_err *e = &ctx->err;
    *out = NULL;
    char *path = nlsr_path_join(dir, NLSR_STATE_NAME);
    NLSR_FAIL_IF(!path, e, -ENOMEM, "out of memory");
    int rc = 0;
    char *txt = NULL;
    size_t len = 0;
    if (!nlsr_exists(path)) goto done;
    rc = nlsr_read_small_file(path, STATE_MAX, &txt, &len, e);
    if (rc < 0) goto done;
    cJSON *st = cJSON_ParseWithLength(txt, len);
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(st, "version");
    const char *fmt = jstr(st, "format");
    if (!cJSON_IsObject(st) || !fmt || strcmp(fmt, "nlsr-state") != 0 || !jstr(st, "key") ||
        !cJSON_IsNumber(ver) || ver->valuedouble != NLSR_STATE_VERSION) {
        cJSON_Delete(st);
        rc = nlsr_fail(e, NLSR_E_FORMAT,
                       "%s: is not a state file of this nlsr (damaged, or another version); "
                       "remove it to realign the folder anyway",
                       path);
        goto done;
    }
    *out = st;
done:
    free(txt);
    free(path);
    return rc;
}

static int state_write(nlsr_ctx *ctx, const char *dir, const cJSON *st)
{
    char *txt = cJSON_Print(st);
    NLSR_FAIL_IF(!txt, &ctx->err, -ENOMEM, "out of memory printing the state");
    int rc = nlsr_durable_write_file(ctx, dir, NLSR_STATE_NAME, txt, strlen(txt));
    cJSON_free(txt);
    return rc;
}

static void mtime_str(const struct stat *st, char *buf, size_t cap)
{
    snprintf(buf, cap, "%lld.%09ld", (long long)st->st_mtim.tv_sec, (long)st->st_mtim.tv_nsec);
}

/* The listed files' current size and modification time into a state's "files". */
static void refresh_files(const char *dir, cJSON *st)
{
    cJSON *files = cJSON_GetObjectItemCaseSensitive(st, "files");
    for (cJSON *f = cJSON_IsArray(files) ? files->child : NULL; f; f = f->next) {
        const char *name = jstr(f, "name");
        char *p = name && !strchr(name, '/') ? nlsr_path_join(dir, name) : NULL;
        struct stat s;
        char m[64];
        if (p && stat(p, &s) == 0) {
            mtime_str(&s, m, sizeof m);
            cJSON_ReplaceItemInObjectCaseSensitive(f, "size", cJSON_CreateNumber((double)s.st_size));
            cJSON_ReplaceItemInObjectCaseSensitive(f, "mtime", cJSON_CreateString(m));
        }
        free(p);
    }
}

static int names_journal(const cJSON *st, uint64_t id)
{
    char hex[20];
    snprintf(hex, sizeof hex, "%016" PRIx64, id);
    const char *j = jstr(st, "journal");
    return j && strcmp(j, hex) == 0;
}

/* After the bytes of journal `id` are restored: the state goes back to what it was before
 * that realignment, if it still records it (a rollback repeated after a crash finds it already
 * reverted). */
static int state_revert(nlsr_ctx *ctx, const char *dir, uint64_t id)
{
    cJSON *st = NULL;
    int rc = state_load(ctx, dir, &st);
    if (rc == NLSR_E_FORMAT) {
        /* The journal has put the original bytes back already; a damaged record of the
         * realignment it undid must not leave the rollback half done. It records nothing
         * that is still true, so it goes, and the user is told. */
        nlsr_log(ctx, NLSR_LOG_WARN, "%s; the rollback is complete, so it was removed",
                 ctx->err.msg);
        nlsr_err_clear(&ctx->err);
        return nlsr_durable_unlink(ctx, dir, NLSR_STATE_NAME);
    }
    if (rc < 0 || !st || !names_journal(st, id)) {
        cJSON_Delete(st);
        return rc;
    }
    cJSON *prev = cJSON_GetObjectItemCaseSensitive(st, "previous");
    if (cJSON_IsObject(prev)) {
        /* The one below was stacked on without a journal: it has none to undo it. Its files
         * hold again the bytes it recorded (the rollback verified them), with new times. */
        cJSON_ReplaceItemInObjectCaseSensitive(prev, "journal", cJSON_CreateNull());
        refresh_files(dir, prev);
        rc = state_write(ctx, dir, prev);
    } else {
        rc = nlsr_durable_unlink(ctx, dir, NLSR_STATE_NAME);
    }
    cJSON_Delete(st);
    return rc;
}

/* 1 if every file the state lists still has the recorded size and modification time. */
static int files_match(const char *dir, const cJSON *st, char *why, size_t cap)
{
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(st, "files");
    if (!cJSON_IsArray(files)) {
        snprintf(why, cap, "the state lists no files");
        return 0;
    }
    for (const cJSON *f = files->child; f; f = f->next) {
        const char *name = jstr(f, "name"), *mt = jstr(f, "mtime");
        const cJSON *sz = cJSON_GetObjectItemCaseSensitive(f, "size");
        if (!name || !mt || !cJSON_IsNumber(sz) || strchr(name, '/')) {
            snprintf(why, cap, "the state's file list is malformed");
            return 0;
        }
        char *p = nlsr_path_join(dir, name);
        struct stat s;
        int ok = p && stat(p, &s) == 0;
        free(p);
        char m[64] = "";
        if (ok) mtime_str(&s, m, sizeof m);
        if (!ok || (double)s.st_size != sz->valuedouble || strcmp(m, mt) != 0) {
            snprintf(why, cap, "%.200s %s since it was realigned", name,
                     !ok ? "disappeared" : (double)s.st_size != sz->valuedouble
                                               ? "changed size"
                                               : "was modified");
            return 0;
        }
    }
    return 1;
}

/* ---- one in-place job ------------------------------------------------------------------- */

typedef struct ip_job {
    nlsr_ctx *ctx;
    const char *dir, *job;
    const nlsr_realign_params *p;
    const nlsr_inplace_params *ip;
    nlsr_inplace_result *res;
    int lock_fd;
    cJSON *state;           /* the state file as found (or repaired), NULL if none */
    nlsr_journal_info ji;   /* the journal as found */
    uint64_t patch_fp;
    int has_patch;          /* patch_fp is known (apply, and run through a patch file) */
    char key_v1[32];        /* with a patch: the key the old scheme gave (migration) */
    cJSON *patch_params;    /* copy of the patch header's params (single pass: the same
                               fields, from the parameters) */
    int has_sources;
    nlsr_inplace_ident ident;
} ip_job;

static void job_init(ip_job *J, nlsr_ctx *ctx, const char *dir, const char *job,
                     const nlsr_realign_params *p, const nlsr_inplace_params *ip,
                     nlsr_inplace_result *res)
{
    memset(J, 0, sizeof *J);
    memset(res, 0, sizeof *res);
    J->ctx = ctx;
    J->dir = dir;
    J->job = job;
    J->p = p;
    J->ip = ip;
    J->res = res;
    J->lock_fd = -1;
    nlsr_fault_reset();
}

static void job_free(ip_job *J)
{
    nlsr_lock_release(J->lock_fd);
    J->lock_fd = -1;
    cJSON_Delete(J->state);
    cJSON_Delete(J->patch_params);
    nlsr_journal_info_free(&J->ji);
    if (nlsr_fault_armed())
        nlsr_log(J->ctx, NLSR_LOG_DEBUG, "test: %" PRIu64 " write points", nlsr_fault_count());
}

/* Restores from the journal, reverts the state and removes the journal; shared by rollback,
 * --force and the undo after a failure. Every step may be repeated after a crash. */
static int rollback_locked(nlsr_ctx *ctx, const char *dir, int force, nlsr_journal_info *info)
{
    NLSR_FORWARD(nlsr_journal_rollback(ctx, dir, force, info));
    if (info->state == NLSR_JOURNAL_NONE) return 0;
    if (info->state != NLSR_JOURNAL_TORN) NLSR_FORWARD(state_revert(ctx, dir, info->id));
    return nlsr_durable_unlink(ctx, dir, NLSR_JOURNAL_NAME);
}

static int take_lock(ip_job *J)
{
    if (J->lock_fd >= 0) return 0; /* run holds it across its prepare */
    if (!J->ip->dry_run) {
        NLSR_FORWARD(nlsr_lock_acquire(J->ctx, J->dir, J->ip->wait, &J->lock_fd));
        clean_temp(J->ctx, J->dir);
        return 0;
    }
    long holder = 0;
    int held = nlsr_lock_probe(J->ctx, J->dir, &holder);
    NLSR_FORWARD(held);
    NLSR_FAIL_IF(held && !J->ip->wait, &J->ctx->err, NLSR_E_LOCKED,
                 "%s is locked by another nlsr run (pid %ld) working on this checkpoint; try "
                 "again when it is done, or pass --wait",
                 J->dir, holder);
    return 0;
}

/* The journal as found: only a complete one (an undo record) lets a job go on. A complete
 * journal whose state file is missing or names another journal had its state lost: the end
 * record holds it. */
static int gate(ip_job *J)
{
    nlsr_ctx *ctx = J->ctx;
    /* Something other than a file where the journal goes (a FIFO, a link) is no journal of
     * nlsr's: rollback would refuse it too, so saying "roll back" would leave a sweep stuck. */
    char *jp = nlsr_path_join(J->dir, NLSR_JOURNAL_NAME);
    NLSR_FAIL_IF(!jp, &ctx->err, -ENOMEM, "out of memory");
    struct stat jst;
    int odd = lstat(jp, &jst) == 0 && !S_ISREG(jst.st_mode);
    int rc = odd ? nlsr_fail(&ctx->err, NLSR_E_USAGE,
                             "%s is a %s, not an nlsr journal: refused (nlsr never reads or "
                             "follows it); remove it to realign the folder",
                             jp, S_ISLNK(jst.st_mode) ? "symbolic link"
                                 : S_ISFIFO(jst.st_mode) ? "FIFO"
                                 : S_ISDIR(jst.st_mode) ? "folder"
                                                         : "special file")
                 : 0;
    free(jp);
    if (rc < 0) return rc;
    rc = nlsr_journal_inspect(ctx, J->dir, &J->ji);
    if (rc < 0) {
        append_msg(ctx, "; run 'nlsr rollback %s' before realigning it again", J->dir);
        return NLSR_E_JOURNAL;
    }
    nlsr_journal_state s = J->ji.state;
    NLSR_FAIL_IF(s != NLSR_JOURNAL_NONE && s != NLSR_JOURNAL_COMPLETE, &ctx->err, NLSR_E_JOURNAL,
                 "%s: an interrupted %s left its journal (%s, %" PRIu64
                 " records): run 'nlsr rollback %s' to restore the checkpoint, then run again",
                 J->dir, s == NLSR_JOURNAL_ROLLING_BACK ? "rollback" : "in-place realignment",
                 nlsr_journal_state_name(s), J->ji.records, J->dir);
    NLSR_FORWARD(state_load(ctx, J->dir, &J->state));
    if (s == NLSR_JOURNAL_COMPLETE && (!J->state || !names_journal(J->state, J->ji.id))) {
        cJSON *st = cJSON_Parse(J->ji.end_json);
        NLSR_FAIL_IF(!cJSON_IsObject(st), &ctx->err, NLSR_E_JOURNAL,
                     "%s: the journal's end record holds no state", J->dir);
        cJSON_Delete(J->state);
        J->state = st;
        if (!J->ip->dry_run) NLSR_FORWARD(state_write(ctx, J->dir, st));
    }
    return 0;
}

static void result_from_state(ip_job *J, const cJSON *st)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(st, "modules");
    const cJSON *pa = cJSON_GetObjectItemCaseSensitive(st, "patched");
    const char *r = jstr(st, "result");
    if (cJSON_IsNumber(m)) J->res->modules = (size_t)m->valuedouble;
    if (cJSON_IsNumber(pa)) J->res->patched = (size_t)pa->valuedouble;
    if (r) snprintf(J->res->result, sizeof J->res->result, "%s", r);
}

/* Compares the recorded realignment with this one. 1: the same one is recorded and the files
 * are as it left them (nothing to do); 0: go on (after --force's rollback, or stacked). */
static int decide(ip_job *J)
{
    nlsr_ctx *ctx = J->ctx;
    nlsr_err *e = &ctx->err;
    int force = J->p->force, dry = J->ip->dry_run;
    if (!J->state) return 0;
    const char *rec = jstr(J->state, "key");
    /* A full-weight state of key scheme 1 (nlsr before the single pass in place) names its
     * patch file's fingerprint. With a patch file that key can be computed again: the same
     * realignment is recognised and its record moves to scheme 2. Without one (run's single
     * pass) it cannot be compared: refused unless --force, saying how to proceed. */
    const cJSON *ks = cJSON_GetObjectItemCaseSensitive(J->state, "key_scheme");
    const char *kind = jstr(J->state, "kind");
    int old = !cJSON_IsNumber(ks) && kind && strcmp(kind, "full") == 0;
    int migrate = old && J->has_patch && strcmp(rec, J->key_v1) == 0;
    NLSR_FAIL_IF(old && !J->has_patch && !force, e, NLSR_E_EXISTS,
                 "%s: was realigned in place by an older nlsr, whose record (%s, key %s) names "
                 "a patch file; run --in-place makes none now and cannot tell whether it is this "
                 "realignment: apply the patches it came from with 'nlsr apply --in-place' "
                 "(which recognises it and updates the record), or run 'nlsr rollback %s' and "
                 "then this again, or pass --force to roll it back (or stack on it) and realign",
                 J->dir, NLSR_STATE_NAME, rec, J->dir);
    if (migrate || strcmp(rec, J->res->key) == 0) {
        char why[512];
        if (files_match(J->dir, J->state, why, sizeof why)) {
            result_from_state(J, J->state);
            if (migrate && !dry) {
                cJSON_ReplaceItemInObjectCaseSensitive(J->state, "key",
                                                       cJSON_CreateString(J->res->key));
                cJSON_AddNumberToObject(J->state, "key_scheme", 2);
                NLSR_FORWARD(state_write(ctx, J->dir, J->state));
            }
            return 1;
        }
        NLSR_FAIL_IF(!force, e, NLSR_E_MISMATCH,
                     "%s: %s; the record in %s no longer describes the files: pass --force to "
                     "realign them as they are now",
                     J->dir, why, NLSR_STATE_NAME);
        /* The record and its journal describe bytes that are gone: forget both. */
        if (!dry) {
            if (J->ji.state == NLSR_JOURNAL_COMPLETE)
                NLSR_FORWARD(nlsr_durable_unlink(ctx, J->dir, NLSR_JOURNAL_NAME));
            NLSR_FORWARD(nlsr_durable_unlink(ctx, J->dir, NLSR_STATE_NAME));
        }
        cJSON_Delete(J->state);
        J->state = NULL;
        return 0;
    }
    int have_journal = J->ji.state == NLSR_JOURNAL_COMPLETE;
    NLSR_FAIL_IF(!force, e, NLSR_E_EXISTS,
                 "%s was realigned in place with other patches or parameters (recorded %s, this "
                 "one %s): pass --force to %s",
                 J->dir, rec, J->res->key,
                 have_journal ? "roll that one back first and apply this one"
                              : "apply this one on top of it (its journal was discarded)");
    if (!have_journal) {
        J->res->stacked = 1;
        return 0;
    }
    J->res->rolled_back_first = 1;
    if (dry) return 0;
    nlsr_journal_info info;
    int rc = rollback_locked(ctx, J->dir, 0, &info);
    nlsr_journal_info_free(&info);
    if (rc < 0) {
        append_msg(ctx, " (while --force rolled back the previous realignment)");
        return rc;
    }
    cJSON_Delete(J->state);
    J->state = NULL;
    nlsr_journal_info_free(&J->ji);
    memset(&J->ji, 0, sizeof J->ji);
    return state_load(ctx, J->dir, &J->state);
}

static cJSON *select_json(const nlsr_select_params *sp)
{
    static const char *const modes[] = {"adaptive", "threshold", "all", "none"};
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "mode", (unsigned)sp->mode < 4 ? modes[sp->mode] : "?");
    cJSON_AddStringToObject(o, "semantics",
                            sp->semantics == NLSR_SEMANTICS_PAPER ? "paper" : "authors");
    cJSON_AddItemToObject(o, "prune_rate", nlsr_json_number(sp->prune_rate));
    cJSON_AddItemToObject(o, "epsilon", nlsr_json_number(sp->epsilon));
    cJSON_AddItemToObject(o, "tau", nlsr_json_number(sp->tau));
    char seed[32];
    snprintf(seed, sizeof seed, "%" PRIu64, sp->seed);
    cJSON_AddStringToObject(o, "seed", seed); /* a string: u64 seeds pass 2^53 */
    return o;
}

/* The state to record once the data is durable: the key, the result, the files as they are
 * now (size, mtime) and, when stacked, the state below. */
static cJSON *state_json(ip_job *J, const nlsr_ckpt *T, const char *kind, nlsr_journal *jn)
{
    char buf[64];
    cJSON *st = cJSON_CreateObject();
    if (!st) return NULL;
    cJSON_AddStringToObject(st, "format", "nlsr-state");
    cJSON_AddNumberToObject(st, "version", NLSR_STATE_VERSION);
    cJSON_AddStringToObject(st, "tool", "nlsr " NLSR_VERSION);
    cJSON_AddStringToObject(st, "job", J->job);
    cJSON_AddStringToObject(st, "kind", kind);
    cJSON_AddStringToObject(st, "key", J->res->key);
    cJSON_AddNumberToObject(st, "key_scheme", 2);
    if (J->has_sources) {
        cJSON *so = cJSON_AddObjectToObject(st, "sources");
        fp_str(buf, sizeof buf, J->ident.base_fp);
        cJSON_AddStringToObject(so, "base", buf);
        fp_str(buf, sizeof buf, J->ident.src_fp);
        cJSON_AddStringToObject(so, J->ident.is_ref ? "reference" : "aligned", buf);
    }
    fp_str(buf, sizeof buf, J->patch_fp);
    if (J->has_patch) cJSON_AddStringToObject(st, "patch_fingerprint", buf);
    else cJSON_AddNullToObject(st, "patch_fingerprint");
    cJSON_AddItemToObject(st, "patch_params",
                          J->patch_params ? cJSON_Duplicate(J->patch_params, 1) : cJSON_CreateNull());
    cJSON_AddItemToObject(st, "select", select_json(&J->p->select));
    snprintf(buf, sizeof buf, "%016" PRIx64, nlsr_journal_id(jn));
    cJSON_AddStringToObject(st, "journal", buf);
    cJSON_AddStringToObject(st, "result", J->res->result);
    cJSON_AddNumberToObject(st, "modules", (double)J->res->modules);
    cJSON_AddNumberToObject(st, "patched", (double)J->res->patched);
    cJSON_AddNumberToObject(st, "bytes_written", (double)J->res->bytes_written);
    cJSON_AddNumberToObject(st, "patched_bytes", (double)J->res->patched_bytes);
    cJSON_AddNumberToObject(st, "ranges", (double)J->res->ranges);
    cJSON *files = cJSON_AddArrayToObject(st, "files");
    for (size_t k = 0; files && k < T->nshards; k++) {
        struct stat s;
        cJSON *f = cJSON_CreateObject();
        if (!f || stat(T->shards[k]->path, &s) != 0) {
            cJSON_Delete(f);
            cJSON_Delete(st);
            return NULL;
        }
        cJSON_AddStringToObject(f, "name", T->shard_names[k]);
        cJSON_AddNumberToObject(f, "size", (double)s.st_size);
        mtime_str(&s, buf, sizeof buf);
        cJSON_AddStringToObject(f, "mtime", buf);
        cJSON_AddItemToArray(files, f);
    }
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    cJSON_AddStringToObject(st, "time", buf);
    /* Whatever state is left after decide() lies under this realignment: a stacked one, or
     * what --force's rollback went back to. */
    cJSON_AddItemToObject(st, "previous",
                          J->state ? cJSON_Duplicate(J->state, 1) : cJSON_CreateNull());
    return st;
}

/* Opens every shard for writing through a new journal (file id = shard index): links,
 * read-only files and the like are refused here, before anything is read or written. */
static int open_journal_files(ip_job *J, const nlsr_ckpt *T, nlsr_journal **jn)
{
    nlsr_journal_opts o = {0, J->ip->dry_run ? 1 : 0, J->ip->follow_links, 1};
    NLSR_FORWARD(nlsr_journal_begin(J->ctx, J->dir, &o, jn));
    for (size_t k = 0; k < T->nshards; k++) {
        uint32_t id;
        NLSR_FORWARD(nlsr_journal_add_file(*jn, T->shard_names[k], &id));
        assert(id == k);
    }
    return 0;
}

/* LoRA: the adapter job writes its output into a temporary folder inside dir (adapters are
 * small); every chunk of a tensor that differs from the adapter's own is then staged at the
 * adapter's offsets. Tensors are matched by name, so header formatting does not matter. */
static int lora_stage(ip_job *J, const nlsr_ckpt *T, const nlsr_ckpt *O, nlsr_journal *jn)
{
    nlsr_ctx *ctx = J->ctx;
    nlsr_err *e = &ctx->err;
    NLSR_FAIL_IF(T->nshards != 1, e, NLSR_E_FORMAT, "%s: a PEFT adapter has one file, not %zu",
                 T->path, T->nshards);
    unsigned char *a = NULL, *b = NULL;
    int rc = nlsr_budget_alloc(&ctx->budget, LORA_CHUNK, "LoRA compare", (void **)&a, e);
    if (rc == 0) rc = nlsr_budget_alloc(&ctx->budget, LORA_CHUNK, "LoRA compare", (void **)&b, e);
    for (size_t i = 0; i < T->n && rc == 0; i++) {
        const st_tensor *t = T->t[i].t;
        size_t oi;
        if (nlsr_ckpt_find(O, t->name, &oi) != 0 || O->t[oi].t->dtype != t->dtype ||
            O->t[oi].t->end - O->t[oi].t->begin != t->end - t->begin) {
            rc = nlsr_fail(e, NLSR_E_MISMATCH, "%s: the realigned adapter lacks '%.200s' as it is",
                           T->path, t->name);
            break;
        }
        const st_file *fa = T->shards[0], *fb = O->shards[O->t[oi].shard];
        size_t w = nlsr_dtype_size(t->dtype);
        size_t step = LORA_CHUNK / w * w;
        uint64_t n = t->end - t->begin, ao = fa->data_start + t->begin,
                 bo = fb->data_start + O->t[oi].t->begin;
        for (uint64_t k = 0; k < n && rc == 0; k += step) {
            size_t len = (size_t)(n - k < step ? n - k : step);
            rc = nlsr_pread_all(fa->fd, a, len, ao + k, fa->path, e);
            if (rc == 0) rc = nlsr_pread_all(fb->fd, b, len, bo + k, fb->path, e);
            if (rc == 0 && memcmp(a, b, len) != 0)
                rc = nlsr_journal_stage(jn, 0, ao + k, a, b, len, w);
        }
        if (rc == 0) rc = nlsr_journal_flush(jn);
    }
    nlsr_budget_free(&ctx->budget, a, LORA_CHUNK);
    nlsr_budget_free(&ctx->budget, b, LORA_CHUNK);
    return rc;
}

static int lora_inplace(ip_job *J, const char *patches, const nlsr_ckpt *T, nlsr_journal *jn)
{
    nlsr_ctx *ctx = J->ctx;
    nlsr_err *e = &ctx->err;
    char *tdir = NULL, *tmp = NULL, *rtmp = NULL;
    int rc = inplace_tmp_dir(ctx, J->dir, &tdir);
    if (rc < 0) return rc;
    tmp = nlsr_path_join(tdir, "adapter");
    rtmp = nlsr_path_join(tdir, "report.json");
    nlsr_ckpt *O = NULL;
    char *txt = NULL;
    if (!tmp || !rtmp) rc = nlsr_fail(e, -ENOMEM, "out of memory");
    nlsr_realign_params q = *J->p;
    q.force = 0;
    q.mask_path = NULL;
    q.mask_out_path = NULL;
    if (!q.report_path) q.report_path = rtmp;
    if (rc == 0) rc = nlsr_lora_apply(ctx, patches, T, tmp, &q);
    if (rc == 0) rc = nlsr_ckpt_open(ctx, tmp, &O);
    if (rc == 0) rc = lora_stage(J, T, O, jn);
    /* The module counts come from the adapter job's report. */
    size_t len = 0;
    if (rc == 0) rc = nlsr_read_small_file(q.report_path, 1u << 30, &txt, &len, e);
    if (rc == 0) {
        cJSON *r = cJSON_ParseWithLength(txt, len);
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(r, "summary");
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(s, "modules");
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(s, "patched");
        if (cJSON_IsNumber(m) && cJSON_IsNumber(p)) {
            J->res->modules = (size_t)m->valuedouble;
            J->res->patched = (size_t)p->valuedouble;
        }
        cJSON_Delete(r);
    }
    nlsr_ckpt_free(O);
    nlsr_tmp_remove(tdir);
    free(tdir);
    free(txt);
    free(tmp);
    free(rtmp);
    return rc;
}

/* After a failure once the journal exists: put the original bytes back, so that a full disk
 * or a bad tensor leaves the checkpoint as it was. The first error stays the message. */
static void undo_after_failure(ip_job *J)
{
    nlsr_ctx *ctx = J->ctx;
    nlsr_err saved = ctx->err;
    nlsr_err_clear(&ctx->err);
    nlsr_journal_info info;
    int rc = rollback_locked(ctx, J->dir, 1, &info);
    nlsr_journal_info_free(&info);
    char why[sizeof ctx->err.msg];
    memcpy(why, ctx->err.msg, sizeof why);
    ctx->err = saved;
    if (rc == 0)
        append_msg(ctx, "; the checkpoint was rolled back from the journal and is unchanged");
    else
        append_msg(ctx, "; rolling back failed too (%.300s): run 'nlsr rollback %s'", why, J->dir);
}

/* The patched modules' tensor bytes in T: what the summary compares the bytes written with. */
static uint64_t patched_tensor_bytes(const nlsr_report *rep, const nlsr_ckpt *T)
{
    uint64_t b = 0;
    for (size_t i = 0; i < rep->n; i++) {
        size_t ti;
        if (rep->m[i].patched && nlsr_ckpt_find(T, rep->m[i].name, &ti) == 0)
            b += T->t[ti].t->end - T->t[ti].t->begin;
    }
    return b;
}

static int finish_journal(ip_job *J, const nlsr_ckpt *T, const char *kind, nlsr_journal *jn,
                          nlsr_report *rep, const nlsr_realign_params *used, int rc);

/* The locked part of apply: the journal, the transplant, the state, completion. */
static int realign_locked(ip_job *J, nlsr_pf_reader *pf, const char *patches,
                          const nlsr_ckpt *T, const nlsr_realign_params *used, nlsr_report *rep)
{
    nlsr_ctx *ctx = J->ctx;
    nlsr_journal *jn = NULL;
    int lora = nlsr_ckpt_get_kind(T) == NLSR_CKPT_PEFT;
    int rc = open_journal_files(J, T, &jn);
    if (rc == 0 && !lora) {
        rc = nlsr_full_apply_journal(ctx, pf, T, jn, used, NULL, rep);
        J->res->modules = rep->n;
        for (size_t i = 0; i < rep->n; i++) J->res->patched += rep->m[i].patched != 0;
        J->res->patched_bytes = patched_tensor_bytes(rep, T);
    }
    if (rc == 0 && lora) rc = lora_inplace(J, patches, T, jn);
    return finish_journal(J, T, lora ? "lora" : "full", jn, lora ? NULL : rep, used, rc);
}

/* After the transplant (rc its result): data synced, the report staged (rep NULL: none), the
 * state written, the journal marked complete; or, after a failure once the journal exists, the
 * rollback. Closes jn. */
static int finish_journal(ip_job *J, const nlsr_ckpt *T, const char *kind, nlsr_journal *jn,
                          nlsr_report *rep, const nlsr_realign_params *used, int rc)
{
    nlsr_ctx *ctx = J->ctx;
    cJSON *st = NULL;
    /* A run that patches nothing still records itself; its journal then holds only the end. */
    if (rc == 0) rc = nlsr_journal_sync(jn);
    /* A safe point before the realignment is recorded: a signal during the last batch (the
     * single pass may have only one) still rolls the job back. */
    if (rc == 0) rc = nlsr_ctx_check_cancel(ctx);
    if (rc == 0) {
        nlsr_journal_counts(jn, &J->res->bytes_written, NULL, &J->res->ranges);
        fp_str(J->res->result, sizeof J->res->result, nlsr_journal_result(jn));
        if (!(st = state_json(J, T, kind, jn)))
            rc = nlsr_fail(&ctx->err, -ENOMEM, "%s: cannot build the state record", J->dir);
    }
    /* The report is written before the realignment is recorded as done: one that cannot be
     * written fails the job, which is then rolled back (README "Output safety"). */
    if (rc == 0 && rep) rc = nlsr_report_stage(rep, ctx, used);
    char *txt = NULL;
    if (rc == 0 && !(txt = cJSON_Print(st))) rc = nlsr_fail(&ctx->err, -ENOMEM, "out of memory");
    if (rc == 0) rc = nlsr_durable_write_file(ctx, J->dir, NLSR_STATE_NAME, txt, strlen(txt));
    if (rc == 0) rc = nlsr_journal_complete(jn, txt);
    cJSON_free(txt);
    cJSON_Delete(st);
    int created = jn && nlsr_journal_created(jn);
    if (jn) nlsr_journal_counts(jn, NULL, &J->res->journal_bytes, NULL);
    nlsr_journal_close(jn);
    if (rc < 0 && created) undo_after_failure(J);
    if (rc == 0) J->res->outcome = NLSR_INPLACE_REALIGNED;
    return rc;
}

/* Target bytes of T: what a dry run says it may overwrite at most. */
static uint64_t target_bytes(const nlsr_ckpt *T, const nlsr_realign_params *p, size_t *n)
{
    uint64_t b = 0;
    *n = 0;
    for (size_t i = 0; i < T->n; i++) {
        const st_tensor *t = T->t[i].t;
        if (nlsr_ckpt_get_kind(T) == NLSR_CKPT_FULL && !nlsr_is_target(t, p->targets, p->ntargets))
            continue;
        b += t->end - t->begin;
        (*n)++;
    }
    return b;
}

/* Lock, gate, decide, then either a dry-run answer or the realignment. */
static int locked_job(ip_job *J, nlsr_pf_reader *pf, const char *patches, const nlsr_ckpt *T,
                      const nlsr_realign_params *used, nlsr_report *rep)
{
    NLSR_FORWARD(take_lock(J));
    NLSR_FORWARD(gate(J));
    int same = decide(J);
    NLSR_FORWARD(same);
    if (J->ip->dry_run) {
        nlsr_journal *jn = NULL;
        int rc = open_journal_files(J, T, &jn);
        nlsr_journal_close(jn);
        NLSR_FORWARD(rc);
        J->res->outcome = same ? NLSR_INPLACE_WOULD_SKIP : NLSR_INPLACE_WOULD_REALIGN;
        if (!same) J->res->bytes_written = target_bytes(T, used, &J->res->modules);
        return 0;
    }
    if (same) {
        J->res->outcome = NLSR_INPLACE_ALREADY;
        return 0;
    }
    return realign_locked(J, pf, patches, T, used, rep);
}

/* Shared stores are refused before the lock file is created (journal.c refuses the same files
 * again when it opens them for writing), so that a refused hub cache snapshot is not written
 * into at all. A hub cache repository folder is no checkpoint folder of its own: its snapshot
 * holds the files. */
static int refuse_shared_store(const ip_job *J, const nlsr_ckpt *T)
{
    nlsr_err *e = &J->ctx->err;
    NLSR_FAIL_IF(T->hub == NLSR_HUB_REPO, e, NLSR_E_USAGE,
                 "%s: is a Hugging Face cache repository folder; its snapshots' files are links "
                 "to blobs shared by revisions: copy the snapshot (cp -rL) and realign the copy",
                 J->dir);
    if (J->ip->follow_links) return 0;
    for (size_t k = 0; k < T->nshards; k++) {
        char *p = nlsr_path_join(T->dir, T->shard_names[k]);
        NLSR_FAIL_IF(!p, e, -ENOMEM, "%s: out of memory", J->dir);
        struct stat st;
        int ok = lstat(p, &st) == 0;
        int link = ok && S_ISLNK(st.st_mode), hard = ok && !link && st.st_nlink > 1;
        char target[512] = "";
        if (link) {
            ssize_t n = readlink(p, target, sizeof target - 1);
            target[n > 0 ? n : 0] = '\0';
        }
        int rc = 0;
        if (link)
            rc = nlsr_fail(e, NLSR_E_USAGE,
                           "%s: is a symbolic link (to %s): it may point into a shared store such "
                           "as the Hugging Face cache, where other snapshots use the same file; "
                           "copy the checkpoint, or pass --follow-links to patch the file it "
                           "points to",
                           p, target);
        else if (hard)
            rc = nlsr_fail(e, NLSR_E_USAGE,
                           "%s: has %lu hard links: other paths share its bytes; copy the "
                           "checkpoint, or pass --follow-links to patch the shared file",
                           p, (unsigned long)st.st_nlink);
        free(p);
        NLSR_FORWARD(rc);
    }
    return 0;
}

/* Weights beside the checkpoint's own would stay unpatched next to the realigned ones, for a
 * loader to pick (model.safetensors beside an index): refused in place (src/io/sidefiles.h). */
static int check_other_weights(nlsr_ctx *ctx, const nlsr_ckpt *T)
{
    nlsr_sidefiles sf;
    NLSR_FORWARD(nlsr_sidefiles_load(ctx, T, 0, 1, &sf));
    nlsr_sidefiles_free(&sf);
    return 0;
}

/* Opens the patches and the checkpoint and runs every header check; then the locked part.
 * `job` is "apply" or "run" (for the report and the state). */
static int apply_job(ip_job *J, const char *patches)
{
    nlsr_ctx *ctx = J->ctx;
    nlsr_err *e = &ctx->err;
    nlsr_pf_reader *pf = NULL;
    nlsr_ckpt *T = NULL;
    const char **names = NULL;
    nlsr_realign_params used = *J->p;
    nlsr_report rep;
    nlsr_report_init(&rep, ctx, J->job, "full");
    int rc = check_dir(ctx, J->dir);
    if (rc == 0) {
        /* The report must not land in or on the checkpoint or the patch file. */
        const char *in[2] = {J->dir, patches};
        rc = nlsr_outputs_check(ctx, NULL, NLSR_OUT_FILE, J->p, in, 2);
    }
    if (rc == 0) rc = nlsr_pf_open(ctx, patches, &pf);
    if (rc == 0) rc = nlsr_ckpt_open(ctx, J->dir, &T);
    if (rc == 0) rc = refuse_shared_store(J, T);
    if (rc == 0) rc = check_other_weights(ctx, T);
    if (rc < 0) goto done;
    int lora = strcmp(pf->kind, "lora") == 0;
    /* run's patch file is its own temporary one: its inputs were named by run. */
    if (strcmp(J->job, "apply") == 0) nlsr_audit_input_file(ctx, "patches", patches);
    nlsr_audit_input_ckpt(ctx, "finetuned", J->dir, T);
    nlsr_audit_output(ctx, "out", J->dir, 1);
    if (lora != (nlsr_ckpt_get_kind(T) == NLSR_CKPT_PEFT)) {
        rc = nlsr_fail(e, NLSR_E_MISMATCH, "patch file %s holds %s patches but %s is %s", patches,
                       lora ? "LoRA" : "full-weight", J->dir,
                       lora ? "a full checkpoint" : "a PEFT adapter");
        goto done;
    }
    J->patch_fp = nlsr_patch_fingerprint(pf);
    J->has_patch = 1;
    fp_str(J->key_v1, sizeof J->key_v1, nlsr_inplace_key(J->patch_fp, &J->p->select));
    /* LoRA, and full patch files without content fingerprints: the patch file's key. */
    snprintf(J->res->key, sizeof J->res->key, "%s", J->key_v1);
    J->patch_params = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(pf->header, "params"), 1);
    if (lora) {
        /* The adapter job reads the patch file itself; its scratch is on the budget. */
        nlsr_pf_close(pf);
        pf = NULL;
    } else {
        rc = nlsr_full_patch_params(ctx, pf, &used, &names);
        if (rc == 0) rc = nlsr_full_check_patch(ctx, pf, T, &used);
        if (rc < 0) goto done;
        if (ident_from_header(pf, &used, J->patch_fp, &J->ident) == 0) {
            J->has_sources = 1;
            fp_str(J->res->key, sizeof J->res->key, nlsr_inplace_key_full(&J->ident, &J->p->select));
        }
    }
    rc = locked_job(J, pf, patches, T, &used, &rep);
    if (rc == 0 && !lora && J->res->outcome == NLSR_INPLACE_REALIGNED)
        rc = nlsr_report_emit(&rep, ctx, &used);
done:
    nlsr_report_free(&rep);
    free(names);
    nlsr_pf_close(pf);
    nlsr_ckpt_free(T);
    return rc;
}

static int apply_inplace_job(nlsr_ctx *ctx, const char *patches, const char *dir,
                       const nlsr_realign_params *p, const nlsr_inplace_params *ip,
                       nlsr_inplace_result *res)
{
    nlsr_inplace_result local;
    nlsr_inplace_params ipd = NLSR_INPLACE_PARAMS_DEFAULT;
    NLSR_FAIL_IF(!patches || !dir, &ctx->err, NLSR_E_USAGE,
                 "apply in place needs a patch file and a checkpoint folder");
    ip_job J;
    job_init(&J, ctx, dir, "apply", p, ip ? ip : &ipd, res ? res : &local);
    int audit = nlsr_audit_begin(ctx, p);
    int rc = apply_job(&J, patches);
    nlsr_audit_end(ctx, audit);
    job_free(&J);
    return rc;
}

int nlsr_apply_inplace(nlsr_ctx *ctx, const char *patches, const char *dir,
                       const nlsr_realign_params *p, const nlsr_inplace_params *ip,
                       nlsr_inplace_result *res)
{
    int entered = nlsr_job_enter(ctx, "apply");
    int rc = apply_inplace_job(ctx, patches, dir, p, ip, res);
    nlsr_job_leave(ctx, entered);
    return rc;
}

/* The params object a patch header would hold (without its block size), for the state of a
 * run that wrote no patch file. */
static cJSON *params_json(const nlsr_realign_params *p)
{
    cJSON *o = cJSON_CreateObject(), *tg;
    if (!o) return NULL;
    cJSON_AddItemToObject(o, "beta", nlsr_json_number(p->beta));
    cJSON_AddItemToObject(o, "sparsity", nlsr_json_number(p->sparsity));
    if ((tg = cJSON_AddArrayToObject(o, "targets"))) {
        const char *const *names = p->targets ? p->targets : nlsr_target_names;
        size_t nn = p->targets ? p->ntargets : NLSR_NTARGET_NAMES;
        for (size_t i = 0; i < nn; i++) cJSON_AddItemToArray(tg, cJSON_CreateString(names[i]));
    }
    cJSON_AddItemToObject(o, "scorer", nlsr_scorer_params_json(&p->scorer));
    return o;
}

/* run --in-place in one streamed pass (realign_run.h): phase A reads each target module of the
 * three checkpoints once and hashes base and source, which gives the key; then, unless the
 * state records this realignment, phase B overwrites the changed grains of the patched
 * tensors through the journal. Called with the lock held and the journal gated. */
uint64_t nlsr_inplace_single_reserve(const nlsr_ctx *ctx)
{
    uint64_t lim = ctx->budget.limit;
    uint64_t r = lim ? lim / 8 : SINGLE_RESERVE_MAX;
    return r < SINGLE_RESERVE_MIN ? SINGLE_RESERVE_MIN : r > SINGLE_RESERVE_MAX ? SINGLE_RESERVE_MAX : r;
}

static int run_single(ip_job *J, const nlsr_ckpt *B, const nlsr_ckpt *S, int is_ref,
                      const nlsr_ckpt *T, int flags)
{
    nlsr_ctx *ctx = J->ctx;
    nlsr_report rep;
    nlsr_report_init(&rep, ctx, J->job, "full");
    nlsr_audit_output(ctx, "out", J->dir, 1);
    nlsr_full_pass *P = NULL;
    nlsr_journal *jn = NULL;
    /* Links, read-only files and the like are refused before the long read. */
    int rc = open_journal_files(J, T, &jn);
    nlsr_journal_close(jn);
    jn = NULL;
    uint64_t reserve = nlsr_inplace_single_reserve(ctx);
    if (rc == 0)
        rc = nlsr_full_pass_begin(ctx, B, S, is_ref, T, J->p, flags, reserve, &rep, &P);
    if (rc < 0) goto done;
    nlsr_inplace_ident *id = &J->ident;
    nlsr_full_pass_fingerprints(P, &id->base_fp, &id->src_fp);
    id->is_ref = is_ref;
    id->beta = J->p->beta;
    id->sparsity = J->p->sparsity;
    id->targets = J->p->targets;
    id->ntargets = J->p->ntargets;
    id->scorer_magnitude = 1;
    J->has_sources = 1;
    fp_str(J->res->key, sizeof J->res->key, nlsr_inplace_key_full(id, &J->p->select));
    J->patch_params = params_json(J->p);
    int same = decide(J);
    if (same < 0) {
        rc = same;
        goto done;
    }
    if (same) {
        J->res->outcome = NLSR_INPLACE_ALREADY;
        goto done;
    }
    if (J->res->rolled_back_first) {
        /* --force put the fine-tune's bytes back from the previous realignment's journal:
         * phase A read the realigned ones, so its similarities and kept patches are redone
         * (base and aligned, hence the key, are the same). */
        nlsr_full_pass_end(P);
        P = NULL;
        double t0 = rep.t_start;
        uint64_t r0 = rep.read0, w0 = rep.written0;
        nlsr_report_free(&rep);
        nlsr_report_init(&rep, ctx, J->job, "full");
        rep.t_start = t0; /* the summary counts the whole job */
        rep.read0 = r0;
        rep.written0 = w0;
        rc = nlsr_full_pass_begin(ctx, B, S, is_ref, T, J->p, flags, reserve, &rep, &P);
        if (rc < 0) goto done;
    }
    /* Journal buffers within the reserve: the batch half of it, a record an eighth (the kill
     * tests' smaller records win). */
    uint64_t rec = nlsr_fault_record_bytes(), batch = reserve / 2;
    if (!rec) rec = reserve / 8 < (4u << 20) ? reserve / 8 : (4u << 20);
    /* The kill tests' small records come with small batches: many armings to kill between. */
    else batch = 4 * rec;
    /* Records built on two threads when the second one's buffers fit the reserve too (with
     * 4 MiB records, from a reserve of about 36 MiB, a budget of about 290 MiB, on). */
    nlsr_journal_opts o = {rec, batch, J->ip->follow_links, 2};
    if (nlsr_journal_buffer_bytes(rec, batch, 2) > reserve) o.builders = 1;
    rc = nlsr_journal_begin(ctx, J->dir, &o, &jn);
    for (size_t k = 0; k < T->nshards && rc == 0; k++) {
        uint32_t fid;
        rc = nlsr_journal_add_file(jn, T->shard_names[k], &fid);
    }
    if (rc == 0) rc = nlsr_full_pass_inplace(P, jn, &rep, &J->res->patched_bytes);
    J->res->modules = rep.n;
    for (size_t i = 0; i < rep.n; i++) J->res->patched += rep.m[i].patched != 0;
    rc = finish_journal(J, T, "full", jn, &rep, J->p, rc);
    jn = NULL;
    if (rc == 0) rc = nlsr_report_emit(&rep, ctx, J->p);
done:
    nlsr_journal_close(jn);
    nlsr_full_pass_end(P);
    nlsr_report_free(&rep);
    return rc;
}

static int run_inplace_job(nlsr_ctx *ctx, const char *base, const char *aligned, const char *reference,
                     const char *dir, const nlsr_realign_params *p,
                     const nlsr_inplace_params *ip, nlsr_inplace_result *res)
{
    nlsr_err *e = &ctx->err;
    NLSR_FAIL_IF(!aligned == !reference, e, NLSR_E_USAGE,
                 "run needs exactly one of an aligned model and a reference");
    NLSR_FAIL_IF(!dir, e, NLSR_E_USAGE, "run in place needs the fine-tuned checkpoint folder");
    nlsr_inplace_result local;
    nlsr_inplace_params ipd = NLSR_INPLACE_PARAMS_DEFAULT;
    ip_job J;
    job_init(&J, ctx, dir, "run", p, ip ? ip : &ipd, res ? res : &local);
    const char *srcp = aligned ? aligned : reference;
    nlsr_ckpt *T = NULL, *S = NULL, *B = NULL;
    char *patch = NULL, *tdir = NULL;
    int single = 0, flags = 0;
    /* Everything a header can tell is checked before the lock and the (long) read. */
    int audit = nlsr_audit_begin(ctx, p);
    int rc = check_dir(ctx, dir);
    if (rc == 0) {
        const char *in[3] = {dir, base, srcp};
        rc = nlsr_outputs_check(ctx, NULL, NLSR_OUT_FILE, p, in, 3);
    }
    if (rc == 0) rc = nlsr_ckpt_open(ctx, dir, &T);
    if (rc == 0) rc = refuse_shared_store(&J, T);
    if (rc == 0) rc = check_other_weights(ctx, T);
    if (rc == 0) rc = nlsr_ckpt_open(ctx, srcp, &S);
    if (rc < 0) goto done;
    nlsr_audit_input_ckpt(ctx, aligned ? "aligned" : "reference", srcp, S);
    int peft = nlsr_ckpt_get_kind(S) == NLSR_CKPT_PEFT;
    if (peft != (nlsr_ckpt_get_kind(T) == NLSR_CKPT_PEFT)) {
        rc = nlsr_fail(e, NLSR_E_MISMATCH, "%s %s is %s but %s is %s",
                       aligned ? "aligned" : "reference", srcp,
                       peft ? "a PEFT adapter" : "a full checkpoint", dir,
                       peft ? "a full checkpoint" : "a PEFT adapter");
        goto done;
    }
    if (!peft) {
        if (!base) {
            rc = nlsr_fail(e, NLSR_E_USAGE, "full checkpoints need the base model (--base)");
            goto done;
        }
        rc = nlsr_ckpt_open(ctx, base, &B);
        if (rc == 0) nlsr_audit_input_ckpt(ctx, "base", base, B);
        if (rc == 0) rc = nlsr_full_check_sources(ctx, B, S, aligned == NULL, p);
        if (rc == 0) rc = nlsr_full_check_finetuned(ctx, S, T, p);
        if (rc < 0) goto done;
        /* The single pass when the budget holds it with the journal's buffers (as run --out
         * decides, realign_run.h), in row blocks when it holds less; prepare + apply through a
         * temporary patch file for other scorers. NLSR_RUN_PLAN forces one (tests). */
        nlsr_run_plan rp;
        rc = nlsr_full_run_plan_inplace(ctx, B, S, T, p, nlsr_inplace_single_reserve(ctx), &rp);
        if (rc < 0) goto done;
        single = nlsr_full_run_choose(ctx, &rp, p, &flags);
        if (single < 0) {
            rc = single;
            goto done;
        }
    }
    /* The lock and the journal are checked before the long read. */
    rc = take_lock(&J);
    if (rc == 0) rc = gate(&J);
    if (rc < 0) goto done;
    if (J.ip->dry_run) {
        /* The key needs base and aligned read: a dry run of run says what it may overwrite. */
        J.res->outcome = NLSR_INPLACE_WOULD_REALIGN;
        J.res->bytes_written = target_bytes(T, p, &J.res->modules);
        goto done;
    }
    if (single) {
        rc = run_single(&J, B, S, aligned == NULL, T, flags);
        goto done;
    }
    nlsr_ckpt_free(B);
    nlsr_ckpt_free(S);
    B = S = NULL;
    /* The lock stays held through the prepare (whose temporary file lives in dir) and the
     * apply, which checks the journal and the state again. */
    nlsr_journal_info_free(&J.ji);
    cJSON_Delete(J.state);
    J.state = NULL;
    rc = inplace_tmp_dir(ctx, dir, &tdir);
    if (rc < 0) goto done;
    if (!(patch = nlsr_path_join(tdir, "patches.nlsrp"))) {
        rc = nlsr_fail(e, -ENOMEM, "out of memory");
        goto done;
    }
    {
        nlsr_realign_params pp = *p;
        pp.report_path = NULL;
        pp.json_stdout = 0;
        pp.force = 1;
        int no_summary = ctx->no_summary;
        ctx->no_summary = 1; /* one human summary: apply's */
        rc = nlsr_prepare(ctx, base, aligned, reference, patch, &pp);
        ctx->no_summary = no_summary;
    }
    nlsr_ckpt_free(T);
    T = NULL;
    if (rc == 0) rc = apply_job(&J, patch);
done:
    nlsr_audit_end(ctx, audit);
    nlsr_tmp_remove(tdir);
    free(tdir);
    free(patch);
    nlsr_ckpt_free(B);
    nlsr_ckpt_free(S);
    nlsr_ckpt_free(T);
    job_free(&J);
    return rc;
}

int nlsr_run_inplace(nlsr_ctx *ctx, const char *base, const char *aligned, const char *reference,
                     const char *dir, const nlsr_realign_params *p,
                     const nlsr_inplace_params *ip, nlsr_inplace_result *res)
{
    int entered = nlsr_job_enter(ctx, "run");
    int rc = run_inplace_job(ctx, base, aligned, reference, dir, p, ip, res);
    nlsr_job_leave(ctx, entered);
    return rc;
}

static int rollback_job(nlsr_ctx *ctx, const char *dir, const nlsr_rollback_params *rp,
                  nlsr_inplace_result *res)
{
    nlsr_err *e = &ctx->err;
    nlsr_inplace_result local;
    nlsr_rollback_params rpd = NLSR_ROLLBACK_PARAMS_DEFAULT;
    nlsr_inplace_params ip = NLSR_INPLACE_PARAMS_DEFAULT;
    nlsr_realign_params p = NLSR_REALIGN_PARAMS_DEFAULT;
    if (!rp) rp = &rpd;
    ip.wait = rp->wait;
    ip_job J;
    job_init(&J, ctx, dir, "rollback", &p, &ip, res ? res : &local);
    nlsr_journal_info info;
    memset(&info, 0, sizeof info);
    cJSON *st = NULL;
    int rc = check_dir(ctx, dir);
    if (rc == 0) rc = take_lock(&J);
    if (rc < 0) goto done;
    if (rp->discard) {
        rc = nlsr_journal_inspect(ctx, dir, &info);
        if (rc == 0 && info.state == NLSR_JOURNAL_NONE)
            rc = nlsr_fail(e, NLSR_E_NOTFOUND, "%s: has no journal to discard", dir);
        if (rc == 0 && info.state != NLSR_JOURNAL_COMPLETE)
            rc = nlsr_fail(e, NLSR_E_JOURNAL,
                           "%s: its journal is %s, not complete: roll it back (nlsr rollback %s) "
                           "rather than discard it",
                           dir, nlsr_journal_state_name(info.state), dir);
        if (rc == 0) rc = state_load(ctx, dir, &st);
        if (rc == 0 && st && names_journal(st, info.id)) {
            cJSON_ReplaceItemInObjectCaseSensitive(st, "journal", cJSON_CreateNull());
            rc = state_write(ctx, dir, st);
        }
        if (rc == 0) rc = nlsr_durable_unlink(ctx, dir, NLSR_JOURNAL_NAME);
        if (rc == 0) {
            J.res->outcome = NLSR_INPLACE_DISCARDED;
            J.res->journal_bytes = info.file_size;
        }
        goto done;
    }
    rc = rollback_locked(ctx, dir, rp->force, &info);
    if (rc < 0) goto done;
    if (info.state == NLSR_JOURNAL_NONE) {
        rc = state_load(ctx, dir, &st);
        if (rc == 0 && st)
            rc = nlsr_fail(e, NLSR_E_NOTFOUND,
                           "%s: was realigned in place (%s) but its journal was discarded: that "
                           "realignment cannot be undone",
                           dir, jstr(st, "key"));
        if (rc == 0) J.res->outcome = NLSR_INPLACE_NOTHING;
        goto done;
    }
    J.res->outcome = NLSR_INPLACE_ROLLED_BACK;
    J.res->ranges = info.restored_ranges;
    J.res->bytes_written = info.restored_bytes;
    J.res->journal_bytes = info.file_size;
done:
    cJSON_Delete(st);
    nlsr_journal_info_free(&info);
    job_free(&J);
    return rc;
}

int nlsr_rollback(nlsr_ctx *ctx, const char *dir, const nlsr_rollback_params *rp,
                  nlsr_inplace_result *res)
{
    int entered = nlsr_job_enter(ctx, "rollback");
    int rc = rollback_job(ctx, dir, rp, res);
    nlsr_job_leave(ctx, entered);
    return rc;
}
