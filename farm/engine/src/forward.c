/* The forward pass of a llama-family decoder, as llama.cpp computes it:
 *   x = embd[tok]; per layer: h = rmsnorm(x)*w; q,k,v = W h (+bias); rope(q,k); x += Wo attn(q, K, V);
 *   h = rmsnorm(x)*w; x += Wdown (act(Wgate h) * Wup h);  logits = Wout rmsnorm(x)*w.
 * act is SiLU, or ReLU when the file says farm.hidden_act = relu (PhoneLM). Gemma-2 (gemma2) adds: embeddings
 * x sqrt(d), GELU-gated FFN, soft-capped scores and logits (cap*tanh(s/cap)), a sliding window on even layers,
 * and sandwich norms: x += rmsnorm(Wo attn)*w_post, x += rmsnorm(Wdown ffn)*w_post. OpenELM (openelm): head
 * counts and FFN width per layer, q/k/v from one fused matrix, and each q/k head RMS-normalised before RoPE.
 * Work is split into a few parallel steps per layer, each one pool_run (one barrier):
 * prep (norm / gated activation + q8_0 quantization of activations), matmul, qkv post-processing, attention.
 * Matmuls take all tokens of a ubatch at once, so prefill streams each weight once per ubatch. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "model.h"

#if defined(FARM_AVX2)
#include <immintrin.h>
#elif defined(FARM_NEON)
#include <arm_neon.h>
#endif

#ifndef TOKEN_TILE
#define TOKEN_TILE 32 /* tokens per GEMM tile: their q8_0 activations stay in L1/L2 */
#endif
#ifndef ROWS_TOKENS
#define ROWS_TOKENS 4 /* tokens per gemm_rows_more prefill tile (2 rows x this) */
#endif
#ifndef PREFILL_ROWS
#define PREFILL_ROWS 16 /* rows per work item in prefill, see matmul() */
#endif

/* What a weight type's matmul takes as activations (llama.cpp's vec_dot_type): f32, q8_0, q8_1 or q8_K. */
enum { ACT_F32, ACT_Q8_0, ACT_Q8_1, ACT_Q8_K };
static int act_kind(int type) {
    switch (type) {
    case GT_Q4_0: case GT_Q8_0: case GT_Q5_0: return ACT_Q8_0;
    case GT_Q4_1: case GT_Q5_1: return ACT_Q8_1;
    case GT_Q4_K: case GT_Q5_K: case GT_Q6_K: return ACT_Q8_K;
    default: return ACT_F32;
    }
}
static int acts(const tensor_t *t) { return act_kind(t->type) == ACT_F32 ? 0 : 1 << act_kind(t->type); }
static size_t act_row_bytes(int kind, int n) {
    switch (kind) {
    case ACT_Q8_1: return (size_t)(n / QK) * sizeof(block_q8_1);
    case ACT_Q8_K: return (size_t)(n / QK_K) * sizeof(block_q8_K);
    default: return (size_t)(n / QK) * sizeof(block_q8_0);
    }
}
static size_t q8_row_bytes(int n) { return act_row_bytes(ACT_Q8_0, n); }

static void *xalloc(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 64) != 0) farm_fail("out of memory (%zu bytes)", n);
    memset(p, 0, n);
    return p;
}

/* Attention's score scratch: per thread, a row (n_ctx floats and vector slack, a multiple of 8) per query
 * head of the largest GQA group. */
static size_t score_stride(int n_ctx) { return ((size_t)n_ctx + 15) / 8 * 8; }
static int max_group(const model_t *m) {
    int g = 1;
    for (int l = 0; l < m->n_layers; l++) {
        const int gl = m->layers[l].n_heads / m->layers[l].n_kv_heads;
        if (gl > g) g = gl;
    }
    return g;
}

void ctx_init(ctx_t *c, const model_t *m, int n_ctx, int n_ubatch, int n_threads, int kv_f16, int all_logits) {
    memset(c, 0, sizeof *c);
    c->m = m;
    c->n_ctx = n_ctx < 1 ? 1 : n_ctx;
    c->n_ubatch = n_ubatch < 1 ? 1 : n_ubatch;
    c->kv_f16 = kv_f16;
    c->pool = pool_create(n_threads);
    const size_t U = (size_t)c->n_ubatch, d = m->d_model, qd = (size_t)m->n_heads * m->head_dim;
    const size_t kvd = (size_t)m->n_kv_heads * m->head_dim, ff = m->d_ff;
    const size_t kv_elems = (size_t)m->n_kv_total * c->n_ctx * m->head_dim;
    c->kcache = xalloc(kv_elems * (kv_f16 ? 2 : 4));
    c->vcache = xalloc(kv_elems * (kv_f16 ? 2 : 4));
    size_t widest = d > qd ? d : qd;
    if (ff > widest) widest = ff;
    c->x = xalloc(U * d * 4);
    c->xb = xalloc(U * widest * 4);
    c->q = xalloc(U * qd * 4);
    c->k = xalloc(U * kvd * 4);
    c->v = xalloc(U * kvd * 4);
    c->att = xalloc(U * qd * 4);
    c->hb = xalloc(U * ff * 4);
    c->hb2 = xalloc(U * ff * 4);
    const int wq = (int)((widest + QK_K - 1) / QK_K * QK_K);
    for (int k = ACT_Q8_0; k <= ACT_Q8_K; k++) c->xq[k] = xalloc(U * act_row_bytes(k, wq));
    c->xsum = xalloc(U * (wq / QK) * sizeof(q8_0_sum));
    /* f32 copies of one KV head's K and V rows per thread, up to 1 MB each (attn_task) */
    c->kv_f32_rows = (int)((size_t)(1 << 20) / 4 / m->head_dim);
    if (c->kv_f32_rows > c->n_ctx) c->kv_f32_rows = c->n_ctx;
    if (!kv_f16) c->kv_f32_rows = 0;
    c->kv_f32 = xalloc((size_t)pool_size(c->pool) * 2 * c->kv_f32_rows * m->head_dim * 4);
    c->scores = xalloc((size_t)pool_size(c->pool) * max_group(m) * score_stride(c->n_ctx) * 4);
    c->rope_cs = xalloc(U * m->head_dim * 4);
    c->n_logits = all_logits ? c->n_ctx : 1;
    c->logits = xalloc((size_t)c->n_logits * m->n_vocab * 4);
}

