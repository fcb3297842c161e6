/* SPDX-License-Identifier: Apache-2.0 */
/* `nlsr synth`: synthetic Llama checkpoints with real tensor names and shapes, for tests and
 * benchmarks at sizes no fixture can have.
 *
 * Every value is a pure function of (seed, tensor, element), so the three roles of a seed are
 * related exactly as fixtures/README.md describes, any element can be recomputed alone, and
 * the output is the same whatever the budget or backend:
 *   base      w = W0
 *   aligned   w = W0 + A          (A = Ua Va^T, rank 4, on target modules)
 *   finetuned w = W0 + s_L A + T  (T = Ut Vt^T, rank 8; s_L = 0.1 in layers L % 3 != 1, the
 *                                  "safety-broken" ones, else 1)
 * computed in f32 in a fixed order (no fused multiply-add) and stored with RNE. Uniform values
 * come from a splitmix64 hash of a per-tensor key and the element index, 16 bits each.
 *
 * Files are written through the sink (io_sink.h): memory is the writer's ring plus the
 * low-rank factors of one tensor, whatever the model size. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/ctx.h"
#include "../compute/convert.h"
#include "../io/file.h"
#include "../io/io_sink.h"
#include "../io/safetensors.h"
#include "../plan/planner.h"
#include "../plan/progress.h"
#include "realign_full.h"

#define STEP 2048u
#define RANK_A 4
#define RANK_T 8
/* Amplitudes: weights ~ U(-0.04, 0.04); the alignment delta about a tenth of that, the task
 * delta a little smaller, all well above bf16's resolution at these magnitudes. */
#define AMP_W 0.04f
#define AMP_EMB 0.02f
#define AMP_NORM 0.05f
#define AMP_A 0.003f
#define AMP_T 0.002f
#define BROKEN_KEEP 0.1f

typedef struct preset {
    const char *name;
    uint64_t vocab, hidden, inter, heads, kv, head_dim;
    int layers;
    double rope_theta;
    uint64_t max_pos;
    int bos, eos;
} preset;

static const preset presets[] = {
    {"tiny", 320, 96, 232, 4, 2, 24, 3, 10000.0, 128, 1, 2},
    {"llama-8b", 128256, 4096, 14336, 32, 8, 128, 32, 500000.0, 8192, 128000, 128001},
    {"llama-70b", 128256, 8192, 28672, 64, 8, 128, 80, 500000.0, 8192, 128000, 128001},
};

enum { K_EMBED, K_NORM, K_TARGET };

typedef struct stensor {
    char name[96];
    int kind;
    int layer;          /* -1 outside the layers */
    int ndim;
    uint64_t shape[2];
    uint64_t nbytes;
    uint32_t shard;
    uint64_t id;        /* position in model order: the hash key */
} stensor;

static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t key_of(uint64_t seed, uint64_t id, uint64_t what)
{
    return mix64(seed * 0x9E3779B97F4A7C15ull + id * 0xD1B54A32D192ED03ull + what + 1);
}

/* Hot loops: -O3's vectorizer (the build's -O2 uses GCC's very cheap cost model, which leaves
 * these loops scalar) and an AVX2 clone chosen at load time where the CPU has it. No FMA is
 * enabled either way, so results are the same bits on every machine. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(NLSR_NO_CLONES)
#define NLSR_HOT __attribute__((optimize("O3"), target_clones("avx2", "default")))
#else
#define NLSR_HOT
#endif

/* n uniforms in [-1, 1) for elements first .. first+n-1 under key: element i takes the
 * (i % 4)-th 16 bits of hash(key, i / 4), so the hashes of whole quads, laid out as
 * little-endian 16-bit integers, are the values in order. */
