/* SPDX-License-Identifier: Apache-2.0 */
#define _GNU_SOURCE
/* `nlsr bench`: what it writes. The table (stdout), the CSV (one row per run), the JSON (the
 * rows, the machine, its file systems and their rates) and the SVG plot (time and peak RSS
 * against the budget, one series per job and backend, the minimal I/O time as dashed lines),
 * built as plain strings so that no Python or plotting library is needed. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/json.h"
#include "bench.h"

#define MIB (1024.0 * 1024.0)
#define GB 1e9

static double cpu_s(const bench_row *w)
{
    return w->user_s + w->sys_s;
}

void bench_print_table(const bench_result *r, FILE *out)
{
    fprintf(out, "%-12s %-6s %-5s %-5s %3s %-11s %8s %8s %9s %-11s %8s %8s %8s %7s %8s %9s  %s\n",
            "job", "budget", "io", "used", "rep", "cache", "wall_s", "cpu_s", "rss_MiB", "plan",
            "read_GB", "write_GB", "minio_s", "ratio", "pred_s", "wall/pred", "status");
    for (size_t i = 0; i < r->nrows; i++) {
        const bench_row *w = &r->rows[i];
        char pred[16] = "-", pr[16] = "-";
        if (w->predicted_s > 0) snprintf(pred, sizeof pred, "%.2f", w->predicted_s);
        if (w->predicted_ratio > 0) snprintf(pr, sizeof pr, "%.2f", w->predicted_ratio);
        fprintf(out, "%-12s %-6s %-5s %-5s %3d %-11s %8.2f %8.2f %9.1f %-11s %8.3f %8.3f %8.2f %7.2f %8s %9s  %s\n",
                w->job, w->budget, w->io, w->backend, w->rep, w->cache, w->wall_s, cpu_s(w),
                (double)w->peak_rss / MIB, w->plan[0] ? w->plan : "-", (double)w->bytes_read / GB,
                (double)w->bytes_written / GB, w->min_io_s, w->ratio, pred, pr,
                w->status ? w->error : "ok");
    }
    for (int i = 0; i < r->nfs; i++) {
        const bench_fs *f = &r->fs[i];
        fprintf(out, "disk %-24s %s on %s (%s): direct read %.0f MB/s, buffered read %.0f MB/s",
                f->role, f->fstype, f->mount, f->source, f->direct_bps / 1e6, f->buffered_bps / 1e6);
        if (f->write_bps > 0) fprintf(out, ", write+fsync %.0f MB/s", f->write_bps / 1e6);
        fputc('\n', out);
    }
    if (r->in_place_copy_excluded)
        fprintf(out, "run-in-place: each run works on a fresh copy of the fine-tune; the copy is "
                     "not timed\n");
}

/* ---- CSV --------------------------------------------------------------------------------- */

static const char *const CSV_HEAD =
    "job,budget,budget_bytes,io,backend,rep,cache,status,wall_s,user_s,sys_s,cpu_s,"
    "peak_rss_bytes,plan,phase_similarities_s,phase_output_s,planned_bytes_read,"
    "planned_bytes_read_max,planned_bytes_written,bytes_read,bytes_written,min_io_s,ratio,"
    "predicted_s,predicted_ratio,error\n";

