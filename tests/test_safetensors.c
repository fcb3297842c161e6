/* SPDX-License-Identifier: Apache-2.0 */
/* The safetensors reader, writer and checkpoint opener, called directly.
 *
 * Every malformed file below is written to a temporary folder and opened with st_open (or
 * nlsr_ckpt_open for folders). Each case checks the return code and that the one-line message
 * names the file, the tensor where there is one, and the specific problem: the problem text is
 * the one only the corresponding check in st_read.c / checkpoint.c produces, so removing that
 * check makes its case fail (the file would be accepted, or refused later for another reason).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/common/err.h"
#include "../src/io/file.h"
#include "../src/io/outpath.h"
#include "../src/io/safetensors.h"
#include "nlsr.h"
#include "test.h"

static char tmp_root[4096];
static int n_malformed = 0;

/* ---- helpers -------------------------------------------------------------------------- */

static char *tmp_path(const char *name)
{
    static char buf[8][4200];
    static int k = 0;
    char *p = buf[k++ % 8];
    int r = snprintf(p, sizeof buf[0], "%s/%s", tmp_root, name);
    if (r < 0 || (size_t)r >= sizeof buf[0]) abort();
    return p;
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
        exit(1);
    }
}

/* Writes a safetensors image: the 8-byte length of `hdr` (or `len_override` if nonzero), the
 * header bytes, then `data_size` data bytes (value i & 0xFF at data offset i). */
static void write_image_len(const char *path, const char *hdr, size_t hlen, uint64_t len_field,
                            size_t data_size)
{
    size_t total = 8 + hlen + data_size;
    unsigned char *img = malloc(total);
    if (!img) exit(1);
    for (int i = 0; i < 8; i++) img[i] = (unsigned char)(len_field >> (8 * i));
    memcpy(img + 8, hdr, hlen);
    for (size_t i = 0; i < data_size; i++) img[8 + hlen + i] = (unsigned char)i;
    write_bytes(path, img, total);
    free(img);
}

static void write_image(const char *path, const char *hdr, size_t data_size)
{
    write_image_len(path, hdr, strlen(hdr), strlen(hdr), data_size);
}

static void write_text(const char *path, const char *text)
{
    write_bytes(path, text, strlen(text));
}

/* The message must be one line that names the file, the tensor (if any) and the problem. */
static void check_message(const char *msg, const char *path, const char *tensor,
                          const char *what)
{
    ASSERT_CONTAINS(msg, path);
    if (tensor) {
        char quoted[512];
        snprintf(quoted, sizeof quoted, "'%s'", tensor);
        ASSERT_CONTAINS(msg, quoted);
    }
    ASSERT_CONTAINS(msg, what);
    ASSERT_TRUE(strchr(msg, '\n') == NULL);
}

/* Opens `path` with st_open and expects a refusal. */
static void expect_refused(const char *path, int code, const char *tensor, const char *what)
{
    int before = test_cur_failed_;
    test_cur_failed_ = 0;
    st_file *f = (st_file *)(uintptr_t)1;
    nlsr_err e = {0};
    int rc = st_open(path, &f, &e);
    ASSERT_EQ_I(rc, code);
    ASSERT_EQ_I(e.code, code);
    ASSERT_TRUE(f == (st_file *)(uintptr_t)1); /* *out untouched on failure */
    check_message(e.msg, path, tensor, what);
    if (test_cur_failed_) fprintf(stderr, "  file %s: message \"%s\"\n", path, e.msg);
    test_cur_failed_ |= before;
    n_malformed++;
}

/* ---- malformed single files ------------------------------------------------------------ */

typedef struct bad_header {
    const char *name;   /* file name in the temp folder and test label */
    const char *header; /* JSON text (NUL-free; see test_header_nul for NUL bytes) */
    size_t data_size;
    int code;
    const char *tensor; /* must appear quoted in the message, or NULL */
    const char *what;   /* the problem, as only the responsible check words it */
} bad_header;

#define T_U8_1 "{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}"