void ctx_free(ctx_t *c) {
    pool_destroy(c->pool);
    void *bufs[] = {c->kcache, c->vcache, c->x,     c->xb,     c->q,      c->k,      c->v,       c->att,
                    c->hb,     c->hb2,    c->xq[1], c->xq[2], c->xq[3], c->xsum,   c->scores, c->rope_cs,
                    c->logits, c->kv_f32};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    memset(c, 0, sizeof *c);
}

/* ---- prep: rmsnorm / gated activation, then q8_0 quantization for quantized weights ------------- */

enum { PREP_NORM, PREP_ADDNORM, PREP_GLU, PREP_QUANT }; /* ADDNORM: dst += rmsnorm(src)*w, no quant */
#define PREP_CHUNK 256 /* elements per work item of element-wise modes */

typedef struct {
    int mode, n, n_tok, quant; /* quant: mask of 1 << ACT_* kinds to produce */
    int ffn_act;       /* GLU: FFN_* */
    float *src;        /* [n_tok][n]; GLU: gate, overwritten with act(gate) * up */
    const float *src2; /* GLU: up */
    const float *w;    /* NORM: weight */
    float *dst;        /* NORM: normalised rows; ADDNORM: rows the normalised ones are added to */
    float eps;
    void *const *xq;
    q8_0_sum *xsum; /* per q8_0 block: scale and sum of quants (packed matrices' kernels) */
    _Atomic int next;
} prep_job;