static void csv_str(FILE *f, const char *s)
{
    if (!strpbrk(s, ",\"\n\r")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void csv_opt(FILE *f, double v)
{
    if (v >= 0) fprintf(f, "%.6f", v);
}

static void csv_i64(FILE *f, int64_t v)
{
    if (v >= 0) fprintf(f, "%lld", (long long)v);
}

static int close_checked(FILE *f, const char *path, nlsr_err *e)
{
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) return nlsr_fail(e, -EIO, "%s: cannot write", path);
    return 0;
}

int bench_write_csv(const bench_result *r, const char *path, nlsr_err *e)
{
    FILE *f = fopen(path, "w");
    if (!f) return nlsr_fail(e, -errno, "%s: cannot create: %s", path, strerror(errno));
    fputs(CSV_HEAD, f);
    for (size_t i = 0; i < r->nrows; i++) {
        const bench_row *w = &r->rows[i];
        csv_str(f, w->job);
        fputc(',', f);
        csv_str(f, w->budget);
        fprintf(f, ",%llu,%s,%s,%d,%s,%d,%.6f,%.6f,%.6f,%.6f,%llu,", (unsigned long long)w->budget_bytes,
                w->io, w->backend, w->rep, w->cache, w->status, w->wall_s, w->user_s, w->sys_s,
                cpu_s(w), (unsigned long long)w->peak_rss);
        csv_str(f, w->plan);
        fputc(',', f);
        csv_opt(f, w->phase_sim_s);
        fputc(',', f);
        csv_opt(f, w->phase_out_s);
        fputc(',', f);
        csv_i64(f, w->planned_read);
        fputc(',', f);
        csv_i64(f, w->planned_read_max);
        fputc(',', f);
        csv_i64(f, w->planned_written);
        fprintf(f, ",%llu,%llu,%.6f,%.6f,", (unsigned long long)w->bytes_read,
                (unsigned long long)w->bytes_written, w->min_io_s, w->ratio);
        csv_opt(f, w->predicted_s > 0 ? w->predicted_s : -1);
        fputc(',', f);
        csv_opt(f, w->predicted_ratio > 0 ? w->predicted_ratio : -1);
        fputc(',', f);
        csv_str(f, w->error);
        fputc('\n', f);
    }
    return close_checked(f, path, e);
}

/* ---- JSON -------------------------------------------------------------------------------- */

static cJSON *row_json(const bench_row *w)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "job", w->job);
    cJSON_AddStringToObject(o, "budget", w->budget);
    cJSON_AddItemToObject(o, "budget_bytes", nlsr_json_u64(w->budget_bytes));
    cJSON_AddStringToObject(o, "io", w->io);
    cJSON_AddStringToObject(o, "backend", w->backend);
    cJSON_AddNumberToObject(o, "rep", w->rep);
    cJSON_AddStringToObject(o, "cache", w->cache);
    cJSON_AddNumberToObject(o, "status", w->status);
    cJSON_AddItemToObject(o, "wall_s", nlsr_json_number(w->wall_s));
    cJSON_AddItemToObject(o, "user_s", nlsr_json_number(w->user_s));
    cJSON_AddItemToObject(o, "sys_s", nlsr_json_number(w->sys_s));
    cJSON_AddItemToObject(o, "cpu_s", nlsr_json_number(cpu_s(w)));
    cJSON_AddItemToObject(o, "peak_rss_bytes", nlsr_json_u64(w->peak_rss));
    if (w->plan[0]) cJSON_AddStringToObject(o, "plan", w->plan);
    else cJSON_AddNullToObject(o, "plan");
    if (w->phase_sim_s >= 0) {
        cJSON *ph = cJSON_AddObjectToObject(o, "phase_seconds");
        if (ph) {
            cJSON_AddItemToObject(ph, "similarities", nlsr_json_number(w->phase_sim_s));
            cJSON_AddItemToObject(ph, "output", nlsr_json_number(w->phase_out_s));
        }
    } else {
        cJSON_AddNullToObject(o, "phase_seconds");
    }
    if (w->planned_read >= 0) cJSON_AddItemToObject(o, "planned_bytes_read", nlsr_json_u64((uint64_t)w->planned_read));
    else cJSON_AddNullToObject(o, "planned_bytes_read");
    if (w->planned_read_max >= 0) cJSON_AddItemToObject(o, "planned_bytes_read_max", nlsr_json_u64((uint64_t)w->planned_read_max));
    else cJSON_AddNullToObject(o, "planned_bytes_read_max");
    if (w->planned_written >= 0) cJSON_AddItemToObject(o, "planned_bytes_written", nlsr_json_u64((uint64_t)w->planned_written));
    else cJSON_AddNullToObject(o, "planned_bytes_written");
    cJSON_AddItemToObject(o, "bytes_read", nlsr_json_u64(w->bytes_read));
    cJSON_AddItemToObject(o, "bytes_written", nlsr_json_u64(w->bytes_written));
    cJSON_AddItemToObject(o, "min_io_s", nlsr_json_number(w->min_io_s));
    cJSON_AddItemToObject(o, "ratio", nlsr_json_number(w->ratio));
    if (w->predicted_s > 0) cJSON_AddItemToObject(o, "predicted_s", nlsr_json_number(w->predicted_s));
    else cJSON_AddNullToObject(o, "predicted_s");
    if (w->predicted_ratio > 0)
        cJSON_AddItemToObject(o, "predicted_ratio", nlsr_json_number(w->predicted_ratio));
    else cJSON_AddNullToObject(o, "predicted_ratio");
    if (w->error[0]) cJSON_AddStringToObject(o, "error", w->error);
    if (w->command) cJSON_AddStringToObject(o, "command", w->command);
    return o;
}