static const bad_header bad_headers[] = {
    {"invalid-json", "{\"a\":{\"dtype\":\"U8\",", 0, NLSR_E_FORMAT, NULL, "not valid JSON"},
    {"json-array", "[{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}]", 1, NLSR_E_FORMAT,
     NULL, "header is not a JSON object"},
    {"json-string", "\"safetensors\"", 0, NLSR_E_FORMAT, NULL, "header is not a JSON object"},
    {"bytes-after-object", "{\"a\":" T_U8_1 "}{}", 1, NLSR_E_FORMAT, NULL,
     "bytes after the header's JSON object"},
    {"missing-dtype", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1, NLSR_E_FORMAT, "w",
     "missing 'dtype'"},
    {"missing-shape", "{\"w\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1, NLSR_E_FORMAT, "w",
     "missing 'shape'"},
    {"missing-offsets", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, NLSR_E_FORMAT, "w",
     "missing 'data_offsets'"},
    {"entry-not-object", "{\"w\":[1,2]}", 0, NLSR_E_FORMAT, "w", "entry is not an object"},
    {"empty-name", "{\"\":" T_U8_1 "}", 1, NLSR_E_FORMAT, NULL, "empty name"},
    {"dtype-not-string", "{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
     NLSR_E_FORMAT, "w", "'dtype' is not a string"},
    {"unknown-dtype", "{\"w\":{\"dtype\":\"Q4_K\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
     NLSR_E_DTYPE, "w", "unknown dtype 'Q4_K'"},
    {"lowercase-dtype", "{\"w\":{\"dtype\":\"bf16\",\"shape\":[1],\"data_offsets\":[0,2]}}", 2,
     NLSR_E_DTYPE, "w", "unknown dtype 'bf16'"},
    {"string-shape", "{\"w\":{\"dtype\":\"U8\",\"shape\":\"1\",\"data_offsets\":[0,1]}}", 1,
     NLSR_E_FORMAT, "w", "'shape' is not an array"},
    {"string-in-shape", "{\"w\":{\"dtype\":\"U8\",\"shape\":[\"1\"],\"data_offsets\":[0,1]}}",
     1, NLSR_E_FORMAT, "w", "shape[0] is not a non-negative integer"},
    {"negative-dim", "{\"w\":{\"dtype\":\"U8\",\"shape\":[2,-1],\"data_offsets\":[0,0]}}", 0,
     NLSR_E_FORMAT, "w", "shape[1] is not a non-negative integer"},
    {"too-many-dims",
     "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"
     "\"data_offsets\":[0,1]}}",
     1, NLSR_E_FORMAT, "w", "17 dimensions"},
    {"shape-product-overflow",
     "{\"w\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,2],\"data_offsets\":[0,0]}}",
     0, NLSR_E_FORMAT, "w", "shape product overflows 64 bits"},
    {"byte-size-overflow",
     "{\"w\":{\"dtype\":\"F64\",\"shape\":[4503599627370496,1024],\"data_offsets\":[0,0]}}", 0,
     NLSR_E_FORMAT, "w", "byte size overflows 64 bits"},
    {"offsets-not-array", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":\"0,1\"}}", 1,
     NLSR_E_FORMAT, "w", "'data_offsets' is not an array of two integers"},
    {"three-offsets", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 1,
     NLSR_E_FORMAT, "w", "'data_offsets' is not an array of two integers"},
    {"negative-offset", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}", 1,
     NLSR_E_FORMAT, "w", "data_offsets must be non-negative integers"},
    {"string-offset", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,\"1\"]}}", 1,
     NLSR_E_FORMAT, "w", "data_offsets must be non-negative integers"},
    {"offset-2p53",
     "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],"
     "\"data_offsets\":[9007199254740992,9007199254740993]}}",
     1, NLSR_E_FORMAT, "w", "below 2^53"},
    {"fractional-offset", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,0.5]}}", 1,
     NLSR_E_FORMAT, "w", "number '0.5' in header is not a plain integer"},
    {"integral-fraction-offset",
     "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1.0]}}", 1, NLSR_E_FORMAT, "w",
     "number '1.0' in header is not a plain integer"},
    {"exponent-offset", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1000],\"data_offsets\":[0,1e3]}}",
     1000, NLSR_E_FORMAT, "w", "number '1e3' in header is not a plain integer"},
    {"exponent-dim", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1E0],\"data_offsets\":[0,1]}}", 1,
     NLSR_E_FORMAT, "w", "number '1E0' in header is not a plain integer"},
    {"end-before-begin", "{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,2]}}", 4,
     NLSR_E_FORMAT, "w", "data_offsets end 2 before begin 4"},
    {"span-disagrees",
     "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,8]}}", 8, NLSR_E_FORMAT, "w",
     "data_offsets span 8 bytes but F32 x 4 elements need 16"},
    {"empty-tensor-with-bytes",
     "{\"w\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[0,4]}}", 4, NLSR_E_FORMAT, "w",
     "span 4 bytes but F32 x 0 elements need 0"},
    {"gap",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
     "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[3,5]}}",
     5, NLSR_E_FORMAT, "b", "gap of 1 bytes before its data"},
    {"not-from-zero", "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}", 4,
     NLSR_E_FORMAT, "a", "gap of 2 bytes before its data"},
    {"overlap",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
     "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}",
     4, NLSR_E_FORMAT, "b", "overlaps the previous tensor"},
    {"overlap-same-range",
     "{\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
     "\"a\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
     4, NLSR_E_FORMAT, NULL, "overlaps the previous tensor"},
    {"empty-inside-other",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
     "\"e\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,2]}}",
     4, NLSR_E_FORMAT, "e", "overlaps the previous tensor"},
    {"truncated-data", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 10,
     NLSR_E_FORMAT, "a", "data ends at 16, past the end of the file's 10 data bytes"},
    {"trailing-bytes", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 7,
     NLSR_E_FORMAT, NULL, "3 trailing bytes after the last tensor's data"},
    {"no-tensors-with-data", "{\"__metadata__\":{\"k\":\"v\"}}", 3, NLSR_E_FORMAT, NULL,
     "3 data bytes after a header with no tensors"},
    {"duplicate-name",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
     "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
     2, NLSR_E_FORMAT, "a", "appears twice in the header"},
    {"metadata-number", "{\"__metadata__\":{\"format\":\"pt\",\"step\":12},\"a\":" T_U8_1 "}", 1,
     NLSR_E_FORMAT, NULL, "__metadata__ value of 'step' is not a string"},
    {"metadata-null", "{\"__metadata__\":{\"x\":null},\"a\":" T_U8_1 "}", 1, NLSR_E_FORMAT, NULL,
     "__metadata__ value of 'x' is not a string"},
    {"metadata-nested", "{\"__metadata__\":{\"x\":{\"y\":\"z\"}},\"a\":" T_U8_1 "}", 1,
     NLSR_E_FORMAT, NULL, "__metadata__ value of 'x' is not a string"},
    {"metadata-not-object", "{\"__metadata__\":[\"pt\"],\"a\":" T_U8_1 "}", 1, NLSR_E_FORMAT,
     NULL, "__metadata__ is not an object"},
    {"metadata-twice",
     "{\"__metadata__\":{\"a\":\"1\"},\"a\":" T_U8_1 ",\"__metadata__\":{\"b\":\"2\"}}", 1,
     NLSR_E_FORMAT, NULL, "__metadata__ appears twice"},
    {"metadata-key-twice", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"},\"a\":" T_U8_1 "}", 1,
     NLSR_E_FORMAT, NULL, "__metadata__ key 'k' appears twice"},
};

static void test_bad_headers(void)
{
    for (size_t i = 0; i < sizeof bad_headers / sizeof bad_headers[0]; i++) {
        const bad_header *c = &bad_headers[i];
        char name[256];
        snprintf(name, sizeof name, "%s.safetensors", c->name);
        const char *path = tmp_path(name);
        write_image(path, c->header, c->data_size);
        int before = test_cur_failed_;
        test_cur_failed_ = 0;
        expect_refused(path, c->code, c->tensor, c->what);

        /* The parser alone gives the same verdict and leaves nothing allocated. */
        st_header h;
        nlsr_err e = {0};
        int rc = st_header_parse(c->header, strlen(c->header), c->data_size, "mem", &h, &e);
        ASSERT_EQ_I(rc, c->code);
        ASSERT_CONTAINS(e.msg, c->what);
        ASSERT_TRUE(h.tensors == NULL && h.ntensors == 0 && h.meta == NULL && h.nmeta == 0);
        if (test_cur_failed_) fprintf(stderr, "  in case '%s'\n", c->name);
        test_cur_failed_ |= before;
    }
}