/* g[i] = act(g[i]) * u[i] */
static void glu(int act, float *g, const float *u, int n) {
    if (act == FFN_RELU)
        for (int i = 0; i < n; i++) g[i] = (g[i] > 0.0f ? g[i] : 0.0f) * u[i];
    else if (act == FFN_GELU)
        for (int i = 0; i < n; i++)
            g[i] = 0.5f * g[i] * (1.0f + tanhf(0.7978845608f * g[i] * (1.0f + 0.044715f * g[i] * g[i]))) * u[i];
    else
        for (int i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void prep_task(void *arg, int ith, int nth) {
    (void)ith, (void)nth;
    prep_job *j = arg;
    const int norm = j->mode == PREP_NORM || j->mode == PREP_ADDNORM;
    const int per_tok = norm ? 1 : (j->n + PREP_CHUNK - 1) / PREP_CHUNK;
    for (;;) {
        const int item = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (item >= j->n_tok * per_tok) return;
        const int t = item / per_tok, i0 = (item % per_tok) * PREP_CHUNK;
        float *out;
        int lo = 0, hi = j->n;
        if (norm) {
            const float *x = j->src + (size_t)t * j->n;
            out = j->dst + (size_t)t * j->n;
            double ss = 0.0; /* double: the row sum must not depend on summation order across builds */
            for (int i = 0; i < j->n; i++) ss += (double)x[i] * x[i];
            const float scale = (float)(1.0 / sqrt(ss / j->n + j->eps));
            if (j->mode == PREP_ADDNORM)
                for (int i = 0; i < j->n; i++) out[i] += x[i] * scale * j->w[i];
            else
                for (int i = 0; i < j->n; i++) out[i] = x[i] * scale * j->w[i];
        } else {
            lo = i0;
            hi = i0 + PREP_CHUNK < j->n ? i0 + PREP_CHUNK : j->n;
            out = j->src + (size_t)t * j->n;
            if (j->mode == PREP_GLU) glu(j->ffn_act, out + lo, j->src2 + (size_t)t * j->n + lo, hi - lo);
        }
        if (j->quant & (1 << ACT_Q8_0)) {
            block_q8_0 *y = (block_q8_0 *)((char *)j->xq[ACT_Q8_0] + t * q8_row_bytes(j->n)) + lo / QK;
            quantize_row_q8_0(out + lo, y, hi - lo);
            q8_0_sums(y, j->xsum + (size_t)t * (j->n / QK) + lo / QK, (hi - lo) / QK);
        }
        if (j->quant & (1 << ACT_Q8_1))
            quantize_row_q8_1(out + lo, (block_q8_1 *)((char *)j->xq[ACT_Q8_1] +
                                                       t * act_row_bytes(ACT_Q8_1, j->n)) + lo / QK, hi - lo);
        if (j->quant & (1 << ACT_Q8_K)) /* PREP_CHUNK is one q8_K block; rows are whole blocks (model.c) */
            quantize_row_q8_K(out + lo, (block_q8_K *)((char *)j->xq[ACT_Q8_K] +
                                                       t * act_row_bytes(ACT_Q8_K, j->n)) + lo / QK_K, hi - lo);
    }
}

static void prep(ctx_t *c, int mode, int quant, float *src, const float *src2, const float *w, float *dst, int n,
                 int n_tok) {
    if (mode == PREP_QUANT && !quant) return;
    prep_job j = {.mode = mode, .n = n, .n_tok = n_tok, .quant = quant, .src = src, .src2 = src2, .w = w,
                  .dst = dst, .eps = c->m->rms_eps, .xq = c->xq, .xsum = c->xsum, .ffn_act = c->m->ffn_act};
    pool_run(c->pool, prep_task, &j);
}

/* ---- matmul: y[t][r] (+)= W[r] . x[t] for up to three weights sharing one input ---------------------- */

typedef struct {
    const tensor_t *w[3];
    float *y[3];
    int nw, n_tok, accumulate, rows_total, chunk;
    const float *xf; /* f32/f16 weights: f32 activations */
    void *const *xq; /* quantized weights: activations by ACT_* kind */
    const q8_0_sum *xsum;
    _Atomic int next;
} mm_job;

static inline void put(float *y, float v, int acc) {
    if (acc) *y += v;
    else *y = v;
}

/* Packed matrices (pack.c): groups of PACK_ROWS rows from r0 (a multiple of PACK_ROWS) x up to 4 tokens per call.
 * Every output gets the same operations whatever the tile, so no tail path is needed for rows or tokens. */
static void mm_packed(const mm_job *j, const tensor_t *w, float *y, int r0, int r1) {
    const int n = w->n_in, n_out = w->n_out, nb = n / QK, kind = act_kind(w->type);
    const size_t xs = act_row_bytes(kind, n), gb = pack_group_bytes(w->type, n);
    for (int t0 = 0; t0 < j->n_tok; t0 += TOKEN_TILE) {
        const int t1 = t0 + TOKEN_TILE < j->n_tok ? t0 + TOKEN_TILE : j->n_tok;
        for (int r = r0; r < r1; r += PACK_ROWS) {
            const int nr = n_out - r < PACK_ROWS ? n_out - r : PACK_ROWS;
            for (int t = t0; t < t1; t += 4) {
                const int nt = t1 - t < 4 ? t1 - t : 4;
                float o[4 * PACK_ROWS];
                gemm_packed(w->type, n, (const char *)w->data + (size_t)(r / PACK_ROWS) * gb,
                            (const char *)j->xq[kind] + t * xs, xs, j->xsum + (size_t)t * nb, nb, nt, o);
                for (int k = 0; k < nt; k++)
                    for (int i = 0; i < nr; i++)
                        put(&y[(size_t)(t + k) * n_out + r + i], o[k * PACK_ROWS + i], j->accumulate);
            }
        }
    }
}

static void mm_rows(const mm_job *j, const tensor_t *w, float *y, int r0, int r1) {
    if (w->packed) {
        mm_packed(j, w, y, r0, r1);
        return;
    }
    const int n = w->n_in, n_out = w->n_out, acc = j->accumulate;
    const char *wd = w->data;
    const int kind = act_kind(w->type);
    const char *xa = j->xq[kind];
    const size_t xas = act_row_bytes(kind, n);
    for (int t0 = 0; t0 < j->n_tok; t0 += TOKEN_TILE) {
        const int t1 = t0 + TOKEN_TILE < j->n_tok ? t0 + TOKEN_TILE : j->n_tok;
        int r = r0;
        if (gemm_rows_more_ok(w->type) && t1 - t0 == 1) { /* decode: 4 rows per call */
            for (; r + 4 <= r1; r += 4) {
                float o[4];
                gemm_rows_more(w->type, n, wd + (size_t)r * w->row_bytes, w->row_bytes, 4, xa + t0 * xas, xas, 1, o);
                for (int k = 0; k < 4; k++) put(&y[(size_t)t0 * n_out + r + k], o[k], acc);
            }
        }
        if (gemm_rows_more_ok(w->type) && t1 - t0 >= 2) { /* prefill: 2 rows x up to ROWS_TOKENS tokens */
            for (; r + 2 <= r1; r += 2) {
                for (int t = t0; t < t1;) {
                    const int nt = t1 - t >= ROWS_TOKENS ? ROWS_TOKENS : t1 - t >= 2 ? 2 : 1;
                    float o[8];
                    gemm_rows_more(w->type, n, wd + (size_t)r * w->row_bytes, w->row_bytes, 2, xa + t * xas, xas, nt, o);
                    for (int k = 0; k < nt; k++) {
                        put(&y[(size_t)(t + k) * n_out + r], o[k], acc);
                        put(&y[(size_t)(t + k) * n_out + r + 1], o[nt + k], acc);
                    }
                    t += nt;
                }
            }
        }
        if (kind != ACT_F32) {
            for (; r < r1; r++) { /* gemm_more's tiles: one weight row, up to 4 tokens per call */
                const void *wr = wd + (size_t)r * w->row_bytes;
                for (int t = t0; t < t1; t += 4) {
                    const int nt = t1 - t < 4 ? t1 - t : 4;
                    float o[4];
                    gemm_more(w->type, n, wr, xa + t * xas, xas, nt, o);
                    for (int k = 0; k < nt; k++) put(&y[(size_t)(t + k) * n_out + r], o[k], acc);
                }
            }
        }
        for (; r < r1; r++) {
            const void *wr = wd + (size_t)r * w->row_bytes;
            for (int t = t0; t < t1; t++) {
                float v;
                switch (w->type) {
                case GT_F16: v = vec_dot_f16(n, wr, j->xf + (size_t)t * n); break;
                case GT_F32: v = vec_dot_f32(n, wr, j->xf + (size_t)t * n); break;
                default: v = vec_dot_more(w->type, n, wr, xa + t * xas); break;
                }
                put(&y[(size_t)t * n_out + r], v, acc);
            }
        }
    }
}

/* Rows a weight takes in a matmul's row space: packed ones are padded to whole groups, so that every chunk
 * (a multiple of PACK_ROWS) starts on a group. */
static int span(const tensor_t *w) { return w->packed ? (w->n_out + PACK_ROWS - 1) / PACK_ROWS * PACK_ROWS : w->n_out; }

static void mm_task(void *arg, int ith, int nth) {
    (void)ith, (void)nth;
    mm_job *j = arg;
    for (;;) {
        const int c = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        int r0 = c * j->chunk;
        if (r0 >= j->rows_total) return;
        int r1 = r0 + j->chunk < j->rows_total ? r0 + j->chunk : j->rows_total;
        int base = 0; /* split the chunk at weight boundaries */
        for (int k = 0; k < j->nw && r0 < r1; k++) {
            const int end = base + span(j->w[k]);
            if (r0 < end) {
                const int e = r1 < end ? r1 : end;
                mm_rows(j, j->w[k], j->y[k], r0 - base, e - base < j->w[k]->n_out ? e - base : j->w[k]->n_out);
                r0 = e;
            }
            base = end;
        }
    }
}

static void matmul(ctx_t *c, const tensor_t *w0, float *y0, const tensor_t *w1, float *y1, const tensor_t *w2,
                   float *y2, const float *xf, int n_tok, int accumulate) {
    mm_job j = {.w = {w0, w1, w2}, .y = {y0, y1, y2}, .nw = w2 ? 3 : w1 ? 2 : 1, .n_tok = n_tok,
                .accumulate = accumulate, .xf = xf, .xq = c->xq, .xsum = c->xsum};
    int min_chunk = 2; /* even for the 2x2 tiles, whole groups for packed matrices */
    for (int k = 0; k < j.nw; k++) {
        j.rows_total += span(j.w[k]);
        if (j.w[k]->packed) min_chunk = PACK_ROWS;
    }
    /* Decode: big chunks amortise the atomic; prefill: 16 rows (~80 KB of q8_0 weights at d_ff) stay in L2
     * while every token tile passes over them. */
    j.chunk = n_tok > 1 ? PREFILL_ROWS : 64;
    const int nth = pool_size(c->pool);
    while (j.chunk > min_chunk && j.rows_total / j.chunk < 4 * nth) j.chunk /= 2;
    pool_run(c->pool, mm_task, &j);
}

/* ---- q/k/v post-processing: bias, RoPE, store K and V in the cache -------------------------------- */

typedef struct {
    ctx_t *c;
    const layer_t *L;
    int n_tok, pos0;
    _Atomic int next;
} qkv_job;

static void rope(float *v, const float *cs, int hd, int neox) {
    const int half = hd / 2;
    for (int i = 0; i < half; i++) {
        const int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        const float x0 = v[a], x1 = v[b], co = cs[i], si = cs[half + i];
        v[a] = x0 * co - x1 * si;
        v[b] = x0 * si + x1 * co;
    }
}

/* OpenELM's q/k norm: each head's vector RMS-normalised and scaled by w (as the prep's row norm does). */
static void head_norm(float *v, const float *w, int hd, float eps) {
    double ss = 0.0;
    for (int i = 0; i < hd; i++) ss += (double)v[i] * v[i];
    const float scale = (float)(1.0 / sqrt(ss / hd + eps));
    for (int i = 0; i < hd; i++) v[i] = v[i] * scale * w[i];
}

static void qkv_task(void *arg, int ith, int nth) {
    (void)ith, (void)nth;
    qkv_job *j = arg;
    ctx_t *c = j->c;
    const model_t *m = c->m;
    const layer_t *L = j->L;
    const int hd = m->head_dim, nh = L->n_heads, nkv = L->n_kv_heads, qd = nh * hd, kvd = nkv * hd;
    for (;;) {
        const int t = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (t >= j->n_tok) return;
        float *q = c->q + (size_t)t * qd, *k = c->k + (size_t)t * kvd, *v = c->v + (size_t)t * kvd;
        if (j->L->has_bias) {
            const float *bq = j->L->bq.data, *bk = j->L->bk.data, *bv = j->L->bv.data;
            for (int i = 0; i < qd; i++) q[i] += bq[i];
            for (int i = 0; i < kvd; i++) k[i] += bk[i], v[i] += bv[i];
        }
        if (L->q_norm.data) {
            for (int h = 0; h < nh; h++) head_norm(q + h * hd, L->q_norm.data, hd, m->rms_eps);
            for (int h = 0; h < nkv; h++) head_norm(k + h * hd, L->k_norm.data, hd, m->rms_eps);
        }
        const float *cs = c->rope_cs + (size_t)t * hd;
        for (int h = 0; h < nh; h++) rope(q + h * hd, cs, hd, m->rope_neox);
        for (int h = 0; h < nkv; h++) rope(k + h * hd, cs, hd, m->rope_neox);
        const int pos = j->pos0 + t;
        for (int h = 0; h < nkv; h++) {
            const size_t off = (((size_t)L->kv_head0 + h) * c->n_ctx + pos) * hd;
            if (c->kv_f16) {
                f32_to_f16_row(k + h * hd, (f16_t *)c->kcache + off, hd);
                f32_to_f16_row(v + h * hd, (f16_t *)c->vcache + off, hd);
            } else {
                memcpy((float *)c->kcache + off, k + h * hd, (size_t)hd * 4);
                memcpy((float *)c->vcache + off, v + h * hd, (size_t)hd * 4);
            }
        }
    }
}

/* ---- attention: causal softmax(q K^T / sqrt(hd)) V per (token, head), GQA --------------------------- */

/* The query heads of one KV head (its GQA group) share every K and V row they read and, for one token, the
 * key range: attention works on those rows together (work items: attn_task). Per row: scores
 * s_p = (q . K_p) * scale (soft-capped for gemma2), softmax with a vectorized exp (ggml_v_expf), then
 * out = sum_p w_p V_p. SIMD tiles: scores for up to 3 rows x 4 keys (12 accumulators, each K vector loaded
 * once for the 3 rows, a transposed horizontal sum for the 4 keys), and the weighted V sum for up to 3 rows
 * x 32 floats (AVX2; 16 on NEON) with the accumulators in registers over all keys.
 * Every (token, head) output is computed with the same operations whatever its tile, item or thread: each
 * score is its own accumulator summed over hd in order, each output element sums keys p0..pos in order, the
 * softmax runs over the row's scores from its first key, and f16 -> f32 is exact wherever it happens. So the
 * thread count (and the ubatch) doesn't change results.
 * Measured (AVX2 Xeon, 1 thread, SmolLM2-135M: hd 64, 9 q / 3 KV heads): one layer's attention over 512
 * prompt tokens 15.0 -> 4.2 ms, one decode step at depth 512 0.057 -> 0.018 ms and at 4096 0.46 -> 0.17 ms
 * (cache hot); pp512 q8_0 203 -> 252 t/s, q4_0 176 -> 202 t/s; attention's share of the prefill profile
 * 21% -> 7% (it was a vec_dot_f16, a scalar expf and an axpy_f16 per key and head). */

#if defined(FARM_AVX2) || defined(FARM_NEON)
#define ATTN_SIMD 1
#define INLINE static inline __attribute__((always_inline))
#if defined(FARM_AVX2)
typedef __m256 vf;
#define VW 8
INLINE vf v_ld(const float *p) { return _mm256_loadu_ps(p); }
INLINE vf v_ldh(const f16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
INLINE void v_st(float *p, vf a) { _mm256_storeu_ps(p, a); }
INLINE vf v_set1(float a) { return _mm256_set1_ps(a); }
INLINE vf v_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); } /* a * b + c */
INLINE vf v_add(vf a, vf b) { return _mm256_add_ps(a, b); }
INLINE vf v_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
INLINE vf v_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
INLINE vf v_max(vf a, vf b) { return _mm256_max_ps(a, b); }
INLINE vf v_first(vf a, int n) { /* lanes >= n zeroed */
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_and_ps(a, _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane)));
}
INLINE float v_hsum(vf a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
INLINE float v_hmax(vf a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}
/* out[k] = scale * (sum of a_k's lanes), the same tree for each k */
INLINE void v_hsum4(vf a0, vf a1, vf a2, vf a3, float scale, float out[4]) {
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    _mm_storeu_ps(out, _mm_mul_ps(s, _mm_set1_ps(scale)));
}
/* exp(x), ggml's ggml_v_expf (llama.cpp ggml-cpu/vec.h): max error 1.45358 + 0.5 ulp, lanes independent */
INLINE vf v_exp(vf x) {
    const __m256 r = _mm256_set1_ps(0x1.8p23f);
    const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), r);
    const __m256 n = _mm256_sub_ps(z, r);
    const __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f),
                                      _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    const __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1))));
    const __m256i c =
        _mm256_castps_si256(_mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.f), n), _mm256_set1_ps(126), _CMP_GT_OQ));
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f)), u,
                        _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f))),
        u, _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), b));
    if (!_mm256_movemask_ps(_mm256_castsi256_ps(c))) return _mm256_fmadd_ps(j, k, k);
    const __m256i g =
        _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
                         _mm256_set1_epi32((int)0x82000000u));
    const __m256 s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f000000)));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    const __m256i d =
        _mm256_castps_si256(_mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.f), n), _mm256_set1_ps(192), _CMP_GT_OQ));
    return _mm256_or_ps(
        _mm256_and_ps(_mm256_castsi256_ps(d), _mm256_mul_ps(s1, s1)),
        _mm256_andnot_ps(_mm256_castsi256_ps(d),
                         _mm256_or_ps(_mm256_and_ps(_mm256_castsi256_ps(c), _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                                      _mm256_andnot_ps(_mm256_castsi256_ps(c), _mm256_fmadd_ps(k, j, k)))));
}
#else /* FARM_NEON */
typedef float32x4_t vf;
#define VW 4
INLINE vf v_ld(const float *p) { return vld1q_f32(p); }
INLINE vf v_ldh(const f16_t *p) { return vcvt_f32_f16(vld1_f16((const __fp16 *)p)); }
INLINE void v_st(float *p, vf a) { vst1q_f32(p, a); }
INLINE vf v_set1(float a) { return vdupq_n_f32(a); }
INLINE vf v_fma(vf a, vf b, vf c) { return vfmaq_f32(c, a, b); } /* a * b + c */
INLINE vf v_add(vf a, vf b) { return vaddq_f32(a, b); }
INLINE vf v_sub(vf a, vf b) { return vsubq_f32(a, b); }
INLINE vf v_mul(vf a, vf b) { return vmulq_f32(a, b); }
INLINE vf v_max(vf a, vf b) { return vmaxq_f32(a, b); }
INLINE vf v_first(vf a, int n) {
    const uint32_t lanes[4] = {0, 1, 2, 3};
    return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(a), vcltq_u32(vld1q_u32(lanes), vdupq_n_u32((uint32_t)n))));
}
INLINE float v_hsum(vf a) { return vaddvq_f32(a); }
INLINE float v_hmax(vf a) { return vmaxvq_f32(a); }
INLINE void v_hsum4(vf a0, vf a1, vf a2, vf a3, float scale, float out[4]) {
    vst1q_f32(out, vmulq_n_f32(vpaddq_f32(vpaddq_f32(a0, a1), vpaddq_f32(a2, a3)), scale));
}
INLINE vf v_exp(vf x) { /* ggml_v_expf, as above */
    const float32x4_t r = vdupq_n_f32(0x1.8p23f);
    const float32x4_t z = vfmaq_f32(r, x, vdupq_n_f32(0x1.715476p+0f));
    const float32x4_t n = vsubq_f32(z, r);
    const float32x4_t b = vfmsq_f32(vfmsq_f32(x, n, vdupq_n_f32(0x1.62e4p-1f)), n, vdupq_n_f32(0x1.7f7d1cp-20f));
    const uint32x4_t e = vshlq_n_u32(vreinterpretq_u32_f32(z), 23);
    const float32x4_t k = vreinterpretq_f32_u32(vaddq_u32(e, vreinterpretq_u32_f32(vdupq_n_f32(1))));
    const uint32x4_t c = vcagtq_f32(n, vdupq_n_f32(126));
    const float32x4_t u = vmulq_f32(b, b);
    const float32x4_t j = vfmaq_f32(vmulq_f32(vdupq_n_f32(0x1.ffffecp-1f), b),
                                    vfmaq_f32(vfmaq_f32(vdupq_n_f32(0x1.fffdb6p-2f), vdupq_n_f32(0x1.555e66p-3f), b),
                                              vfmaq_f32(vdupq_n_f32(0x1.573e2ep-5f), vdupq_n_f32(0x1.0e4020p-7f), b), u),
                                    u);
    if (!vpaddd_u64(vreinterpretq_u64_u32(c))) return vfmaq_f32(k, j, k);
    const uint32x4_t d = vandq_u32(vclezq_f32(n), vdupq_n_u32(0x82000000));
    const float32x4_t s1 = vreinterpretq_f32_u32(vaddq_u32(d, vdupq_n_u32(0x7f000000)));
    const float32x4_t s2 = vreinterpretq_f32_u32(vsubq_u32(e, d));
    return vbslq_f32(vcagtq_f32(n, vdupq_n_f32(192)), vmulq_f32(s1, s1),
                     vbslq_f32(c, vmulq_f32(vfmaq_f32(s2, s2, j), s1), vfmaq_f32(k, k, j)));
}
#endif