NLSR_HOT static void uniforms(uint64_t key, uint64_t first, size_t n, float *out)
{
    uint64_t h[STEP / 4 + 2];
    int16_t v[STEP + 8];
    for (size_t at = 0; at < n; at += STEP) {
        size_t m = n - at < STEP ? n - at : STEP;
        uint64_t f = first + at;
        uint64_t q0 = f >> 2, q1 = (f + m + 3) >> 2;
        size_t nq = (size_t)(q1 - q0);
        for (size_t q = 0; q < nq; q++) h[q] = mix64(key + (q0 + q) * 0x9E3779B97F4A7C15ull);
        memcpy(v, h, nq * 8);
        const int16_t *src = v + (f & 3u);
        for (size_t i = 0; i < m; i++) out[at + i] = (float)src[i] * 0x1p-15f;
    }
}

static void add_tensor(stensor *v, size_t *n, const char *name, int kind, int layer, int ndim,
                       uint64_t d0, uint64_t d1, size_t esz)
{
    stensor *t = &v[*n];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->kind = kind;
    t->layer = layer;
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->nbytes = d0 * (ndim == 2 ? d1 : 1) * esz;
    t->id = *n;
    (*n)++;
}

/* The model's tensors in the order transformers saves them. */
static size_t model_tensors(const preset *P, int layers, size_t esz, stensor *v)
{
    size_t n = 0;
    char nm[96];
    uint64_t H = P->hidden, I = P->inter, q = P->heads * P->head_dim, kv = P->kv * P->head_dim;
    add_tensor(v, &n, "model.embed_tokens.weight", K_EMBED, -1, 2, P->vocab, H, esz);
    for (int L = 0; L < layers; L++) {
        static const char *const attn[4] = {"q_proj", "k_proj", "v_proj", "o_proj"};
        for (int k = 0; k < 4; k++) {
            snprintf(nm, sizeof nm, "model.layers.%d.self_attn.%s.weight", L, attn[k]);
            uint64_t out = k == 0 ? q : k < 3 ? kv : H, in = k == 3 ? q : H;
            add_tensor(v, &n, nm, K_TARGET, L, 2, out, in, esz);
        }
        static const char *const mlp[3] = {"gate_proj", "up_proj", "down_proj"};
        for (int k = 0; k < 3; k++) {
            snprintf(nm, sizeof nm, "model.layers.%d.mlp.%s.weight", L, mlp[k]);
            add_tensor(v, &n, nm, K_TARGET, L, 2, k < 2 ? I : H, k < 2 ? H : I, esz);
        }
        snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm.weight", L);
        add_tensor(v, &n, nm, K_NORM, L, 1, H, 0, esz);
        snprintf(nm, sizeof nm, "model.layers.%d.post_attention_layernorm.weight", L);
        add_tensor(v, &n, nm, K_NORM, L, 1, H, 0, esz);
    }
    add_tensor(v, &n, "model.norm.weight", K_NORM, -1, 1, H, 0, esz);
    add_tensor(v, &n, "lm_head.weight", K_EMBED, -1, 2, P->vocab, H, esz);
    return n;
}

typedef struct synth_run {
    nlsr_ctx *ctx;
    const nlsr_synth_params *p;
    nlsr_sink *sink;
    float *fac;          /* factors of the current tensor: room for the largest, in the arena */
    uint64_t fac_bytes;
} synth_run;

/* The low-rank factors of target t for this role, scaled so that w = W0 + sum_k U[i][k] V_k[j]:
 * U is out x R (row-major), V is R arrays of `in`. R = 0 for the base. */
typedef struct factors {
    int R;
    const float *U, *V;
} factors;