/* Cases that need control over the bytes themselves, not just the JSON text. */
static void test_bad_framing(void)
{
    const char *p;

    p = tmp_path("empty-file.safetensors");
    write_bytes(p, "", 0);
    expect_refused(p, NLSR_E_FORMAT, NULL, "0 bytes, too short for the 8-byte header length");

    p = tmp_path("five-bytes.safetensors");
    write_bytes(p, "\x02\0\0\0\0", 5);
    expect_refused(p, NLSR_E_FORMAT, NULL, "5 bytes, too short");

    /* Header length pointing past the end: the file is cut inside its header. */
    const char *full = "{\"a\":" T_U8_1 "}";
    p = tmp_path("truncated-header.safetensors");
    write_image_len(p, full, 20, strlen(full), 0);
    expect_refused(p, NLSR_E_FORMAT, NULL, "header length 53 is longer than the file (28 bytes)");

    /* A huge length is refused before anything is allocated for it. */
    p = tmp_path("huge-header-length.safetensors");
    write_image_len(p, full, strlen(full), 1ull << 62, 1);
    expect_refused(p, NLSR_E_FORMAT, NULL,
                   "header length 4611686018427387904 exceeds the 100000000-byte limit");

    p = tmp_path("header-length-over-cap.safetensors");
    write_image_len(p, full, strlen(full), NLSR_ST_MAX_HEADER + 1, 1);
    expect_refused(p, NLSR_E_FORMAT, NULL, "header length 100000001 exceeds the 100000000");

    /* Exactly at the cap is allowed by the cap: it is then refused only for not fitting. */
    p = tmp_path("header-length-at-cap.safetensors");
    write_image_len(p, full, strlen(full), NLSR_ST_MAX_HEADER, 1);
    expect_refused(p, NLSR_E_FORMAT, NULL, "header length 100000000 is longer than the file");

    p = tmp_path("zero-header-length.safetensors");
    write_image_len(p, "", 0, 0, 0);
    expect_refused(p, NLSR_E_FORMAT, NULL, "not valid JSON");

    /* Invalid UTF-8: a stray continuation byte, an overlong '/', a UTF-16 surrogate, a code
     * point above U+10FFFF, and a sequence cut by the end of the header. */
    static const struct {
        const char *name, *hdr;
        const char *byte;
    } utf8[] = {
        {"utf8-stray.safetensors", "{\"w\x80\":{}}", "(byte 3)"},
        {"utf8-overlong.safetensors", "{\"w\xc0\xaf\":{}}", "(byte 3)"},
        {"utf8-surrogate.safetensors", "{\"\xed\xa0\x80\":{}}", "(byte 2)"},
        {"utf8-above-max.safetensors", "{\"\xf4\x90\x80\x80\":{}}", "(byte 2)"},
        {"utf8-cut.safetensors", "{}  \xe2\x82", "(byte 4)"},
    };
    for (size_t i = 0; i < sizeof utf8 / sizeof utf8[0]; i++) {
        p = tmp_path(utf8[i].name);
        write_image(p, utf8[i].hdr, 0);
        expect_refused(p, NLSR_E_FORMAT, NULL, "header is not valid UTF-8");
        expect_refused(p, NLSR_E_FORMAT, NULL, utf8[i].byte);
        n_malformed--; /* one file, two looks */
    }

    /* A NUL byte would silently cut the header short for a C string parser. */
    static const char nul_hdr[] = "{\"a\":" T_U8_1 "}\0{\"b\":1}";
    p = tmp_path("nul-byte.safetensors");
    write_image_len(p, nul_hdr, sizeof nul_hdr - 1, sizeof nul_hdr - 1, 1);
    expect_refused(p, NLSR_E_FORMAT, NULL, "header contains a NUL byte");

    /* A folder is not a file. */
    p = tmp_path("folder.safetensors");
    mkdir(p, 0755);
    expect_refused(p, NLSR_E_FORMAT, NULL, "not a regular file");

    /* A missing file passes -errno through. */
    p = tmp_path("missing.safetensors");
    expect_refused(p, -ENOENT, NULL, "cannot open");
}

/* ---- malformed checkpoints -------------------------------------------------------------- */

static const char *mkfolder(const char *name)
{
    const char *d = tmp_path(name);
    if (mkdir(d, 0755) != 0) {
        fprintf(stderr, "mkdir %s: %s\n", d, strerror(errno));
        exit(1);
    }
    return d;
}

static void write_in(const char *dir, const char *name, const char *hdr, size_t data_size)
{
    char p[4400];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    write_image(p, hdr, data_size);
}

static void text_in(const char *dir, const char *name, const char *text)
{
    char p[4400];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    write_text(p, text);
}

#define HDR_A "{\"a\":" T_U8_1 "}"
#define HDR_B "{\"b\":" T_U8_1 "}"
#define HDR_AB                                                                                    \
    "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"                             \
    "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}"

/* Opens `dir` as a checkpoint and expects a refusal whose message names `file` (the index or
 * shard at fault), the tensor if any, and the problem. */
static void expect_ckpt_refused(const char *dir, const char *file, int code, const char *tensor,
                                const char *what)
{
    int before = test_cur_failed_;
    test_cur_failed_ = 0;
    nlsr_ctx *ctx = nlsr_ctx_create();
    ASSERT_TRUE(ctx != NULL);
    if (!ctx) return;
    nlsr_ckpt *ck = NULL;
    int rc = nlsr_ckpt_open(ctx, dir, &ck);
    ASSERT_EQ_I(rc, code);
    ASSERT_TRUE(ck == NULL);
    char path[4400];
    snprintf(path, sizeof path, "%s%s%s", dir, file[0] ? "/" : "", file);
    check_message(nlsr_ctx_error(ctx), path, tensor, what);
    if (test_cur_failed_) fprintf(stderr, "  folder %s: \"%s\"\n", dir, nlsr_ctx_error(ctx));
    test_cur_failed_ |= before;
    nlsr_ckpt_free(ck);
    nlsr_ctx_free(ctx);
    n_malformed++;
}

#define INDEX_FILE "model.safetensors.index.json"