#define TILE_ROWS 3 /* query rows per tile: 3 x 4 keys (scores) or 3 x 4 vectors (V sum) = 12 accumulators */

INLINE vf ld_kv(const void *base, size_t i, int f16) {
    return f16 ? v_ldh((const f16_t *)base + i) : v_ld((const float *)base + i);
}

/* s[r * ss + i] = (q_r . K_i) * scale for nr rows (stride hd) and keys i < n (rows of kb, hd apart); 4 keys a
 * tile (the last tile repeats key n - 1 in its unused slots and writes up to 3 floats past n: the rows' slack). */
INLINE void qk_tile(int hd, int nr, const float *q, const void *kb, int f16, int n, float scale, float *s, size_t ss) {
    for (int i = 0; i < n; i += 4) {
        size_t off[4];
        for (int k = 0; k < 4; k++) off[k] = (size_t)(i + k < n ? i + k : n - 1) * hd;
        vf acc[TILE_ROWS][4];
        for (int r = 0; r < nr; r++)
            for (int k = 0; k < 4; k++) acc[r][k] = v_set1(0.0f);
        for (int d = 0; d < hd; d += VW) {
            vf qv[TILE_ROWS];
            for (int r = 0; r < nr; r++) qv[r] = v_ld(q + r * hd + d);
            for (int k = 0; k < 4; k++) {
                const vf kv = ld_kv(kb, off[k] + d, f16);
                for (int r = 0; r < nr; r++) acc[r][k] = v_fma(qv[r], kv, acc[r][k]);
            }
        }
        for (int r = 0; r < nr; r++) v_hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3], scale, s + r * ss + i);
    }
}

