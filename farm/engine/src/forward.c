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
    c->scores = xalloc((size_t)pool_size(c->pool) * c->n_ctx * 4);
    c->rope_cs = xalloc(U * m->head_dim * 4);
    c->n_logits = all_logits ? c->n_ctx : 1;
    c->logits = xalloc((size_t)c->n_logits * m->n_vocab * 4);
}

void ctx_free(ctx_t *c) {
    pool_destroy(c->pool);
    void *bufs[] = {c->kcache, c->vcache, c->x,     c->xb,     c->q,      c->k,      c->v,       c->att,
                    c->hb,     c->hb2,    c->xq[1], c->xq[2], c->xq[3], c->xsum, c->scores, c->rope_cs, c->logits};
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

static void attn_task(void *arg, int ith, int nth) {
    (void)nth;
    qkv_job *j = arg;
    ctx_t *c = j->c;
    const model_t *m = c->m;
    const int hd = m->head_dim, nh = j->L->n_heads, qd = nh * hd, group = nh / j->L->n_kv_heads;
    const float scale = m->attn_scale, cap = m->attn_softcap;
    const int n_swa = j->L->n_swa;
    float *sc = c->scores + (size_t)ith * c->n_ctx;
    for (;;) {
        const int item = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (item >= j->n_tok * nh) return;
        const int t = item / nh, h = item % nh, kvh = h / group, pos = j->pos0 + t;
        const float *q = c->q + (size_t)t * qd + h * hd;
        const size_t base = ((size_t)j->L->kv_head0 + kvh) * c->n_ctx * hd;
        const int p0 = n_swa && pos >= n_swa ? pos - n_swa + 1 : 0; /* llama.cpp masks pos - p >= n_swa */
        float mx = -INFINITY;
        for (int p = p0; p <= pos; p++) {
            const size_t off = base + (size_t)p * hd;
            const float s = c->kv_f16 ? vec_dot_f16(hd, (const f16_t *)c->kcache + off, q)
                                      : vec_dot_f32(hd, (const float *)c->kcache + off, q);
            sc[p] = cap > 0.0f ? cap * tanhf(s * scale / cap) : s * scale;
            if (sc[p] > mx) mx = sc[p];
        }
        float sum = 0.0f;
        for (int p = p0; p <= pos; p++) sum += (sc[p] = expf(sc[p] - mx));
        float *out = c->att + (size_t)t * qd + h * hd;
        memset(out, 0, (size_t)hd * 4);
        const float inv = 1.0f / sum;
        for (int p = p0; p <= pos; p++) {
            const size_t off = base + (size_t)p * hd;
            if (c->kv_f16) axpy_f16(hd, sc[p] * inv, (const f16_t *)c->vcache + off, out);
            else axpy_f32(hd, sc[p] * inv, (const float *)c->vcache + off, out);
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