static void test_bad_checkpoints(void)
{
    const char *d;

    d = mkfolder("ck-missing-shard");
    write_in(d, "s1.safetensors", HDR_A, 1);
    text_in(d, INDEX_FILE,
            "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"}}");
    expect_ckpt_refused(d, INDEX_FILE, NLSR_E_NOTFOUND, NULL,
                        "names shard s2.safetensors, which does not exist");

    d = mkfolder("ck-index-lists-absent");
    write_in(d, "s1.safetensors", HDR_A, 1);
    text_in(d, INDEX_FILE,
            "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s1.safetensors\"}}");
    expect_ckpt_refused(d, INDEX_FILE, NLSR_E_FORMAT, "b",
                        "lists tensor 'b' in s1.safetensors, which lacks it");

    d = mkfolder("ck-shard-unlisted");
    write_in(d, "s1.safetensors", HDR_AB, 2);
    text_in(d, INDEX_FILE, "{\"weight_map\":{\"a\":\"s1.safetensors\"}}");
    expect_ckpt_refused(d, INDEX_FILE, NLSR_E_FORMAT, "b",
                        "shard s1.safetensors holds tensor 'b', which the index does not list");

    d = mkfolder("ck-wrong-shard");
    write_in(d, "s1.safetensors", HDR_A, 1);
    write_in(d, "s2.safetensors", HDR_B, 1);
    text_in(d, INDEX_FILE,
            "{\"weight_map\":{\"a\":\"s2.safetensors\",\"b\":\"s1.safetensors\"}}");
    expect_ckpt_refused(d, INDEX_FILE, NLSR_E_FORMAT, "a",
                        "lists tensor 'a' in s2.safetensors, but it is in s1.safetensors");

    d = mkfolder("ck-tensor-in-two-shards");
    write_in(d, "s1.safetensors", HDR_A, 1);
    write_in(d, "s2.safetensors", HDR_AB, 2);
    text_in(d, INDEX_FILE,
            "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"}}");
    expect_ckpt_refused(d, "", NLSR_E_FORMAT, "a",
                        "is in both s1.safetensors and s2.safetensors");

    d = mkfolder("ck-index-twice");
    write_in(d, "s1.safetensors", HDR_A, 1);
    text_in(d, INDEX_FILE,
            "{\"weight_map\":{\"a\":\"s1.safetensors\",\"a\":\"s1.safetensors\"}}");
    expect_ckpt_refused(d, INDEX_FILE, NLSR_E_FORMAT, "a", "weight_map lists 'a' twice");

    d = mkfolder("ck-shard-path-escape");
    write_in(d, "s1.safetensors", HDR_A, 1);
    text_in(d, INDEX_FILE, "{\"weight_map\":{\"a\":\"../ck-index-twice/s1.safetensors\"}}");
    expect_ckpt_refused(d, INDEX_FILE, NLSR_E_FORMAT, "a", "is not a plain shard file name");

    d = mkfolder("ck-index-no-weight-map");
    write_in(d, "s1.safetensors", HDR_A, 1);
    text_in(d, INDEX_FILE, "{\"metadata\":{\"total_size\":1}}");
    expect_ckpt_refused(d, INDEX_FILE, NLSR_E_FORMAT, NULL, "missing or invalid 'weight_map'");

    d = mkfolder("ck-weight-map-array");
    write_in(d, "s1.safetensors", HDR_A, 1);
    text_in(d, INDEX_FILE, "{\"weight_map\":[\"s1.safetensors\"]}");
    expect_ckpt_refused(d, INDEX_FILE, NLSR_E_FORMAT, NULL, "missing or invalid 'weight_map'");

    d = mkfolder("ck-index-not-json");
    write_in(d, "s1.safetensors", HDR_A, 1);
    text_in(d, INDEX_FILE, "weight_map: a");
    expect_ckpt_refused(d, INDEX_FILE, NLSR_E_FORMAT, NULL, "not a JSON object");

    /* A malformed shard refuses the whole checkpoint, naming the shard. */
    d = mkfolder("ck-bad-shard");
    write_in(d, "s1.safetensors", HDR_A, 1);
    write_in(d, "s2.safetensors", HDR_B, 3);
    text_in(d, INDEX_FILE,
            "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"}}");
    expect_ckpt_refused(d, "s2.safetensors", NLSR_E_FORMAT, NULL,
                        "2 trailing bytes after the last tensor's data");

    d = mkfolder("ck-single-bad");
    write_in(d, "model.safetensors", "{\"a\":{\"dtype\":\"X9\",\"shape\":[],\"data_offsets\":[0,1]}}",
             1);
    expect_ckpt_refused(d, "model.safetensors", NLSR_E_DTYPE, "a", "unknown dtype 'X9'");

    d = mkfolder("ck-adapter-no-config");
    write_in(d, "adapter_model.safetensors", HDR_A, 1);
    expect_ckpt_refused(d, "", NLSR_E_NOTFOUND, NULL,
                        "has adapter_model.safetensors but no adapter_config.json");

    d = mkfolder("ck-adapter-bad-r");
    write_in(d, "adapter_model.safetensors", HDR_A, 1);
    text_in(d, "adapter_config.json", "{\"r\":2.5,\"lora_alpha\":16}");
    expect_ckpt_refused(d, "adapter_config.json", NLSR_E_FORMAT, NULL,
                        "'r' is missing or not a positive integer");

    d = mkfolder("ck-empty-folder");
    expect_ckpt_refused(d, "", NLSR_E_NOTFOUND, NULL, "no model.safetensors");

    expect_ckpt_refused(tmp_path("ck-does-not-exist"), "", NLSR_E_NOTFOUND, NULL,
                        "no such file or folder");
}

/* ---- valid edge cases ------------------------------------------------------------------- */

static st_file *open_ok(const char *path)
{
    st_file *f = NULL;
    nlsr_err e = {0};
    int rc = st_open(path, &f, &e);
    ASSERT_EQ_I(rc, 0);
    if (rc != 0) fprintf(stderr, "  %s: %s\n", path, e.msg);
    return rc == 0 ? f : NULL;
}

static const st_tensor *find(const st_file *f, const char *name)
{
    long i = st_find(&f->h, name);
    ASSERT_TRUE(i >= 0);
    return i >= 0 ? &f->h.tensors[i] : NULL;
}