static int make_factors(synth_run *S, const stensor *t, factors *f)
{
    f->R = S->p->role == NLSR_SYNTH_BASE ? 0 : S->p->role == NLSR_SYNTH_ALIGNED ? RANK_A
                                                                               : RANK_A + RANK_T;
    if (f->R == 0 || t->kind != K_TARGET) {
        f->R = 0;
        return 0;
    }
    uint64_t out = t->shape[0], in = t->shape[1];
    uint64_t need = (out + in) * (uint64_t)f->R * sizeof(float);
    NLSR_FAIL_IF(need > S->fac_bytes, &S->ctx->err, NLSR_E_USAGE,
                 "synth: factors of '%s' need %llu bytes, %llu planned", t->name,
                 (unsigned long long)need, (unsigned long long)S->fac_bytes);
    float *U = S->fac, *V = S->fac + out * (uint64_t)f->R;
    uint64_t seed = S->p->seed;
    float keep = (t->layer % 3 != 1) ? BROKEN_KEEP : 1.0f;
    float sa = S->p->role == NLSR_SYNTH_FINETUNED ? AMP_A * keep : AMP_A;
    for (int k = 0; k < f->R; k++) {
        int task = k >= RANK_A;
        float amp = task ? AMP_T : sa;
        uint64_t kk = (uint64_t)(task ? k - RANK_A : k) + (task ? 100u : 0u);
        float col[STEP];
        for (uint64_t i = 0; i < out; i += STEP) {
            size_t m = out - i < STEP ? (size_t)(out - i) : STEP;
            uniforms(key_of(seed, t->id, 1000 + kk), i, m, col);
            for (size_t j = 0; j < m; j++) U[(i + j) * (uint64_t)f->R + (uint64_t)k] = col[j] * amp;
        }
        uniforms(key_of(seed, t->id, 2000 + kk), 0, (size_t)in, V + (uint64_t)k * in);
    }
    f->U = U;
    f->V = V;
    return 0;
}

/* Values of elements first .. first+n-1 (n <= STEP) of tensor t, in f32. */
NLSR_HOT static void values(const synth_run *S, const stensor *t, const factors *f, uint64_t first,
                   size_t n, float *w)
{
    uint64_t seed = S->p->seed;
    uniforms(key_of(seed, t->id, 0), first, n, w);
    float amp = t->kind == K_TARGET ? AMP_W : t->kind == K_EMBED ? AMP_EMB : AMP_NORM;
    float off = t->kind == K_NORM ? 1.0f : 0.0f;
    for (size_t i = 0; i < n; i++) w[i] = off + w[i] * amp;
    if (f->R == 0) return;
    uint64_t in = t->shape[1];
    for (size_t i = 0; i < n;) {
        uint64_t row = (first + i) / in, col = (first + i) % in;
        size_t m = in - col < n - i ? (size_t)(in - col) : n - i;
        const float *u = f->U + row * (uint64_t)f->R;
        float acc[STEP];
        const float *v0 = f->V + col;
        for (size_t j = 0; j < m; j++) acc[j] = u[0] * v0[j];
        for (int k = 1; k < f->R; k++) {
            const float *vk = f->V + (uint64_t)k * in + col;
            float uk = u[k];
            for (size_t j = 0; j < m; j++) acc[j] = acc[j] + uk * vk[j];
        }
        for (size_t j = 0; j < m; j++) w[i + j] = w[i + j] + acc[j];
        i += m;
    }
}

static inline uint16_t rne_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)((u & 0x7FFFFFFFu) > 0x7F800000u ? ((u >> 16) | 0x40u) : r);
}

NLSR_HOT static void store(nlsr_dtype dt, const float *w, unsigned char *o, size_t n)
{
    if (dt == NLSR_DTYPE_BF16) {
        for (size_t i = 0; i < n; i++) {
            uint16_t h = rne_bf16(w[i]);
            memcpy(o + 2 * i, &h, 2);
        }
    } else {
        nlsr_from_f32(dt, w, o, n);
    }
}

static int write_tensor(synth_run *S, const stensor *t)
{
    factors f;
    NLSR_FORWARD(make_factors(S, t, &f));
    size_t esz = nlsr_dtype_size(S->p->dtype);
    uint64_t numel = t->nbytes / esz;
    float w[STEP];
    for (uint64_t at = 0; at < numel;) {
        unsigned char *o;
        size_t avail;
        NLSR_FORWARD(nlsr_sink_reserve(S->sink, &o, &avail));
        size_t m = avail / esz;
        if (m == 0) { /* an element across two writer buffers (cannot happen at 8-byte starts) */
            unsigned char one[8];
            values(S, t, &f, at, 1, w);
            store(S->p->dtype, w, one, 1);
            NLSR_FORWARD(nlsr_sink_write(S->sink, one, esz));
            at++;
            continue;
        }
        if (m > STEP) m = STEP;
        if (m > numel - at) m = (size_t)(numel - at);
        values(S, t, &f, at, m, w);
        store(S->p->dtype, w, o, m);
        NLSR_FORWARD(nlsr_sink_commit(S->sink, m * esz));
        at += m;
    }
    return 0;
}

