/* SPDX-License-Identifier: Apache-2.0 */
/* The validating safetensors reader. Every check happens here, before any tensor byte is read:
 * several C readers of this format shipped out-of-bounds bugs from unchecked offsets or a
 * wrapped shape product, so nothing from the header is trusted until it has passed. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/dtype_table.h"
#include "file.h"
#include "safetensors.h"

#define MAX_SAFE_INT 9007199254740992.0 /* 2^53: doubles are exact integers below it */

/* UTF-8 as RFC 3629 defines it: no overlongs, no surrogates, nothing above U+10FFFF. */
static long utf8_invalid_at(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) { i++; continue; }
        else if (c >= 0xC2 && c <= 0xDF) k = 1;
        else if (c == 0xE0) { k = 2; lo = 0xA0; }
        else if (c >= 0xE1 && c <= 0xEC) k = 2;
        else if (c == 0xED) { k = 2; hi = 0x9F; }
        else if (c >= 0xEE && c <= 0xEF) k = 2;
        else if (c == 0xF0) { k = 3; lo = 0x90; }
        else if (c >= 0xF1 && c <= 0xF3) k = 3;
        else if (c == 0xF4) { k = 3; hi = 0x8F; }
        else return (long)i;
        for (size_t j = 1; j <= k; j++) {
            if (i + j >= n) return (long)i;
            unsigned b = s[i + j];
            unsigned l = j == 1 ? lo : 0x80, h = j == 1 ? hi : 0xBF;
            if (b < l || b > h) return (long)i;
        }
        i += k + 1;
    }
    return -1;
}

/* cJSON accepts 1e3 and 1.0 as numbers and keeps no source text, but safetensors offsets and
 * shapes are plain integers. This lexical pass walks the header once, outside strings, and
 * refuses any number token with a fraction or exponent, naming the top-level key it sits in. */
static int check_plain_integers(const char *s, size_t n, const char *path, nlsr_err *e)
{
    int depth = 0, in_str = 0, expect_key = 0;
    size_t key_start = 0, key_len = 0, str_start = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\') i++;
            else if (c == '"') {
                in_str = 0;
                if (depth == 1 && expect_key) {
                    key_start = str_start;
                    key_len = i - str_start;
                    expect_key = 0;
                }
            }
            continue;
        }
        if (c == '"') { in_str = 1; str_start = i + 1; continue; }
        if (c == '{' || c == '[') { depth++; if (depth == 1) expect_key = 1; continue; }
        if (c == '}' || c == ']') { depth--; continue; }
        if (c == ',' && depth == 1) { expect_key = 1; continue; }
        if (c == '-' || (c >= '0' && c <= '9')) {
            size_t j = i;
            int plain = 1;
            while (j < n && (s[j] == '-' || s[j] == '+' || s[j] == '.' || s[j] == 'e' ||
                             s[j] == 'E' || (s[j] >= '0' && s[j] <= '9'))) {
                if (s[j] == '.' || s[j] == 'e' || s[j] == 'E' || s[j] == '+') plain = 0;
                j++;
            }
            if (!plain) {
                int tl = (int)(j - i > 40 ? 40 : j - i);
                int kl = (int)(key_len > 200 ? 200 : key_len);
                return nlsr_fail(e, NLSR_E_FORMAT,
                                 "%s: tensor '%.*s': number '%.*s' in header is not a plain "
                                 "integer",
                                 path, kl, s + key_start, tl, s + i);
            }
            i = j - 1;
        }
    }
    return 0;
}

