/* SPDX-License-Identifier: Apache-2.0 */
/* The safetensors writer: header padded to 8 bytes, data appended in the declared order, the
 * file built under a temporary name and renamed into place only once complete and durable, so
 * an interrupted run never leaves a file that looks finished. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "file.h"
#include "outpath.h"
#include "safetensors.h"

struct st_writer {
    char *final_path, *tmp_path;
    int fd;
    uint64_t data_start, data_size, written;
    nlsr_err *e;
};

typedef struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) { b->oom = 1; return; }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_json_string(sbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            sb_put(b, esc, 2);
        } else if (*p < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            sb_put(b, esc, 6);
        } else {
            sb_put(b, (const char *)p, 1);
        }
    }
    sb_put(b, "\"", 1);
}

static void sb_u64(sbuf *b, uint64_t v)
{
    char num[24];
    int n = snprintf(num, sizeof num, "%llu", (unsigned long long)v);
    sb_put(b, num, (size_t)n);
}

int st_header_serialize(const st_wtensor *t, size_t n, const st_meta *meta, size_t nmeta,
                        char **out, size_t *len, uint64_t *data_size, nlsr_err *e)
{
    sbuf b = {0};
    sb_str(&b, "{");
    int first = 1;
    if (nmeta > 0) {
        sb_str(&b, "\"__metadata__\":{");
        for (size_t i = 0; i < nmeta; i++) {
            if (i) sb_str(&b, ",");
            sb_json_string(&b, meta[i].key);
            sb_str(&b, ":");
            sb_json_string(&b, meta[i].value);
        }
        sb_str(&b, "}");
        first = 0;
    }
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) {
            if (t[i].shape[d] != 0 && numel > UINT64_MAX / t[i].shape[d]) {
                free(b.p);
                return nlsr_fail(e, NLSR_E_USAGE, "tensor '%.200s': shape overflows", t[i].name);
            }
            numel *= t[i].shape[d];
        }
        uint64_t nbytes = numel * nlsr_dtype_size(t[i].dtype);
        if (!first) sb_str(&b, ",");
        first = 0;
        sb_json_string(&b, t[i].name);
        sb_str(&b, ":{\"dtype\":\"");
        sb_str(&b, nlsr_dtype_name(t[i].dtype));
        sb_str(&b, "\",\"shape\":[");
        for (int d = 0; d < t[i].ndim; d++) {
            if (d) sb_str(&b, ",");
            sb_u64(&b, t[i].shape[d]);
        }
        sb_str(&b, "],\"data_offsets\":[");
        sb_u64(&b, off);
        sb_str(&b, ",");
        sb_u64(&b, off + nbytes);
        sb_str(&b, "]}");
        off += nbytes;
    }
    sb_str(&b, "}");
    /* Pad with spaces so that the data section starts 8-byte aligned, as the reference writer
     * does: readers may then map tensors without copying. */
    while (!b.oom && (8 + b.len) % 8 != 0) sb_str(&b, " ");
    if (b.oom) {
        free(b.p);
        return nlsr_fail(e, -ENOMEM, "out of memory building a safetensors header");
    }
    *out = b.p;
    *len = b.len;
    *data_size = off;
    return 0;
}

int st_writer_begin(const char *final_path, const st_wtensor *t, size_t n, const st_meta *meta,
                    size_t nmeta, st_writer **out, nlsr_err *e)
{
    int rc;
    char *hdr = NULL;
    size_t hlen = 0;
    st_writer *w = calloc(1, sizeof *w);
    if (!w) return nlsr_fail(e, -ENOMEM, "%s: out of memory", final_path);
    w->fd = -1;
    w->e = e;
    rc = st_header_serialize(t, n, meta, nmeta, &hdr, &hlen, &w->data_size, e);
    if (rc < 0) goto fail;
    w->final_path = strdup(final_path);
    if (!w->final_path) {
        rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", final_path);
        goto fail;
    }
    rc = nlsr_tmp_file(e, final_path, &w->tmp_path, &w->fd);
    if (rc < 0) goto fail;
    unsigned char lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    rc = nlsr_pwrite_all(w->fd, lenb, 8, 0, w->tmp_path, e);
    if (rc == 0) rc = nlsr_pwrite_all(w->fd, hdr, hlen, 8, w->tmp_path, e);
    if (rc < 0) goto fail;
    w->data_start = 8 + hlen;
    free(hdr);
    *out = w;
    return 0;
fail:
    free(hdr);
    st_writer_abort(w);
    return rc;
}

int st_writer_write(st_writer *w, const void *buf, size_t len)
{
    NLSR_FAIL_IF(len > w->data_size - w->written, w->e, NLSR_E_USAGE,
                 "%s: writer got more data than its header declares", w->final_path);
    NLSR_FORWARD(nlsr_pwrite_all(w->fd, buf, len, w->data_start + w->written, w->tmp_path, w->e));
    w->written += len;
    return 0;
}

uint64_t st_writer_data_start(const st_writer *w)
{
    return w->data_start;
}

int st_writer_commit(st_writer *w)
{
    int rc = 0;
    nlsr_err *e = w->e;
    if (w->written != w->data_size) {
        rc = nlsr_fail(e, NLSR_E_USAGE, "%s: %llu data bytes written, header declares %llu",
                       w->final_path, (unsigned long long)w->written,
                       (unsigned long long)w->data_size);
        goto fail;
    }
    if (fsync(w->fd) != 0) {
        rc = -errno;
        nlsr_fail(e, rc, "%s: fsync failed: %s", w->tmp_path, strerror(-rc));
        goto fail;
    }
    close(w->fd);
    w->fd = -1;
    /* The caller checked the destination (outpath.h); only a regular file is replaced. */
    rc = nlsr_tmp_file_commit(e, w->tmp_path, w->final_path, 1);
    if (rc < 0) goto fail;
    free(w->tmp_path);
    w->tmp_path = NULL;
fail:
    st_writer_abort(w);
    return rc;
}

void st_writer_abort(st_writer *w)
{
    if (!w) return;
    if (w->fd >= 0) close(w->fd);
    if (w->tmp_path) unlink(w->tmp_path);
    free(w->tmp_path);
    free(w->final_path);
    free(w);
}