/* out[r][d0 .. d0 + nv*VW) = sum_{i < n} w[r * ws + i] * V_i, keys in order, for nr rows */
INLINE void pv_tile(int hd, int nr, int nv, int d0, const float *w, size_t ws, const void *vb, int f16, int n,
                    float *out) {
    vf acc[TILE_ROWS][4];
    for (int r = 0; r < nr; r++)
        for (int k = 0; k < nv; k++) acc[r][k] = v_set1(0.0f);
    for (int i = 0; i < n; i++) {
        const size_t off = (size_t)i * hd + d0;
        vf wv[TILE_ROWS];
        for (int r = 0; r < nr; r++) wv[r] = v_set1(w[r * ws + i]);
        for (int k = 0; k < nv; k++) {
            const vf vv = ld_kv(vb, off + (size_t)k * VW, f16);
            for (int r = 0; r < nr; r++) acc[r][k] = v_fma(wv[r], vv, acc[r][k]);
        }
    }
    for (int r = 0; r < nr; r++)
        for (int k = 0; k < nv; k++) v_st(out + r * hd + d0 + k * VW, acc[r][k]);
}

/* s[0..n) scores -> softmax weights; s has VW floats of slack after n */
static void softmax_row(float *s, int n, float cap) {
    if (cap > 0.0f)
        for (int i = 0; i < n; i++) s[i] = cap * tanhf(s[i] / cap);
    vf m = v_set1(-INFINITY);
    int i = 0;
    for (; i + VW <= n; i += VW) m = v_max(m, v_ld(s + i));
    float mx = v_hmax(m);
    for (; i < n; i++) mx = s[i] > mx ? s[i] : mx;
    const vf vmx = v_set1(mx);
    vf sum = v_set1(0.0f);
    for (i = 0; i < n; i += VW) {
        vf e = v_exp(v_sub(v_ld(s + i), vmx));
        if (n - i < VW) e = v_first(e, n - i);
        v_st(s + i, e);
        sum = v_add(sum, e);
    }
    const vf inv = v_set1(1.0f / v_hsum(sum));
    for (i = 0; i < n; i += VW) v_st(s + i, v_mul(v_ld(s + i), inv));
}