int bench_write_json(const bench_result *r, const char *path, nlsr_err *e)
{
    cJSON *root = cJSON_CreateObject();
    if (!root) return nlsr_fail(e, -ENOMEM, "bench: out of memory");
    cJSON_AddStringToObject(root, "nlsr_version", nlsr_version());
    cJSON *m = cJSON_AddObjectToObject(root, "machine");
    if (m) {
        cJSON_AddStringToObject(m, "cpu", r->m.cpu);
        cJSON_AddNumberToObject(m, "cpus", r->m.cpus);
        cJSON_AddItemToObject(m, "memory_bytes", nlsr_json_u64(r->m.mem_bytes));
        cJSON_AddStringToObject(m, "kernel", r->m.kernel);
        cJSON_AddStringToObject(m, "io_uring", r->m.io_uring);
        cJSON_AddStringToObject(m, "loadavg", r->m.load);
        cJSON_AddNumberToObject(m, "euid", r->m.euid);
    }
    cJSON *fs = cJSON_AddArrayToObject(root, "filesystems");
    for (int i = 0; fs && i < r->nfs; i++) {
        const bench_fs *f = &r->fs[i];
        cJSON *o = cJSON_CreateObject();
        if (!o) break;
        cJSON_AddStringToObject(o, "role", f->role);
        cJSON_AddStringToObject(o, "path", f->path);
        cJSON_AddStringToObject(o, "fstype", f->fstype);
        cJSON_AddStringToObject(o, "device", f->source);
        cJSON_AddStringToObject(o, "mount", f->mount);
        cJSON_AddItemToObject(o, "direct_read_bps", nlsr_json_number(f->direct_bps));
        cJSON_AddStringToObject(o, "direct_read_how", f->direct_note);
        cJSON_AddItemToObject(o, "buffered_read_bps", nlsr_json_number(f->buffered_bps));
        cJSON_AddItemToObject(o, "write_fsync_bps", nlsr_json_number(f->write_bps));
        cJSON_AddItemToObject(o, "probe_bytes", nlsr_json_u64(f->probe_bytes));
        cJSON_AddItemToArray(fs, o);
    }
    cJSON *in = cJSON_AddObjectToObject(root, "inputs");
    if (in) {
        if (r->synth) {
            cJSON_AddStringToObject(in, "synth", r->synth);
            cJSON_AddNumberToObject(in, "layers", r->synth_layers);
        }
        cJSON_AddStringToObject(in, "base", r->base ? r->base : "");
        cJSON_AddStringToObject(in, "aligned", r->aligned ? r->aligned : "");
        cJSON_AddStringToObject(in, "finetuned", r->finetuned ? r->finetuned : "");
    }
    cJSON *notes = cJSON_AddArrayToObject(root, "notes");
    if (notes) {
        cJSON_AddItemToArray(notes, cJSON_CreateString(
            "min_io_s: the job's planned bytes read (else its actual bytes) at the direct read "
            "rate of its inputs' file system, plus its planned bytes written (else actual) at "
            "the scratch folder's write+fsync rate; ratio = wall_s / min_io_s"));
        cJSON_AddItemToArray(notes, cJSON_CreateString(
            "command: the nlsr command line doing the same job as the run (its child calls the "
            "library with the same inputs, output, budget, backend and defaults); its paths are "
            "the bench's scratch folder's, removed at the end"));
        cJSON_AddItemToArray(notes, cJSON_CreateString(
            "predicted_s: the plan's predicted time with compute (run, run-in-place), its phases "
            "at the same disk rates and at kernel rates calibrated before the run; "
            "predicted_ratio = wall_s / predicted_s"));
        if (r->in_place_copy_excluded)
            cJSON_AddItemToArray(notes, cJSON_CreateString(
                "run-in-place: each run works on a fresh copy of the fine-tune; the copy is not timed"));
    }
    cJSON *rows = cJSON_AddArrayToObject(root, "runs");
    for (size_t i = 0; rows && i < r->nrows; i++) cJSON_AddItemToArray(rows, row_json(&r->rows[i]));
    char *txt = cJSON_Print(root);
    cJSON_Delete(root);
    if (!txt) return nlsr_fail(e, -ENOMEM, "bench: out of memory");
    FILE *f = fopen(path, "w");
    if (!f) {
        free(txt);
        return nlsr_fail(e, -errno, "%s: cannot create: %s", path, strerror(errno));
    }
    fputs(txt, f);
    fputc('\n', f);
    free(txt);
    return close_checked(f, path, e);
}