static void test_valid_edge_cases(void)
{
    /* Leading and trailing spaces, tensors listed against offset order, an empty [0, 4]
     * tensor sharing its offset with the next one, a rank-0 scalar, metadata. */
    const char *hdr =
        "   \t{\"z\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
        "\"__metadata__\":{\"format\":\"pt\",\"note\":\"caf\\u00e9 \\\"q\\\"\"},"
        "\"m\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[8,20]},"
        "\"e\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[8,8]},"
        "\"a\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[4,8]}}\n  \r ";
    const char *path = tmp_path("valid-edges.safetensors");
    write_image(path, hdr, 20);
    st_file *f = open_ok(path);
    if (!f) return;
    ASSERT_EQ_U(f->file_size, 8 + strlen(hdr) + 20);
    ASSERT_EQ_U(f->data_start, 8 + strlen(hdr));
    ASSERT_EQ_U(f->h.ntensors, 4);
    /* Sorted by name. */
    ASSERT_STR_EQ(f->h.tensors[0].name, "a");
    ASSERT_STR_EQ(f->h.tensors[1].name, "e");
    ASSERT_STR_EQ(f->h.tensors[2].name, "m");
    ASSERT_STR_EQ(f->h.tensors[3].name, "z");
    const st_tensor *z = find(f, "z"), *e = find(f, "e"), *m = find(f, "m"), *a = find(f, "a");
    if (z) {
        ASSERT_EQ_I(z->ndim, 0);
        ASSERT_EQ_U(z->numel, 1);
        ASSERT_EQ_I(z->dtype, NLSR_DTYPE_F32);
        ASSERT_EQ_U(z->begin, 0);
        ASSERT_EQ_U(z->end, 4);
    }
    if (e) {
        ASSERT_EQ_I(e->ndim, 2);
        ASSERT_EQ_U(e->shape[0], 0);
        ASSERT_EQ_U(e->shape[1], 4);
        ASSERT_EQ_U(e->numel, 0);
        ASSERT_EQ_U(e->begin, 8);
        ASSERT_EQ_U(e->end, 8);
    }
    if (m) {
        ASSERT_EQ_I(m->dtype, NLSR_DTYPE_BF16);
        ASSERT_EQ_U(m->numel, 6);
        ASSERT_EQ_U(m->begin, 8);
    }
    if (a) ASSERT_EQ_I(a->dtype, NLSR_DTYPE_I32);
    ASSERT_TRUE(st_find(&f->h, "missing") == -1);
    ASSERT_TRUE(st_find(&f->h, "__metadata__") == -1);
    /* Metadata kept, in file order, escapes decoded. */
    ASSERT_EQ_U(f->h.nmeta, 2);
    if (f->h.nmeta == 2) {
        ASSERT_STR_EQ(f->h.meta[0].key, "format");
        ASSERT_STR_EQ(f->h.meta[0].value, "pt");
        ASSERT_STR_EQ(f->h.meta[1].key, "note");
        ASSERT_STR_EQ(f->h.meta[1].value, "caf\xc3\xa9 \"q\"");
    }
    st_close(f);

    /* No tensors at all, no data: valid (safetensors writes this for an empty dict). */
    path = tmp_path("valid-empty.safetensors");
    write_image(path, "{}", 0);
    f = open_ok(path);
    if (f) {
        ASSERT_EQ_U(f->h.ntensors, 0);
        ASSERT_EQ_U(f->h.nmeta, 0);
        st_close(f);
    }

    /* Several empty tensors at one offset, at the end of the data, and UTF-8 names sorted
     * bytewise (uppercase before lowercase, multibyte last). */
    path = tmp_path("valid-names.safetensors");
    write_image(path,
                "{\"\xc3\xa9t\xc3\xa9\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                "\"b\":{\"dtype\":\"BOOL\",\"shape\":[0],\"data_offsets\":[2,2]},"
                "\"B\":{\"dtype\":\"F64\",\"shape\":[0,0],\"data_offsets\":[2,2]},"
                "\"esc\\u00e9\\n\":{\"dtype\":\"F8_E4M3\",\"shape\":[3],\"data_offsets\":[2,5]},"
                "\"z\":{\"dtype\":\"I64\",\"shape\":[0],\"data_offsets\":[5,5]}}",
                5);
    f = open_ok(path);
    if (f) {
        ASSERT_EQ_U(f->h.ntensors, 5);
        if (f->h.ntensors == 5) {
            ASSERT_STR_EQ(f->h.tensors[0].name, "B");
            ASSERT_STR_EQ(f->h.tensors[1].name, "b");
            ASSERT_STR_EQ(f->h.tensors[2].name, "esc\xc3\xa9\n");
            ASSERT_STR_EQ(f->h.tensors[3].name, "z");
            ASSERT_STR_EQ(f->h.tensors[4].name, "\xc3\xa9t\xc3\xa9");
        }
        st_close(f);
    }

    /* Every dtype the format defines is known, with its size. */
    static const struct {
        const char *name;
        nlsr_dtype t;
        size_t size;
    } dt[] = {{"F64", NLSR_DTYPE_F64, 8},   {"F32", NLSR_DTYPE_F32, 4},
              {"F16", NLSR_DTYPE_F16, 2},   {"BF16", NLSR_DTYPE_BF16, 2},
              {"I8", NLSR_DTYPE_I8, 1},     {"U8", NLSR_DTYPE_U8, 1},
              {"I16", NLSR_DTYPE_I16, 2},   {"U16", NLSR_DTYPE_U16, 2},
              {"I32", NLSR_DTYPE_I32, 4},   {"U32", NLSR_DTYPE_U32, 4},
              {"I64", NLSR_DTYPE_I64, 8},   {"U64", NLSR_DTYPE_U64, 8},
              {"BOOL", NLSR_DTYPE_BOOL, 1}, {"F8_E4M3", NLSR_DTYPE_F8_E4M3, 1},
              {"F8_E5M2", NLSR_DTYPE_F8_E5M2, 1}};
    for (size_t i = 0; i < sizeof dt / sizeof dt[0]; i++) {
        char h[200];
        snprintf(h, sizeof h, "{\"x\":{\"dtype\":\"%s\",\"shape\":[3],\"data_offsets\":[0,%zu]}}",
                 dt[i].name, 3 * dt[i].size);
        st_header hh;
        nlsr_err perr = {0};
        int rc = st_header_parse(h, strlen(h), 3 * dt[i].size, "mem", &hh, &perr);
        ASSERT_EQ_I(rc, 0);
        if (rc == 0) {
            ASSERT_EQ_I(hh.tensors[0].dtype, dt[i].t);
            ASSERT_STR_EQ(nlsr_dtype_name(dt[i].t), dt[i].name);
            st_header_clear(&hh);
        } else {
            fprintf(stderr, "  dtype %s: %s\n", dt[i].name, perr.msg);
        }
    }

    /* Largest offsets the format allows (just below 2^53) parse exactly. */
    st_header hh;
    nlsr_err e2 = {0};
    const char *big = "{\"x\":{\"dtype\":\"U8\",\"shape\":[9007199254740991],"
                      "\"data_offsets\":[0,9007199254740991]}}";
    ASSERT_EQ_I(st_header_parse(big, strlen(big), 9007199254740991ull, "mem", &hh, &e2), 0);
    if (hh.ntensors == 1) {
        ASSERT_EQ_U(hh.tensors[0].end, 9007199254740991ull);
        ASSERT_EQ_U(hh.tensors[0].numel, 9007199254740991ull);
    }
    st_header_clear(&hh);
}

/* ---- writer round trips ----------------------------------------------------------------- */

static void test_serialize_round_trip(void)
{
    static const uint64_t s_scalar[1] = {0}, s_vec[1] = {5}, s_mat[2] = {3, 4},
                          s_empty[2] = {0, 4}, s_4d[4] = {2, 1, 3, 2};
    const st_wtensor t[] = {
        {"model.layers.0.self_attn.q_proj.weight", NLSR_DTYPE_BF16, 2, s_mat},
        {"scalar", NLSR_DTYPE_F32, 0, s_scalar},
        {"empty", NLSR_DTYPE_F32, 2, s_empty},
        {"quote\"back\\slash", NLSR_DTYPE_F16, 1, s_vec},
        {"ctrl\x01\t\n", NLSR_DTYPE_I64, 1, s_vec},
        {"caf\xc3\xa9 \xf0\x9f\x98\x80", NLSR_DTYPE_F8_E5M2, 4, s_4d},
        {"A", NLSR_DTYPE_BOOL, 1, s_vec},
        {"u64", NLSR_DTYPE_U64, 2, s_mat},
    };
    const size_t n = sizeof t / sizeof t[0];
    const st_meta meta[] = {{"format", "pt"}, {"z \"key\"", "line1\nline2\\"}, {"a", ""}};
    for (size_t nm = 0; nm <= 3; nm += 3) {
        char *json = NULL;
        size_t len = 0;
        uint64_t ds = 0;
        nlsr_err e = {0};
        ASSERT_EQ_I(st_header_serialize(t, n, meta, nm, &json, &len, &ds, &e), 0);
        if (!json) return;
        ASSERT_EQ_U((8 + len) % 8, 0); /* data section 8-byte aligned */
        uint64_t expect_ds = 0;
        for (size_t i = 0; i < n; i++) {
            uint64_t numel = 1;
            for (int d = 0; d < t[i].ndim; d++) numel *= t[i].shape[d];
            expect_ds += numel * nlsr_dtype_size(t[i].dtype);
        }
        ASSERT_EQ_U(ds, expect_ds);
        st_header h;
        int rc = st_header_parse(json, len, ds, "mem", &h, &e);
        ASSERT_EQ_I(rc, 0);
        if (rc != 0) {
            fprintf(stderr, "  %s\n", e.msg);
            free(json);
            return;
        }
        ASSERT_EQ_U(h.ntensors, n);
        /* Offsets follow the given order with no gap; everything else is kept exactly. */
        uint64_t off = 0;
        for (size_t i = 0; i < n && h.ntensors == n; i++) {
            long k = st_find(&h, t[i].name);
            ASSERT_TRUE(k >= 0);
            if (k < 0) continue;
            const st_tensor *p = &h.tensors[k];
            ASSERT_EQ_I(p->dtype, t[i].dtype);
            ASSERT_EQ_I(p->ndim, t[i].ndim);
            for (int d = 0; d < t[i].ndim; d++) ASSERT_EQ_U(p->shape[d], t[i].shape[d]);
            ASSERT_EQ_U(p->begin, off);
            off = p->end;
        }
        ASSERT_EQ_U(off, ds);
        ASSERT_EQ_U(h.nmeta, nm);
        for (size_t i = 0; i < nm && h.nmeta == nm; i++) {
            ASSERT_STR_EQ(h.meta[i].key, meta[i].key);
            ASSERT_STR_EQ(h.meta[i].value, meta[i].value);
        }
        st_header_clear(&h);
        free(json);
    }

    /* A shape whose product overflows is refused, not wrapped. */
    static const uint64_t huge[3] = {1ull << 32, 1ull << 32, 2};
    const st_wtensor bad = {"w", NLSR_DTYPE_U8, 3, huge};
    char *json = NULL;
    size_t len = 0;
    uint64_t ds = 0;
    nlsr_err e = {0};
    ASSERT_EQ_I(st_header_serialize(&bad, 1, NULL, 0, &json, &len, &ds, &e), NLSR_E_USAGE);
    ASSERT_CONTAINS(e.msg, "'w'");
    ASSERT_TRUE(json == NULL);
}