/* Reads a JSON number that must be a non-negative integer below 2^53. */
static int get_u53(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0.0) || d >= MAX_SAFE_INT || d != (double)(uint64_t)d) return -1;
    *out = (uint64_t)d;
    return 0;
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int cmp_tensor_offset(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

void st_header_clear(st_header *h)
{
    for (size_t i = 0; i < h->ntensors; i++) free(h->tensors[i].name);
    free(h->tensors);
    for (size_t i = 0; i < h->nmeta; i++) {
        free(h->meta[i].key);
        free(h->meta[i].value);
    }
    free(h->meta);
    memset(h, 0, sizeof *h);
}

static int parse_metadata(const cJSON *m, const char *path, st_header *h, nlsr_err *e)
{
    if (!cJSON_IsObject(m))
        return nlsr_fail(e, NLSR_E_FORMAT, "%s: __metadata__ is not an object", path);
    size_t n = 0;
    for (const cJSON *it = m->child; it; it = it->next) n++;
    if (n == 0) return 0;
    h->meta = calloc(n, sizeof *h->meta);
    if (!h->meta) return nlsr_fail(e, -ENOMEM, "%s: out of memory", path);
    for (const cJSON *it = m->child; it; it = it->next) {
        if (!cJSON_IsString(it))
            return nlsr_fail(e, NLSR_E_FORMAT,
                             "%s: __metadata__ value of '%.200s' is not a string", path,
                             it->string);
        for (size_t j = 0; j < h->nmeta; j++)
            if (strcmp(h->meta[j].key, it->string) == 0)
                return nlsr_fail(e, NLSR_E_FORMAT, "%s: __metadata__ key '%.200s' appears twice",
                                 path, it->string);
        st_meta *mm = &h->meta[h->nmeta];
        mm->key = strdup(it->string);
        mm->value = strdup(it->valuestring);
        if (!mm->key || !mm->value) {
            free(mm->key);
            free(mm->value);
            return nlsr_fail(e, -ENOMEM, "%s: out of memory", path);
        }
        h->nmeta++;
    }
    return 0;
}

static int parse_tensor(const cJSON *it, const char *path, st_tensor *t, nlsr_err *e)
{
    const char *name = it->string;
    NLSR_FAIL_IF(name[0] == '\0', e, NLSR_E_FORMAT, "%s: a tensor has an empty name", path);
    NLSR_FAIL_IF(!cJSON_IsObject(it), e, NLSR_E_FORMAT,
                 "%s: tensor '%.200s': entry is not an object", path, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(it, "shape");
    const cJSON *of = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
    NLSR_FAIL_IF(!dt, e, NLSR_E_FORMAT, "%s: tensor '%.200s': missing 'dtype'", path, name);
    NLSR_FAIL_IF(!sh, e, NLSR_E_FORMAT, "%s: tensor '%.200s': missing 'shape'", path, name);
    NLSR_FAIL_IF(!of, e, NLSR_E_FORMAT, "%s: tensor '%.200s': missing 'data_offsets'", path,
                 name);
    NLSR_FAIL_IF(!cJSON_IsString(dt), e, NLSR_E_FORMAT,
                 "%s: tensor '%.200s': 'dtype' is not a string", path, name);
    int d = nlsr_dtype_from_name(dt->valuestring);
    NLSR_FAIL_IF(d < 0, e, NLSR_E_DTYPE, "%s: tensor '%.200s': unknown dtype '%.40s'", path,
                 name, dt->valuestring);
    t->dtype = (nlsr_dtype)d;
    NLSR_FAIL_IF(!cJSON_IsArray(sh), e, NLSR_E_FORMAT,
                 "%s: tensor '%.200s': 'shape' is not an array", path, name);
    int nd = cJSON_GetArraySize(sh);
    NLSR_FAIL_IF(nd > NLSR_ST_MAX_NDIM, e, NLSR_E_FORMAT,
                 "%s: tensor '%.200s': %d dimensions, at most %d supported", path, name, nd,
                 NLSR_ST_MAX_NDIM);
    t->ndim = nd;
    uint64_t numel = 1;
    int k = 0;
    for (const cJSON *v = sh->child; v; v = v->next, k++) {
        uint64_t dim;
        NLSR_FAIL_IF(get_u53(v, &dim) != 0, e, NLSR_E_FORMAT,
                     "%s: tensor '%.200s': shape[%d] is not a non-negative integer", path,
                     name, k);
        t->shape[k] = dim;
        NLSR_FAIL_IF(dim != 0 && numel > UINT64_MAX / dim, e, NLSR_E_FORMAT,
                     "%s: tensor '%.200s': shape product overflows 64 bits", path, name);
        numel *= dim;
    }
    t->numel = numel;
    NLSR_FAIL_IF(!cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2, e, NLSR_E_FORMAT,
                 "%s: tensor '%.200s': 'data_offsets' is not an array of two integers", path,
                 name);
    NLSR_FAIL_IF(get_u53(of->child, &t->begin) != 0 || get_u53(of->child->next, &t->end) != 0,
                 e, NLSR_E_FORMAT,
                 "%s: tensor '%.200s': data_offsets must be non-negative integers below 2^53",
                 path, name);
    NLSR_FAIL_IF(t->end < t->begin, e, NLSR_E_FORMAT,
                 "%s: tensor '%.200s': data_offsets end %llu before begin %llu", path, name,
                 (unsigned long long)t->end, (unsigned long long)t->begin);
    size_t es = nlsr_dtype_size(t->dtype);
    NLSR_FAIL_IF(numel > UINT64_MAX / es, e, NLSR_E_FORMAT,
                 "%s: tensor '%.200s': byte size overflows 64 bits", path, name);
    NLSR_FAIL_IF(t->end - t->begin != numel * es, e, NLSR_E_FORMAT,
                 "%s: tensor '%.200s': data_offsets span %llu bytes but %s x %llu elements "
                 "need %llu",
                 path, name, (unsigned long long)(t->end - t->begin), nlsr_dtype_name(t->dtype),
                 (unsigned long long)numel, (unsigned long long)(numel * es));
    t->name = strdup(name);
    NLSR_FAIL_IF(!t->name, e, -ENOMEM, "%s: out of memory", path);
    return 0;
}

static int check_tiling(st_header *h, uint64_t data_size, const char *path, nlsr_err *e)
{
    int rc = 0;
    if (h->ntensors == 0) {
        NLSR_FAIL_IF(data_size != 0, e, NLSR_E_FORMAT,
                     "%s: %llu data bytes after a header with no tensors", path,
                     (unsigned long long)data_size);
        return 0;
    }
    st_tensor **by_off = malloc(h->ntensors * sizeof *by_off);
    NLSR_FAIL_IF(!by_off, e, -ENOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < h->ntensors; i++) by_off[i] = &h->tensors[i];
    qsort(by_off, h->ntensors, sizeof *by_off, cmp_tensor_offset);
    uint64_t pos = 0;
    for (size_t i = 0; i < h->ntensors && rc == 0; i++) {
        const st_tensor *t = by_off[i];
        if (t->begin > pos)
            rc = nlsr_fail(e, NLSR_E_FORMAT,
                           "%s: tensor '%.200s': gap of %llu bytes before its data (begins at "
                           "%llu, previous data ends at %llu)",
                           path, t->name, (unsigned long long)(t->begin - pos),
                           (unsigned long long)t->begin, (unsigned long long)pos);
        else if (t->begin < pos)
            rc = nlsr_fail(e, NLSR_E_FORMAT,
                           "%s: tensor '%.200s': data [%llu, %llu) overlaps the previous "
                           "tensor's (ending at %llu)",
                           path, t->name, (unsigned long long)t->begin,
                           (unsigned long long)t->end, (unsigned long long)pos);
        pos = t->end;
    }
    if (rc == 0 && pos > data_size)
        rc = nlsr_fail(e, NLSR_E_FORMAT,
                       "%s: tensor '%.200s': data ends at %llu, past the end of the file's %llu "
                       "data bytes",
                       path, by_off[h->ntensors - 1]->name, (unsigned long long)pos,
                       (unsigned long long)data_size);
    if (rc == 0 && pos < data_size)
        rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: %llu trailing bytes after the last tensor's data",
                       path, (unsigned long long)(data_size - pos));
    free(by_off);
    return rc;
}

int st_header_parse(const char *json, size_t len, uint64_t data_size, const char *path,
                    st_header *out, nlsr_err *e)
{
    memset(out, 0, sizeof *out);
    NLSR_FAIL_IF(memchr(json, '\0', len) != NULL, e, NLSR_E_FORMAT,
                 "%s: header contains a NUL byte", path);
    long bad = utf8_invalid_at((const unsigned char *)json, len);
    NLSR_FAIL_IF(bad >= 0, e, NLSR_E_FORMAT, "%s: header is not valid UTF-8 (byte %ld)", path,
                 bad);
    NLSR_FORWARD(check_plain_integers(json, len, path, e));

    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    NLSR_FAIL_IF(!root, e, NLSR_E_FORMAT, "%s: header is not valid JSON (near byte %ld)", path,
                 (long)((cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() : json) - json));
    int rc = 0;
    for (const char *p = end; p && p < json + len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: bytes after the header's JSON object (byte %ld)",
                           path, (long)(p - json));
            goto done;
        }
    if (!cJSON_IsObject(root)) {
        rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: header is not a JSON object", path);
        goto done;
    }
    size_t n = 0;
    for (const cJSON *it = root->child; it; it = it->next)
        if (strcmp(it->string, "__metadata__") != 0) n++;
    if (n > 0) {
        out->tensors = calloc(n, sizeof *out->tensors);
        if (!out->tensors) {
            rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", path);
            goto done;
        }
    }
    int seen_meta = 0;
    for (const cJSON *it = root->child; it && rc == 0; it = it->next) {
        if (strcmp(it->string, "__metadata__") == 0) {
            if (seen_meta++)
                rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: __metadata__ appears twice", path);
            else
                rc = parse_metadata(it, path, out, e);
            continue;
        }
        rc = parse_tensor(it, path, &out->tensors[out->ntensors], e);
        if (rc == 0) out->ntensors++;
    }
    if (rc < 0) goto done;
    /* cJSON keeps duplicate keys; sorted names make them adjacent. (No tensors: tensors is
     * NULL, which qsort must not be given even with a count of 0.) */
    if (out->ntensors > 1)
        qsort(out->tensors, out->ntensors, sizeof *out->tensors, cmp_tensor_name);
    for (size_t i = 1; i < out->ntensors; i++)
        if (strcmp(out->tensors[i - 1].name, out->tensors[i].name) == 0) {
            rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: tensor '%.200s' appears twice in the header",
                           path, out->tensors[i].name);
            goto done;
        }
    rc = check_tiling(out, data_size, path, e);