/* The tiles instantiated for nr = 1..3 rows (and f16 / f32 K and V): the compiler keeps each in registers. */
INLINE void qk_rows(int hd, int nr, const float *q, const void *kb, int f16, int n, float scale, float *s, size_t ss) {
    for (int r = 0; r < nr; r += TILE_ROWS) {
        const float *qr = q + (size_t)r * hd;
        float *sr = s + r * ss;
        if (nr - r >= 3) qk_tile(hd, 3, qr, kb, f16, n, scale, sr, ss);
        else if (nr - r == 2) qk_tile(hd, 2, qr, kb, f16, n, scale, sr, ss);
        else qk_tile(hd, 1, qr, kb, f16, n, scale, sr, ss);
    }
}

INLINE void pv_rows(int hd, int nr, const float *w, size_t ws, const void *vb, int f16, int n, float *out) {
    for (int r = 0; r < nr; r += TILE_ROWS) {
        const float *wr = w + r * ws;
        float *o = out + (size_t)r * hd;
        const int m = nr - r >= 3 ? 3 : nr - r;
        int d = 0;
        for (; d + 4 * VW <= hd; d += 4 * VW) {
            if (m == 3) pv_tile(hd, 3, 4, d, wr, ws, vb, f16, n, o);
            else if (m == 2) pv_tile(hd, 2, 4, d, wr, ws, vb, f16, n, o);
            else pv_tile(hd, 1, 4, d, wr, ws, vb, f16, n, o);
        }
        for (; d < hd; d += VW) {
            if (m == 3) pv_tile(hd, 3, 1, d, wr, ws, vb, f16, n, o);
            else if (m == 2) pv_tile(hd, 2, 1, d, wr, ws, vb, f16, n, o);
            else pv_tile(hd, 1, 1, d, wr, ws, vb, f16, n, o);
        }
    }
}