static int write_shard(synth_run *S, const char *dir, const char *name, const stensor *v,
                       size_t n, uint32_t shard)
{
    nlsr_err *e = &S->ctx->err;
    st_wtensor *wt = malloc((n ? n : 1) * sizeof *wt);
    const stensor **ord = malloc((n ? n : 1) * sizeof *ord);
    char *hdr = NULL, *path = NULL;
    int rc = 0;
    if (!wt || !ord) {
        rc = nlsr_fail(e, -ENOMEM, "synth: out of memory");
        goto done;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (v[i].shard == shard) {
            ord[k] = &v[i];
            wt[k] = (st_wtensor){v[i].name, S->p->dtype, v[i].ndim, v[i].shape};
            k++;
        }
    st_meta meta = {"format", "pt"};
    size_t hlen = 0;
    uint64_t ds = 0;
    rc = st_header_serialize(wt, k, &meta, 1, &hdr, &hlen, &ds, e);
    if (rc < 0) goto done;
    path = nlsr_path_join(dir, name);
    rc = path ? nlsr_sink_begin(S->sink, path, 8 + hlen + ds)
              : nlsr_fail(e, -ENOMEM, "out of memory");
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    if (rc == 0) rc = nlsr_sink_write(S->sink, len8, 8);
    if (rc == 0) rc = nlsr_sink_write(S->sink, hdr, hlen);
    for (size_t i = 0; i < k && rc == 0; i++) rc = write_tensor(S, ord[i]);
    if (rc == 0) rc = nlsr_sink_end(S->sink);
done:
    free(path);
    free(hdr);
    free(ord);
    free(wt);
    return rc;
}

static int write_text(nlsr_ctx *ctx, const char *dir, const char *name, const char *text)
{
    char *path = nlsr_path_join(dir, name);
    NLSR_FAIL_IF(!path, &ctx->err, -ENOMEM, "out of memory");
    int rc = 0;
    FILE *f = fopen(path, "wx");
    if (!f) {
        rc = -errno;
        nlsr_fail(&ctx->err, rc, "%s: cannot create: %s", path, strerror(-rc));
    } else {
        size_t len = strlen(text);
        if (fwrite(text, 1, len, f) != len || fflush(f) != 0 || fsync(fileno(f)) != 0) {
            rc = -errno;
            nlsr_fail(&ctx->err, rc, "%s: write failed: %s", path, strerror(-rc));
        }
        if (fclose(f) != 0 && rc == 0) {
            rc = -errno;
            nlsr_fail(&ctx->err, rc, "%s: close failed: %s", path, strerror(-rc));
        }
        if (rc == 0) ctx->bytes_written += len;
    }
    free(path);
    return rc;
}

static char *config_json(const preset *P, int layers, const nlsr_synth_params *p)
{
    static const char *const roles[] = {"base", "aligned", "finetuned"};
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON *arch = cJSON_AddArrayToObject(o, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString("LlamaForCausalLM"));
    cJSON_AddFalseToObject(o, "attention_bias");
    cJSON_AddNumberToObject(o, "attention_dropout", 0.0);
    cJSON_AddNumberToObject(o, "bos_token_id", P->bos);
    cJSON_AddNumberToObject(o, "eos_token_id", P->eos);
    cJSON_AddNumberToObject(o, "head_dim", (double)P->head_dim);
    cJSON_AddStringToObject(o, "hidden_act", "silu");
    cJSON_AddNumberToObject(o, "hidden_size", (double)P->hidden);
    cJSON_AddNumberToObject(o, "initializer_range", 0.02);
    cJSON_AddNumberToObject(o, "intermediate_size", (double)P->inter);
    cJSON_AddNumberToObject(o, "max_position_embeddings", (double)P->max_pos);
    cJSON_AddFalseToObject(o, "mlp_bias");
    cJSON_AddStringToObject(o, "model_type", "llama");
    cJSON_AddNumberToObject(o, "num_attention_heads", (double)P->heads);
    cJSON_AddNumberToObject(o, "num_hidden_layers", layers);
    cJSON_AddNumberToObject(o, "num_key_value_heads", (double)P->kv);
    cJSON_AddNumberToObject(o, "rms_norm_eps", 1e-05);
    cJSON_AddNumberToObject(o, "rope_theta", P->rope_theta);
    cJSON_AddFalseToObject(o, "tie_word_embeddings");
    cJSON_AddStringToObject(o, "torch_dtype", p->dtype == NLSR_DTYPE_BF16  ? "bfloat16"
                                              : p->dtype == NLSR_DTYPE_F16 ? "float16"
                                                                           : "float32");
    cJSON_AddNumberToObject(o, "vocab_size", (double)P->vocab);
    cJSON *s = cJSON_AddObjectToObject(o, "nlsr_synth");
    cJSON_AddStringToObject(s, "preset", P->name);
    cJSON_AddStringToObject(s, "role", roles[p->role]);
    char seed[24];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)p->seed);
    cJSON_AddStringToObject(s, "seed", seed);
    char *txt = cJSON_Print(o);
    cJSON_Delete(o);
    return txt;
}