/* ---- SVG --------------------------------------------------------------------------------- */

/* Text and attribute values: the five XML specials. */
static void xml_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&apos;", f); break;
        default:
            if ((unsigned char)*s >= 0x20 || *s == '\t') fputc(*s, f);
        }
    }
}

#define MAXB 16
#define MAXS 64

typedef struct series {
    char job[16], io[8];
    double t[MAXB], rss[MAXB], minio[MAXB];
    int n[MAXB];
} series;

static const char *const COLORS[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
                                     "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};

static double nice_max(double v)
{
    if (v <= 0) return 1;
    double p = 1;
    while (p < v) p *= 10;
    while (p / 10 >= v) p /= 10;
    for (double k = 0.2; k <= 1.0001; k += 0.2)
        if (p * k >= v) return p * k;
    return p;
}

/* One panel: axes, ticks, one polyline per series (and the minimal I/O lines). */
static void panel(FILE *f, const series *s, int ns, const char *const *bud, int nb, double x0,
                  double y0, double w, double h, int rss, const char *title)
{
    double ymax = 0;
    for (int i = 0; i < ns; i++)
        for (int b = 0; b < nb; b++) {
            if (!s[i].n[b]) continue;
            double v = rss ? s[i].rss[b] : s[i].t[b];
            if (v > ymax) ymax = v;
            if (!rss && s[i].minio[b] > ymax) ymax = s[i].minio[b];
        }
    ymax = nice_max(ymax);
    fprintf(f, "<g class=\"panel\">\n<text x=\"%.1f\" y=\"%.1f\" font-size=\"14\" text-anchor=\"middle\">",
            x0 + w / 2, y0 - 12);
    xml_text(f, title);
    fprintf(f, "</text>\n<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#444\"/>\n",
            x0, y0, w, h);
    for (int k = 0; k <= 5; k++) {
        double y = y0 + h - h * k / 5.0;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                   "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"end\">%.4g</text>\n",
                x0, y, x0 + w, y, x0 - 4, y + 4, ymax * k / 5.0);
    }
    double dx = nb > 1 ? w / (nb - 1 + 1.0) : w;
#define XPOS(b) (x0 + dx * 0.5 + dx * (b))
#define YPOS(v) (y0 + h - h * (v) / ymax)
    for (int b = 0; b < nb; b++) {
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"middle\">", XPOS(b), y0 + h + 16);
        xml_text(f, bud[b]);
        fputs("</text>\n", f);
    }
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" text-anchor=\"middle\">memory budget</text>\n",
            x0 + w / 2, y0 + h + 34);
    for (int i = 0; i < ns; i++) {
        const char *col = COLORS[i % (int)(sizeof COLORS / sizeof COLORS[0])];
        fprintf(f, "<g class=\"series\" data-job=\"");
        xml_text(f, s[i].job);
        fputs("\" data-io=\"", f);
        xml_text(f, s[i].io);
        fprintf(f, "\" data-value=\"%s\">\n<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"",
                rss ? "peak_rss_mib" : "wall_s", col);
        for (int b = 0; b < nb; b++)
            if (s[i].n[b]) fprintf(f, "%.1f,%.1f ", XPOS(b), YPOS(rss ? s[i].rss[b] : s[i].t[b]));
        fputs("\"/>\n", f);
        for (int b = 0; b < nb; b++)
            if (s[i].n[b]) {
                double v = rss ? s[i].rss[b] : s[i].t[b];
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"><title>", XPOS(b), YPOS(v), col);
                xml_text(f, s[i].job);
                fputc(' ', f);
                xml_text(f, s[i].io);
                fputc(' ', f);
                xml_text(f, bud[b]);
                fprintf(f, rss ? ": %.0f MiB</title></circle>\n" : ": %.2f s</title></circle>\n", v);
            }
        fputs("</g>\n", f);
    }
    /* The minimal I/O time of each job (the same for every backend): dashed. */
    if (!rss)
        for (int i = 0; i < ns; i++) {
            int first = 1;
            for (int j = 0; j < i; j++) first &= strcmp(s[j].job, s[i].job) != 0;
            if (!first) continue;
            fputs("<g class=\"min-io\" data-job=\"", f);
            xml_text(f, s[i].job);
            fprintf(f, "\">\n<polyline fill=\"none\" stroke=\"#000\" stroke-dasharray=\"6,4\" points=\"");
            for (int b = 0; b < nb; b++)
                if (s[i].n[b] && s[i].minio[b] > 0) fprintf(f, "%.1f,%.1f ", XPOS(b), YPOS(s[i].minio[b]));
            fputs("\"/>\n</g>\n", f);
        }