static int read_at(const char *path, uint64_t off, void *buf, size_t len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t r = pread(fd, buf, len, (off_t)off);
    close(fd);
    return r == (ssize_t)len ? 0 : -1;
}

static void test_writer_round_trip(void)
{
    static const uint64_t s1[1] = {3}, s2[2] = {2, 2}, s0[1] = {0};
    const st_wtensor t[] = {{"w2", NLSR_DTYPE_F32, 2, s2},
                            {"e", NLSR_DTYPE_BF16, 1, s0},
                            {"w1", NLSR_DTYPE_U8, 1, s1}};
    const st_meta meta[] = {{"format", "pt"}};
    unsigned char data[19];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (unsigned char)(0xA0 + i);
    const char *path = tmp_path("written.safetensors");
    st_writer *w = NULL;
    nlsr_err e = {0};
    ASSERT_EQ_I(st_writer_begin(path, t, 3, meta, 1, &w, &e), 0);
    if (!w) return;
    ASSERT_TRUE(!nlsr_exists(path)); /* nothing under the final name before commit */
    uint64_t ds = st_writer_data_start(w);
    ASSERT_EQ_U(ds % 8, 0);
    ASSERT_EQ_I(st_writer_write(w, data, 5), 0);
    ASSERT_EQ_I(st_writer_write(w, data + 5, 14), 0);
    /* One byte more than declared is refused. */
    ASSERT_EQ_I(st_writer_write(w, data, 1), NLSR_E_USAGE);
    ASSERT_EQ_I(st_writer_commit(w), 0);
    st_file *f = open_ok(path);
    if (!f) return;
    ASSERT_EQ_U(f->data_start, ds);
    ASSERT_EQ_U(f->file_size, ds + 19);
    ASSERT_EQ_U(f->h.ntensors, 3);
    ASSERT_EQ_U(f->h.nmeta, 1);
    const st_tensor *w2 = find(f, "w2"), *w1 = find(f, "w1"), *em = find(f, "e");
    if (w2 && w1 && em) {
        ASSERT_EQ_U(w2->begin, 0);
        ASSERT_EQ_U(w2->end, 16);
        ASSERT_EQ_U(em->begin, 16);
        ASSERT_EQ_U(em->end, 16);
        ASSERT_EQ_U(w1->begin, 16);
        ASSERT_EQ_U(w1->end, 19);
    }
    unsigned char back[19];
    ASSERT_EQ_I(read_at(path, ds, back, sizeof back), 0);
    ASSERT_TRUE(memcmp(back, data, sizeof data) == 0);
    st_close(f);

    /* Short data: commit refuses, and neither the final file nor the temporary remains. */
    const char *p2 = tmp_path("short.safetensors");
    nlsr_err e2 = {0};
    w = NULL;
    ASSERT_EQ_I(st_writer_begin(p2, t, 3, NULL, 0, &w, &e2), 0);
    if (!w) return;
    ASSERT_EQ_I(st_writer_write(w, data, 18), 0);
    ASSERT_EQ_I(st_writer_commit(w), NLSR_E_USAGE);
    ASSERT_CONTAINS(e2.msg, "18 data bytes written, header declares 19");
    ASSERT_TRUE(!nlsr_exists(p2));
    char tmpname[4400];
    snprintf(tmpname, sizeof tmpname, "%s.nlsr-tmp-%ld", p2, (long)getpid());
    ASSERT_TRUE(!nlsr_exists(tmpname));

    /* Abort leaves nothing either. */
    w = NULL;
    ASSERT_EQ_I(st_writer_begin(p2, t, 3, NULL, 0, &w, &e2), 0);
    st_writer_abort(w);
    st_writer_abort(NULL);
    ASSERT_TRUE(!nlsr_exists(p2) && !nlsr_exists(tmpname));
}

/* A valid sharded checkpoint built here opens with its tensors in name order across shards,
 * with the absolute offsets of their data. */