done:
    cJSON_Delete(root);
    if (rc < 0) st_header_clear(out);
    return rc;
}

long st_find(const st_header *h, const char *name)
{
    size_t lo = 0, hi = h->ntensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(h->tensors[mid].name, name);
        if (c == 0) return (long)mid;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

/* Files people mistake for safetensors checkpoints, by their magic bytes: only consulted when
 * the first 8 bytes make no sense as a safetensors header length, so a real safetensors file
 * is never turned away. 0 when none matches. */
static int foreign_format(const char *path, const unsigned char b[8], nlsr_err *e)
{
    static const char convert[] =
        "convert it first, e.g. `python -c \"import torch; from safetensors.torch import "
        "save_file; save_file(torch.load('%s'), 'model.safetensors')\"`";
    char how[sizeof convert + 512];
    snprintf(how, sizeof how, convert, path);
    if (memcmp(b, "PK\x03\x04", 4) == 0)
        return nlsr_fail(e, NLSR_E_FORMAT,
                         "%s: this is a PyTorch pickle checkpoint (zip archive, torch.save's "
                         "format), not safetensors; %s",
                         path, how);
    if (b[0] == 0x80 && b[1] >= 2 && b[1] <= 5)
        return nlsr_fail(e, NLSR_E_FORMAT,
                         "%s: this is a PyTorch pickle checkpoint (legacy pickle, protocol %d), "
                         "not safetensors; %s",
                         path, b[1], how);
    if (memcmp(b, "GGUF", 4) == 0)
        return nlsr_fail(e, NLSR_E_FORMAT,
                         "%s: this is a GGUF file (llama.cpp), not safetensors; nlsr reads "
                         "safetensors checkpoints",
                         path);
    if (memcmp(b, "\x93NUMPY", 6) == 0)
        return nlsr_fail(e, NLSR_E_FORMAT,
                         "%s: this is a NumPy .npy array, not safetensors; nlsr reads "
                         "safetensors checkpoints",
                         path);
    if (memcmp(b, "\x89HDF\r\n\x1a\n", 8) == 0)
        return nlsr_fail(e, NLSR_E_FORMAT,
                         "%s: this is an HDF5 file (Keras/TensorFlow .h5), not safetensors; nlsr "
                         "reads safetensors checkpoints",
                         path);
    return 0;
}

int st_open(const char *path, st_file **out, nlsr_err *e)
{
    int rc = 0;
    char *hdr = NULL;
    st_file *f = calloc(1, sizeof *f);
    if (!f) return nlsr_fail(e, -ENOMEM, "%s: out of memory", path);
    f->fd = -1;
    f->path = strdup(path);
    if (!f->path) {
        rc = nlsr_fail(e, -ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    /* Never a blocking open: a FIFO in place of a shard must not hang a sweep. */
    rc = nlsr_open_regular(e, path, O_RDONLY, 1, &f->fd);
    if (rc < 0) goto fail;
    struct stat st;
    if (fstat(f->fd, &st) != 0) {
        rc = -errno;
        nlsr_fail(e, rc, "%s: cannot stat: %s", path, strerror(-rc));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = nlsr_fail(e, NLSR_E_FORMAT, "%s: not a regular file", path);
        goto fail;
    }
    f->file_size = (uint64_t)st.st_size;
    if (f->file_size < 8) {
        rc = nlsr_fail(e, NLSR_E_FORMAT,
                       "%s: %llu bytes, too short for the 8-byte header length", path,
                       (unsigned long long)f->file_size);
        goto fail;
    }
    unsigned char lenb[8];
    rc = nlsr_pread_all(f->fd, lenb, 8, 0, path, e);
    if (rc < 0) goto fail;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | lenb[i];
    if (n > NLSR_ST_MAX_HEADER || n > f->file_size - 8) {
        rc = foreign_format(path, lenb, e);
        if (rc < 0) goto fail;
    }
    if (n > NLSR_ST_MAX_HEADER) {
        rc = nlsr_fail(e, NLSR_E_FORMAT,
                       "%s: not a safetensors file: header length %llu exceeds the %llu-byte "
                       "limit",
                       path, (unsigned long long)n, NLSR_ST_MAX_HEADER);
        goto fail;
    }
    if (n > f->file_size - 8) {
        rc = nlsr_fail(e, NLSR_E_FORMAT,
                       "%s: not a safetensors file: header length %llu is longer than the file "
                       "(%llu bytes)",
                       path, (unsigned long long)n, (unsigned long long)f->file_size);
        goto fail;
    }
    hdr = malloc(n ? (size_t)n : 1);
    if (!hdr) {
        rc = nlsr_fail(e, -ENOMEM, "%s: out of memory for a %llu-byte header", path,
                       (unsigned long long)n);
        goto fail;
    }
    rc = nlsr_pread_all(f->fd, hdr, (size_t)n, 8, path, e);
    if (rc < 0) goto fail;
    f->data_start = 8 + n;
    rc = st_header_parse(hdr, (size_t)n, f->file_size - f->data_start, path, &f->h, e);
    if (rc < 0) goto fail;
    free(hdr);
    *out = f;
    return 0;
fail:
    free(hdr);
    st_close(f);
    return rc;
}

void st_close(st_file *f)
{
    if (!f) return;
    if (f->fd >= 0) close(f->fd);
    st_header_clear(&f->h);
    free(f->path);
    free(f);
}