static void attn_simd(int hd, int nr, const float *q, const void *kb, const void *vb, int f16, int n, float scale,
                      float cap, float *s, size_t ss, float *out) {
    if (f16) qk_rows(hd, nr, q, kb, 1, n, scale, s, ss);
    else qk_rows(hd, nr, q, kb, 0, n, scale, s, ss);
    for (int r = 0; r < nr; r++) softmax_row(s + r * ss, n, cap);
    if (f16) pv_rows(hd, nr, s, ss, vb, 1, n, out);
    else pv_rows(hd, nr, s, ss, vb, 0, n, out);
}
#endif

/* nr query rows (stride hd) of one GQA group against keys 0..n-1: K and V rows hd apart from kb / vb, f16 or
 * f32. Scores and weights go to rows of s, ss apart. */
static void attn_rows(const model_t *m, int nr, const float *q, const void *kb, const void *vb, int f16, int n,
                      float *s, size_t ss, float *out) {
    const int hd = m->head_dim;
    const float scale = m->attn_scale, cap = m->attn_softcap;
#if defined(ATTN_SIMD)
    if (hd % VW == 0) {
        attn_simd(hd, nr, q, kb, vb, f16, n, scale, cap, s, ss, out);
        return;
    }
#endif
    for (int r = 0; r < nr; r++, q += hd, out += hd, s += ss) { /* portable path: a row at a time */
        float mx = -INFINITY;
        for (int i = 0; i < n; i++) {
            const size_t off = (size_t)i * hd;
            const float x = f16 ? vec_dot_f16(hd, (const f16_t *)kb + off, q) : vec_dot_f32(hd, (const float *)kb + off, q);
            const float v = cap > 0.0f ? cap * tanhf(x * scale / cap) : x * scale;
            s[i] = v;
            if (v > mx) mx = v;
        }
        float sum = 0.0f;
        for (int i = 0; i < n; i++) sum += (s[i] = expf(s[i] - mx));
        memset(out, 0, (size_t)hd * 4);
        const float inv = 1.0f / sum;
        for (int i = 0; i < n; i++) {
            const size_t off = (size_t)i * hd;
            if (f16) axpy_f16(hd, s[i] * inv, (const f16_t *)vb + off, out);
            else axpy_f32(hd, s[i] * inv, (const float *)vb + off, out);
        }
    }
}

/* Work item: a KV head and a block of ATTN_TOKENS tokens (prefill), or one token and part of the group (when
 * there are fewer tokens x KV heads than about 2 per thread: decode). A block first converts the f16 K and V
 * rows its tokens read to f32 (per-thread scratch, exact), so the tiles convert nothing: the f16 rows would
 * otherwise be converted again for every token. Same products either way, so results don't change. */
#ifndef ATTN_TOKENS
#define ATTN_TOKENS 16
#endif
static void attn_task(void *arg, int ith, int nth) {
    qkv_job *j = arg;
    ctx_t *c = j->c;
    const model_t *m = c->m;
    const int hd = m->head_dim, nh = j->L->n_heads, nkv = j->L->n_kv_heads, qd = nh * hd, group = nh / nkv;
    const int n_swa = j->L->n_swa, nt = j->n_tok;
    int parts = (2 * nth + nt * nkv - 1) / (nt * nkv); /* items per (token, KV head) */
    if (parts > group) parts = group;
    const int rg = (group + parts - 1) / parts, per = (group + rg - 1) / rg; /* rows per item, items per group */
    const int tb = per > 1 ? 1 : ATTN_TOKENS, nblk = (nt + tb - 1) / tb;
    const size_t ss = score_stride(c->n_ctx);
    float *sc = c->scores + (size_t)ith * max_group(m) * ss;
    float *ks = c->kv_f32 + (size_t)ith * 2 * c->kv_f32_rows * hd, *vs = ks + (size_t)c->kv_f32_rows * hd;
    for (;;) {
        const int item = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (item >= nkv * nblk * per) return;
        /* a KV head at a time (its cache rows stay in L2), the longest rows (last tokens) first */
        const int kvh = item / (nblk * per), blk = nblk - 1 - item % (nblk * per) / per, r0 = item % per * rg;
        const int nr = group - r0 < rg ? group - r0 : rg, t0 = blk * tb, t1 = t0 + tb < nt ? t0 + tb : nt;
        const size_t base = ((size_t)j->L->kv_head0 + kvh) * c->n_ctx * hd;
        const int lo = n_swa && j->pos0 + t0 >= n_swa ? j->pos0 + t0 - n_swa + 1 : 0, hi = j->pos0 + t1 - 1;
        const void *kb = c->kv_f16 ? (const void *)((const f16_t *)c->kcache + base) : (const float *)c->kcache + base;
        const void *vb = c->kv_f16 ? (const void *)((const f16_t *)c->vcache + base) : (const float *)c->vcache + base;
        int f16 = c->kv_f16, first = 0; /* kb, vb: rows of positions first.. */
        if (f16 && t1 - t0 > 1 && hi - lo + 1 <= c->kv_f32_rows) {
            const int n = (hi - lo + 1) * hd; /* <= kv_f32_rows * hd: 1 MB of floats */
            f16_to_f32_row((const f16_t *)kb + (size_t)lo * hd, ks, n);
            f16_to_f32_row((const f16_t *)vb + (size_t)lo * hd, vs, n);
            kb = ks, vb = vs, f16 = 0, first = lo;
        }
        const size_t es = f16 ? 2 : 4;
        for (int t = t1 - 1; t >= t0; t--) {
            const int pos = j->pos0 + t;
            const int p0 = n_swa && pos >= n_swa ? pos - n_swa + 1 : 0; /* llama.cpp masks pos - p >= n_swa */
            const size_t qo = (size_t)t * qd + (size_t)(kvh * group + r0) * hd, ko = (size_t)(p0 - first) * hd * es;
            attn_rows(m, nr, c->q + qo, (const char *)kb + ko, (const char *)vb + ko, f16, pos - p0 + 1, sc, ss,
                      c->att + qo);
        }
    }
}