static void test_sharded_ok(void)
{
    const char *d = mkfolder("ck-ok");
    write_in(d, "s1.safetensors", HDR_B, 1);
    write_in(d, "s2.safetensors", "{\"c\":" T_U8_1 ",\"a\":{\"dtype\":\"U8\",\"shape\":[2],"
                                  "\"data_offsets\":[1,3]}}  ",
             3);
    text_in(d, INDEX_FILE,
            "{\"metadata\":{\"total_size\":999},\"weight_map\":{\"c\":\"s2.safetensors\","
            "\"b\":\"s1.safetensors\",\"a\":\"s2.safetensors\"}}");
    nlsr_ctx *ctx = nlsr_ctx_create();
    nlsr_ckpt *ck = NULL;
    int rc = nlsr_ckpt_open(ctx, d, &ck);
    ASSERT_EQ_I(rc, 0);
    if (rc != 0) {
        fprintf(stderr, "  %s\n", nlsr_ctx_error(ctx));
        nlsr_ctx_free(ctx);
        return;
    }
    ASSERT_EQ_U(nlsr_ckpt_tensor_count(ck), 3);
    ASSERT_EQ_U(nlsr_ckpt_shard_count(ck), 2);
    ASSERT_EQ_I(nlsr_ckpt_get_kind(ck), NLSR_CKPT_FULL);
    const char *names[3] = {"a", "b", "c"};
    const size_t hlen2 = strlen("{\"c\":" T_U8_1 ",\"a\":{\"dtype\":\"U8\",\"shape\":[2],"
                                "\"data_offsets\":[1,3]}}  ");
    const uint64_t offs[3] = {8 + hlen2 + 1, 8 + strlen(HDR_B), 8 + hlen2};
    for (size_t i = 0; i < 3; i++) {
        nlsr_tensor_info info;
        nlsr_ckpt_tensor_info(ck, i, &info);
        ASSERT_STR_EQ(info.name, names[i]);
        ASSERT_EQ_U(info.offset, offs[i]);
        size_t k = 99;
        ASSERT_EQ_I(nlsr_ckpt_find(ck, names[i], &k), 0);
        ASSERT_EQ_U(k, i);
    }
    /* Data offset i holds byte value i (write_image): a's elements are data bytes 1 and 2. */
    double v[2] = {0, 0};
    ASSERT_EQ_I(nlsr_ckpt_read_f64(ctx, ck, 0, 0, 2, v), 0);
    ASSERT_EQ_I(v[0], 1);
    ASSERT_EQ_I(v[1], 2);
    size_t k;
    ASSERT_EQ_I(nlsr_ckpt_find(ck, "d", &k), NLSR_E_NOTFOUND);
    nlsr_ckpt_free(ck);
    nlsr_ckpt_free(NULL);
    nlsr_ctx_free(ctx);
}

/* ---- Hugging Face hub cache layouts and other formats -------------------------------------- */

/* Opens `path` under `revision` (NULL: none) and returns the code; *msg gets the message,
 * *resolved the resolved path and *tensor the first tensor's name (when it opened). */
static int open_rev(const char *path, const char *revision, char *msg, size_t cap,
                    char *resolved, char *tensor)
{
    nlsr_ctx *ctx = nlsr_ctx_create();
    if (!ctx) exit(1);
    nlsr_ckpt *ck = NULL;
    int rc = nlsr_ctx_set_revision(ctx, revision);
    if (rc == 0) rc = nlsr_ckpt_open(ctx, path, &ck);
    snprintf(msg, cap, "%s", nlsr_ctx_error(ctx));
    resolved[0] = tensor[0] = '\0';
    if (rc == 0) {
        nlsr_tensor_info ti;
        nlsr_ckpt_tensor_info(ck, 0, &ti);
        snprintf(resolved, 4400, "%s", nlsr_ckpt_resolved_path(ck));
        snprintf(tensor, 64, "%s", ti.name);
        ASSERT_STR_EQ(nlsr_ckpt_path(ck), path); /* messages keep naming the path as given */
    }
    nlsr_ckpt_free(ck);
    nlsr_ctx_free(ctx);
    return rc;
}

static void link_in(const char *dir, const char *name, const char *target)
{
    char p[4400];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    if (symlink(target, p) != 0) {
        fprintf(stderr, "symlink %s: %s\n", p, strerror(errno));
        exit(1);
    }
}

/* A repository folder with two revisions whose one file holds tensor "a" (revision 1) or "b"
 * (revision 2): refs/main and refs/refs/pr/1 name them, snapshots/ link into blobs/. */
static void test_hub_layouts(void)
{
    const char *R = mkfolder("models--org--name");
    char d[4400], msg[1024], res[4400], t[64], want[4400];
#define C1 "aaaaaaa1111111111111111111111111111111111"
#define C2 "aaaaaaa2222222222222222222222222222222222"
    snprintf(d, sizeof d, "%s/blobs", R);
    mkdir(d, 0755);
    write_in(d, "blob1", "{\"a\":" T_U8_1 "}", 1);
    write_in(d, "blob2", HDR_B, 1);
    snprintf(d, sizeof d, "%s/refs", R);
    mkdir(d, 0755);
    text_in(d, "main", C1 "\n");
    /* huggingface_hub keeps revision "refs/pr/1" in refs/refs/pr/1 */
    snprintf(d, sizeof d, "%s/refs/refs", R);
    mkdir(d, 0755);
    snprintf(d, sizeof d, "%s/refs/refs/pr", R);
    mkdir(d, 0755);
    text_in(d, "1", C2);
    snprintf(d, sizeof d, "%s/snapshots", R);
    mkdir(d, 0755);
    snprintf(d, sizeof d, "%s/snapshots/" C1, R);
    mkdir(d, 0755);
    link_in(d, "model.safetensors", "../../blobs/blob1");
    snprintf(d, sizeof d, "%s/snapshots/" C2, R);
    mkdir(d, 0755);
    link_in(d, "model.safetensors", "../../blobs/blob2");

    /* the repository folder: refs/main, a ref with an inner slash, a commit, a unique prefix */
    const char *revs[][2] = {{NULL, "a"}, {"main", "a"}, {"refs/pr/1", "b"}, {C2, "b"},
                             {"aaaaaaa2", "b"}, {"aaaaaaa1111", "a"}};
    for (size_t i = 0; i < sizeof revs / sizeof revs[0]; i++) {
        ASSERT_EQ_I(open_rev(R, revs[i][0], msg, sizeof msg, res, t), 0);
        ASSERT_STR_EQ(t, revs[i][1]);
        snprintf(want, sizeof want, "%s/snapshots/%s", R, t[0] == 'a' ? C1 : C2);
        ASSERT_STR_EQ(res, want);
        if (test_cur_failed_) fprintf(stderr, "  revision %s: %s\n", revs[i][0], msg);
    }
    /* a snapshot folder: read through its link; the path as given is what is read */
    snprintf(d, sizeof d, "%s/snapshots/" C2, R);
    ASSERT_EQ_I(open_rev(d, NULL, msg, sizeof msg, res, t), 0);
    ASSERT_STR_EQ(t, "b");
    ASSERT_STR_EQ(res, d);
    /* ... with its own revision, or one its repository lacks (meant for another input) */
    ASSERT_EQ_I(open_rev(d, "refs/pr/1", msg, sizeof msg, res, t), 0);
    ASSERT_EQ_I(open_rev(d, "v9", msg, sizeof msg, res, t), 0);
    /* ... but not with another revision of its own repository */
    ASSERT_EQ_I(open_rev(d, "main", msg, sizeof msg, res, t), NLSR_E_USAGE);
    ASSERT_CONTAINS(msg, d);
    ASSERT_CONTAINS(msg, "give the repository folder");
    /* unknown and ambiguous revisions, names that would leave refs/ */
    ASSERT_EQ_I(open_rev(R, "v9", msg, sizeof msg, res, t), NLSR_E_NOTFOUND);
    ASSERT_CONTAINS(msg, "no revision 'v9'");
    ASSERT_CONTAINS(msg, C2);
    ASSERT_EQ_I(open_rev(R, "aaaaaaa", msg, sizeof msg, res, t), NLSR_E_USAGE);
    ASSERT_CONTAINS(msg, "start of 2 snapshot names");
    const char *bad[] = {"", "/main", "main/", "refs//main", "../refs/main", "refs/./main",
                         "..", "a\\b", "a\nb"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ASSERT_EQ_I(open_rev(R, bad[i], msg, sizeof msg, res, t), NLSR_E_USAGE);
        ASSERT_CONTAINS(msg, "is not a ref name or commit hash");
    }
    /* refs/main naming a snapshot that is not there, then no refs/main at all */
    snprintf(d, sizeof d, "%s/refs", R);
    text_in(d, "main", "0123abc");
    ASSERT_EQ_I(open_rev(R, NULL, msg, sizeof msg, res, t), NLSR_E_NOTFOUND);
    snprintf(want, sizeof want,
             "%s: refs/main names 0123abc, which has no snapshots/0123abc/ folder", R);
    ASSERT_CONTAINS(msg, want);
    text_in(d, "main", "../x");
    ASSERT_EQ_I(open_rev(R, NULL, msg, sizeof msg, res, t), NLSR_E_FORMAT);
    ASSERT_CONTAINS(msg, "refs/main holds '../x', not a commit hash");
    snprintf(d, sizeof d, "%s/refs/main", R);
    unlink(d);
    ASSERT_EQ_I(open_rev(R, NULL, msg, sizeof msg, res, t), NLSR_E_NOTFOUND);
    ASSERT_CONTAINS(msg, "without refs/main");
    /* a link to a blob that is not there (an unfinished download) */
    snprintf(d, sizeof d, "%s/blobs/blob2", R);
    unlink(d);
    snprintf(d, sizeof d, "%s/snapshots/" C2, R);
    ASSERT_EQ_I(open_rev(d, NULL, msg, sizeof msg, res, t), NLSR_E_NOTFOUND);
    ASSERT_CONTAINS(msg, "model.safetensors is a link to ../../blobs/blob2, which does not exist");
    /* a plain folder: the path as given */
    const char *p = mkfolder("plain");
    write_in(p, "model.safetensors", HDR_B, 1);
    ASSERT_EQ_I(open_rev(p, "main", msg, sizeof msg, res, t), 0);
    ASSERT_STR_EQ(res, p);
#undef C1
#undef C2
}