#undef XPOS
#undef YPOS
    fputs("</g>\n", f);
}

int bench_write_svg(const bench_result *r, const char *path, nlsr_err *e)
{
    series *s = calloc(MAXS, sizeof *s);
    const char *bud[MAXB];
    int ns = 0, nb = 0;
    if (!s) return nlsr_fail(e, -ENOMEM, "bench: out of memory");
    for (size_t i = 0; i < r->nrows; i++) {
        const bench_row *w = &r->rows[i];
        int b = 0, k = 0;
        while (b < nb && strcmp(bud[b], w->budget)) b++;
        if (b == nb && nb < MAXB) bud[nb++] = w->budget;
        while (k < ns && (strcmp(s[k].job, w->job) || strcmp(s[k].io, w->io))) k++;
        if (k == ns && ns < MAXS) {
            snprintf(s[ns].job, sizeof s[ns].job, "%s", w->job);
            snprintf(s[ns].io, sizeof s[ns].io, "%s", w->io);
            ns++;
        }
        if (b == MAXB || k == MAXS || w->status) continue;
        /* Means over the repetitions. */
        int n = s[k].n[b];
        s[k].t[b] = (s[k].t[b] * n + w->wall_s) / (n + 1);
        s[k].rss[b] = (s[k].rss[b] * n + (double)w->peak_rss / MIB) / (n + 1);
        s[k].minio[b] = (s[k].minio[b] * n + w->min_io_s) / (n + 1);
        s[k].n[b] = n + 1;
    }
    FILE *f = fopen(path, "w");
    if (!f) {
        free(s);
        return nlsr_fail(e, -errno, "%s: cannot create: %s", path, strerror(errno));
    }
    const double W = 980, H = 470 + 18.0 * ((ns + 2) / 3 + 1);
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
               "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\">\n"
               "<rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>\n<title>",
            W, H, W, H);
    xml_text(f, "nlsr bench: time and peak RSS against the memory budget");
    fputs("</title>\n<text x=\"20\" y=\"24\" font-size=\"13\">", f);
    char head[512], load[16];
    snprintf(load, sizeof load, "%.*s", (int)strcspn(r->m.load, " "), r->m.load);
    char what[96];
    if (!r->synth) snprintf(what, sizeof what, "own models");
    else if (r->synth_layers) snprintf(what, sizeof what, "synthetic %s, %d layers", r->synth, r->synth_layers);
    else snprintf(what, sizeof what, "synthetic %s", r->synth);
    snprintf(head, sizeof head, "nlsr %s bench, %s; %s x%d, %.0f GiB; %s; load %s", nlsr_version(),
             what, r->m.cpu, r->m.cpus, (double)r->m.mem_bytes / (1024.0 * MIB),
             r->rows && r->nrows ? r->rows[0].cache : "", load);
    xml_text(f, head);
    fputs("</text>\n", f);
    panel(f, s, ns, bud, nb, 70, 70, 380, 300, 0, "wall time (s); dashed: minimal I/O time");
    panel(f, s, ns, bud, nb, 570, 70, 380, 300, 1, "peak RSS (MiB)");
    double ly = 430 + 18.0 * ((ns + 2) / 3);
    fprintf(f, "<g class=\"legend\"><line x1=\"70\" y1=\"%.1f\" x2=\"94\" y2=\"%.1f\" stroke=\"#000\" "
               "stroke-dasharray=\"6,4\"/><text x=\"100\" y=\"%.1f\" font-size=\"12\">minimal I/O time: "
               "the job's planned bytes at the direct read and write+fsync rates measured in this "
               "run</text></g>\n",
            ly, ly, ly + 4);
    for (int i = 0; i < ns; i++) {
        double x = 70 + 300.0 * (i % 3), y = 430 + 18.0 * (i / 3);
        fprintf(f, "<g class=\"legend\"><line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                   "stroke-width=\"3\"/><text x=\"%.1f\" y=\"%.1f\" font-size=\"12\">",
                x, y, x + 24, y, COLORS[i % (int)(sizeof COLORS / sizeof COLORS[0])], x + 30, y + 4);
        xml_text(f, s[i].job);
        fputs(" / ", f);
        xml_text(f, s[i].io);
        fputs("</text></g>\n", f);
    }
    fputs("</svg>\n", f);
    free(s);
    return close_checked(f, path, e);
}