static char *index_json(const stensor *v, size_t n, char names[][64], uint64_t total)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON *m = cJSON_AddObjectToObject(o, "metadata");
    cJSON_AddNumberToObject(m, "total_size", (double)total);
    cJSON *w = cJSON_AddObjectToObject(o, "weight_map");
    /* Names sorted, as transformers writes them. */
    const stensor **ord = malloc((n ? n : 1) * sizeof *ord);
    if (!ord) {
        cJSON_Delete(o);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) ord[i] = &v[i];
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && strcmp(ord[j - 1]->name, ord[j]->name) > 0; j--) {
            const stensor *x = ord[j];
            ord[j] = ord[j - 1];
            ord[j - 1] = x;
        }
    for (size_t i = 0; i < n; i++)
        cJSON_AddStringToObject(w, ord[i]->name, names[ord[i]->shard]);
    free(ord);
    char *txt = cJSON_Print(o);
    cJSON_Delete(o);
    return txt;
}

static int synth_job(nlsr_ctx *ctx, const nlsr_synth_params *params, const char *out_dir)
{
    nlsr_err *e = &ctx->err;
    nlsr_synth_params p = params ? *params : NLSR_SYNTH_PARAMS_DEFAULT;
    const preset *P = NULL;
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (p.preset && strcmp(p.preset, presets[i].name) == 0) P = &presets[i];
    NLSR_FAIL_IF(!P, e, NLSR_E_USAGE, "synth: unknown preset '%s' (tiny, llama-8b, llama-70b)",
                 p.preset ? p.preset : "");
    int layers = p.layers > 0 ? p.layers : P->layers;
    NLSR_FAIL_IF(layers > 1000, e, NLSR_E_USAGE, "synth: %d layers is too many", layers);
    NLSR_FAIL_IF(p.dtype != NLSR_DTYPE_BF16 && p.dtype != NLSR_DTYPE_F16 &&
                     p.dtype != NLSR_DTYPE_F32,
                 e, NLSR_E_USAGE, "synth: dtype %s is not BF16, F16 or F32",
                 nlsr_dtype_name(p.dtype));
    NLSR_FAIL_IF((unsigned)p.role > NLSR_SYNTH_FINETUNED, e, NLSR_E_USAGE, "synth: unknown role");
    uint64_t shard_size = p.shard_size ? p.shard_size : 5ull << 30;
    size_t esz = nlsr_dtype_size(p.dtype);

    size_t cap = 3 + (size_t)layers * 9;
    stensor *v = calloc(cap, sizeof *v);
    char(*names)[64] = NULL;
    char *tmp = NULL, *txt = NULL;
    synth_run S = {ctx, &p, NULL, NULL, 0};
    nlsr_arena arena = {0};
    NLSR_FAIL_IF(!v, e, -ENOMEM, "synth: out of memory");
    size_t n = model_tensors(P, layers, esz, v);
    /* Shards as transformers cuts them: in model order, a new one when the next tensor would
     * pass the size (a tensor larger than the size gets a shard of its own). */
    uint32_t nsh = 0;
    uint64_t cur = 0, total = 0;
    for (size_t i = 0; i < n; i++) {
        if (i == 0 || (cur > 0 && cur + v[i].nbytes > shard_size)) {
            nsh++;
            cur = 0;
        }
        v[i].shard = nsh - 1;
        cur += v[i].nbytes;
        total += v[i].nbytes;
    }
    int rc = 0;
    names = calloc(nsh, sizeof *names);
    if (!names) {
        rc = nlsr_fail(e, -ENOMEM, "synth: out of memory");
        goto done;
    }
    for (uint32_t s = 0; s < nsh; s++) {
        if (nsh == 1) snprintf(names[s], sizeof names[s], "model.safetensors");
        else
            snprintf(names[s], sizeof names[s], "model-%05u-of-%05u.safetensors", s + 1, nsh);
    }
    rc = nlsr_outdir_begin(ctx, out_dir, p.force, &tmp);
    if (rc < 0) goto done;
    size_t chunk = 8u << 20;
    while (ctx->budget.limit && chunk > (64u << 10) && (uint64_t)chunk * 4 * 16 > ctx->budget.limit)
        chunk /= 2;
    /* One arena: the writer's ring and room for the largest tensor's low-rank factors. */
    uint64_t fac_max = 0;
    int rank = p.role == NLSR_SYNTH_BASE ? 0 : p.role == NLSR_SYNTH_ALIGNED ? RANK_A
                                                                           : RANK_A + RANK_T;
    for (size_t i = 0; i < n; i++)
        if (v[i].kind == K_TARGET) {
            uint64_t b = (v[i].shape[0] + v[i].shape[1]) * (uint64_t)rank * sizeof(float);
            if (b > fac_max) fac_max = b;
        }
    uint64_t wmem = nlsr_sink_mem(chunk, 4);
    rc = nlsr_arena_init(ctx, &arena, wmem + fac_max, "synth buffers");
    if (rc < 0) goto done;
    void *wbuf = nlsr_arena_take(&arena, wmem);
    S.fac = nlsr_arena_take(&arena, fac_max);
    S.fac_bytes = fac_max;
    rc = nlsr_sink_create_in(ctx, ctx->io_kind, chunk, 4, wbuf, &S.sink);
    if (rc < 0) goto done;
    ctx->io_used = nlsr_sink_kind(S.sink);
    /* The tensors' bytes, counted as the writer takes them. */
    nlsr_phase_begin(ctx, "write", NLSR_PHASE_WRITTEN, total, nsh);
    for (uint32_t s = 0; s < nsh && rc == 0; s++) {
        rc = write_shard(&S, tmp, names[s], v, n, s);
        nlsr_phase_units(ctx, 1);
    }
    if (rc == 0) nlsr_phase_end(ctx);
    if (rc < 0) goto done;
    txt = config_json(P, layers, &p);
    rc = txt ? write_text(ctx, tmp, "config.json", txt) : nlsr_fail(e, -ENOMEM, "out of memory");
    free(txt);
    txt = NULL;
    if (rc == 0 && nsh > 1) {
        txt = index_json(v, n, names, total);
        rc = txt ? write_text(ctx, tmp, "model.safetensors.index.json", txt)
                 : nlsr_fail(e, -ENOMEM, "out of memory");
    }
    if (rc == 0) rc = nlsr_outdir_commit(ctx, tmp, out_dir, p.force);
done:
    if (rc < 0 && tmp) nlsr_outdir_abort(tmp);
    nlsr_sink_free(S.sink);
    nlsr_arena_free(&arena);
    free(txt);
    free(tmp);
    free(names);
    free(v);
    return rc;
}

int nlsr_synth(nlsr_ctx *ctx, const nlsr_synth_params *params, const char *out_dir)
{
    int entered = nlsr_job_enter(ctx, "synth");
    int rc = synth_job(ctx, params, out_dir);
    nlsr_job_leave(ctx, entered);
    return rc;
}