/* Files of other formats are named by their magic bytes; a folder of PyTorch pickles gets the
 * conversion hint. */
static void test_other_formats(void)
{
    static const struct {
        const char *name, *bytes;
        size_t len;
        const char *what;
    } f[] = {
        {"pytorch_model.bin", "PK\x03\x04\x14\x00\x00\x00\x08\x00", 10, "(zip archive"},
        {"p2.pt", "\x80\x02\x8a\x0alR\xfc\x9c", 8, "legacy pickle, protocol 2"},
        {"p4.pth", "\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}", 12,
         "legacy pickle, protocol 4"},
        {"p5.pt", "\x80\x05\x95\x10\x00\x00\x00\x00\x00\x00\x00}", 12,
         "legacy pickle, protocol 5"},
        {"m.gguf", "GGUF\x03\x00\x00\x00\x02\x00\x00\x00", 12, "GGUF file (llama.cpp)"},
        {"a.npy", "\x93NUMPY\x01\x00v\x00{'descr'", 18, "NumPy .npy array"},
        {"m.h5", "\x89HDF\r\n\x1a\n\x00\x00\x00\x00", 12, "HDF5 file"},
        {"junk", "not a safetensors file, only text", 33, "not a safetensors file: header length"},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        const char *p = tmp_path(f[i].name);
        write_bytes(p, f[i].bytes, f[i].len);
        st_file *sf = NULL;
        nlsr_err e = {0, ""};
        ASSERT_EQ_I(st_open(p, &sf, &e), NLSR_E_FORMAT);
        ASSERT_TRUE(sf == NULL);
        char head[4400];
        snprintf(head, sizeof head, "%s: ", p);
        ASSERT_TRUE(strncmp(e.msg, head, strlen(head)) == 0);
        ASSERT_CONTAINS(e.msg, f[i].what);
        ASSERT_TRUE(strchr(e.msg, '\n') == NULL);
        if (i < 4) {
            snprintf(head, sizeof head, "save_file(torch.load('%s'), 'model.safetensors')", p);
            ASSERT_CONTAINS(e.msg, head);
        }
        if (test_cur_failed_) fprintf(stderr, "  %s: \"%s\"\n", f[i].name, e.msg);
    }
    /* a protocol-1 "pickle" is no known format: the plain message */
    const char *p = tmp_path("p1");
    write_bytes(p, "\x80\x01\xff\xff\xff\xff\xff\xff", 8);
    st_file *sf = NULL;
    nlsr_err e = {0, ""};
    ASSERT_EQ_I(st_open(p, &sf, &e), NLSR_E_FORMAT);
    ASSERT_CONTAINS(e.msg, "not a safetensors file: header length");
    /* folders of pickles */
    const char *d = mkfolder("bins");
    text_in(d, "config.json", "{}");
    text_in(d, "pytorch_model.bin.index.json", "{}");
    char msg[1024], res[4400], t[64], want[4400];
    ASSERT_EQ_I(open_rev(d, NULL, msg, sizeof msg, res, t), NLSR_E_FORMAT);
    snprintf(want, sizeof want,
             "%s: holds PyTorch pickle weights (pytorch_model.bin.index.json)", d);
    ASSERT_CONTAINS(msg, want);
    snprintf(want, sizeof want, "M.from_pretrained('%s').save_pretrained('converted')", d);
    ASSERT_CONTAINS(msg, want);
    d = mkfolder("adapter-bin");
    text_in(d, "adapter_config.json", "{\"r\": 4}");
    text_in(d, "adapter_model.bin", "PK");
    ASSERT_EQ_I(open_rev(d, NULL, msg, sizeof msg, res, t), NLSR_E_FORMAT);
    snprintf(want, sizeof want,
             "save_file(torch.load('%s/adapter_model.bin'), 'adapter_model.safetensors')\"` "
             "beside a copy of adapter_config.json",
             d);
    ASSERT_CONTAINS(msg, want);
}

int main(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmp_root, sizeof tmp_root, "%s/nlsr-test-st-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 1;
    }
    RUN_TEST(test_bad_headers);
    RUN_TEST(test_bad_framing);
    RUN_TEST(test_bad_checkpoints);
    RUN_TEST(test_valid_edge_cases);
    RUN_TEST(test_serialize_round_trip);
    RUN_TEST(test_writer_round_trip);
    RUN_TEST(test_sharded_ok);
    RUN_TEST(test_hub_layouts);
    RUN_TEST(test_other_formats);
    printf("%d malformed files refused with the expected message\n", n_malformed);
    (void)nlsr_tree_remove(tmp_root);
    return test_finish();
}