/* x += W in, or with a post-norm weight (gemma2) x += rmsnorm(W in) * post; `in` is quantized already. */
static void residual_add(ctx_t *c, const tensor_t *w, const float *post, const float *in, int nt) {
    if (!post) {
        matmul(c, w, c->x, NULL, NULL, NULL, NULL, in, nt, 1);
        return;
    }
    matmul(c, w, c->xb, NULL, NULL, NULL, NULL, in, nt, 0);
    prep(c, PREP_ADDNORM, 0, c->xb, NULL, post, c->x, c->m->d_model, nt);
}

/* ---- the pass ------------------------------------------------------------------------------------ */

static void forward_ubatch(ctx_t *c, const int *tokens, int n_tok, int pos0, float *logits, int want_all,
                           int want_last) {
    const model_t *m = c->m;
    const int d = m->d_model, hd = m->head_dim;
    for (int t = 0; t < n_tok; t++)
        tensor_row(&m->tok_embd, tokens[t], c->x + (size_t)t * d);
    if (m->emb_scale != 1.0f)
        for (size_t i = 0; i < (size_t)n_tok * d; i++) c->x[i] *= m->emb_scale;
    for (int t = 0; t < n_tok; t++) { /* theta_i = pos * base^(-2i/hd), computed directly (no running product) */
        float *cs = c->rope_cs + (size_t)t * hd;
        for (int i = 0; i < hd / 2; i++) {
            double th = (double)(pos0 + t) * pow((double)m->rope_theta, -2.0 * i / hd);
            if (m->rope_freqs) th /= m->rope_freqs[i]; /* llama3 rope scaling (llama.cpp: freq_factors) */
            cs[i] = (float)cos(th);
            cs[hd / 2 + i] = (float)sin(th);
        }
    }
    int nt = n_tok;
    for (int l = 0; l < m->n_layers; l++) {
        const layer_t *L = &m->layers[l];
        const int qd = L->n_heads * hd;
        prep(c, PREP_NORM, acts(&L->wq) | acts(&L->wk) | acts(&L->wv), c->x, NULL, L->attn_norm.data, c->xb, d, nt);
        matmul(c, &L->wq, c->q, &L->wk, c->k, &L->wv, c->v, c->xb, nt, 0);
        qkv_job qj = {.c = c, .L = L, .n_tok = nt, .pos0 = pos0};
        pool_run(c->pool, qkv_task, &qj);
        qkv_job aj = {.c = c, .L = L, .n_tok = nt, .pos0 = pos0};
        pool_run(c->pool, attn_task, &aj);
        if (l == m->n_layers - 1 && !want_all && nt > 1) {
            /* Only the last token's hidden state is used after the last layer's attention (its K/V are
             * stored already): finish that layer for one token, as llama.cpp does with inp_out_ids. */
            memmove(c->att, c->att + (size_t)(nt - 1) * qd, (size_t)qd * 4);
            memmove(c->x, c->x + (size_t)(nt - 1) * d, (size_t)d * 4);
            nt = 1;
        }
        prep(c, PREP_QUANT, acts(&L->wo), c->att, NULL, NULL, NULL, qd, nt);
        residual_add(c, &L->wo, L->attn_post_norm.data, c->att, nt);
        prep(c, PREP_NORM, acts(&L->wgate) | acts(&L->wup), c->x, NULL, L->ffn_norm.data, c->xb, d, nt);
        matmul(c, &L->wgate, c->hb, &L->wup, c->hb2, NULL, NULL, c->xb, nt, 0);
        prep(c, PREP_GLU, acts(&L->wdown), c->hb, c->hb2, NULL, NULL, L->d_ff, nt);
        residual_add(c, &L->wdown, L->ffn_post_norm.data, c->hb, nt);
    }
    if (!want_all && !want_last) return;
    prep(c, PREP_NORM, acts(&m->output), c->x, NULL, m->out_norm.data, c->xb, d, nt);
    matmul(c, &m->output, logits, NULL, NULL, NULL, NULL, c->xb, nt, 0);
    const float cap = m->final_softcap;
    if (cap > 0.0f)
        for (size_t i = 0; i < (size_t)nt * m->n_vocab; i++) logits[i] = cap * tanhf(logits[i] / cap);
}

void forward(ctx_t *c, const int *tokens, int n, int pos0, int all_logits) {
    if (pos0 + n > c->n_ctx) farm_fail("context overflow: %d tokens > n_ctx %d", pos0 + n, c->n_ctx);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->m->n_vocab)
            farm_fail("token id %d out of range [0, %d)", tokens[i], c->m->n_vocab);
    for (int b0 = 0; b0 < n; b0 += c->n_ubatch) {
        const int nb = n - b0 < c->n_ubatch ? n - b0 : c->n_ubatch;
        float *lg = all_logits ? c->logits + (size_t)(pos0 + b0) * c->m->n_vocab : c->logits;
        forward_ubatch(c, tokens + b0, nb, pos0 + b0, lg, all_logits, b0 + nb == n);
    }
}
