/* The model (weights in the mmapped GGUF) and an inference context (KV cache, scratch, threads). */
#ifndef FARM_MODEL_H
#define FARM_MODEL_H

#include <stdint.h>

#include "gguf.h"
#include "quant.h"
#include "threadpool.h"

typedef struct {
    int type;      /* GT_* */
    int n_in;      /* row length (ggml ne[0]) */
    int n_out;     /* rows (ggml ne[1]) */
    size_t row_bytes; /* ggml layout; packed tensors: see pack.c */
    const void *data;
    int packed;       /* data is pack.c's layout (PACK_ROWS rows interleaved), in memory the model owns */
} tensor_t;

/* Row r of a matrix as f32 (embedding lookup), whatever its layout. */
void tensor_row(const tensor_t *t, int r, float *dst);

typedef struct {
    tensor_t attn_norm, wq, wk, wv, bq, bk, bv, wo, ffn_norm, wgate, wup, wdown;
    tensor_t attn_post_norm, ffn_post_norm; /* gemma2: RMSNorm of the attention / FFN output (NULL data: none) */
    tensor_t q_norm, k_norm;                /* openelm: RMSNorm of each query / key head before RoPE */
    int has_bias, n_swa;                    /* n_swa: sliding window (keys within n_swa positions), 0: full */
    int n_heads, n_kv_heads, d_ff, kv_head0; /* per layer (OpenELM); kv_head0: KV heads of the layers before */
} layer_t;

/* The gated FFN's activation: act(W_gate x) * W_up x. */
enum { FFN_SILU, FFN_RELU, FFN_GELU }; /* GELU: tanh approximation (Gemma's gelu_pytorch_tanh) */

typedef struct {
    gguf_file gg;
    char arch[32], name[128];
    int n_layers, d_model, n_heads, n_kv_heads, head_dim, d_ff, n_vocab, n_ctx_train; /* heads, d_ff: the largest */
    int n_kv_total; /* KV heads summed over layers (the cache's size) */
    int rope_neox; /* llama.cpp: qwen2 -> NEOX (i, i+d/2), llama -> NORM (2i, 2i+1) */
    float rope_theta, rms_eps;
    int tied, qkv_bias, main_type;
    int ffn_act; /* FFN_*: silu (llama.cpp's llama/qwen2), or relu from farm's key farm.hidden_act (PhoneLM) */
    /* gemma2: embeddings scaled by emb_scale (sqrt(d_model)), scores (and logits) soft-capped: cap*tanh(s/cap) */
    float emb_scale, attn_scale, attn_softcap, final_softcap; /* caps 0: none */    int64_t n_params;
    tensor_t tok_embd, out_norm, output;
    const float *rope_freqs; /* llama3 rope scaling: angle i is divided by rope_freqs[i] (NULL: none) */
    layer_t *layers;
    void **owned; /* packed weights */
    int n_owned;
} model_t;

void model_load(model_t *m, const char *path);
void model_free(model_t *m);

typedef struct {
    const model_t *m;
    pool_t *pool;
    int n_ctx, n_ubatch, kv_f16;
    void *kcache, *vcache; /* [layer][kv_head][pos][head_dim], f16 or f32 */
    /* scratch, sized for n_ubatch tokens */
    float *x, *xb, *q, *k, *v, *att, *hb, *hb2, *scores, *rope_cs;
    float *kv_f32; /* attention: per thread, K and V rows of one KV head converted to f32 (kv_f32_rows each) */
    int kv_f32_rows;
    void *xq[4]; /* activations converted for the matmul, by ACT_* kind: q8_0, q8_1 or q8_K blocks */
    q8_0_sum *xsum; /* per q8_0 activation block: its scale as f32 and the sum of its quants */
    float *logits; /* [n_logits][n_vocab] */
    int n_logits;
} ctx_t;

void ctx_init(ctx_t *c, const model_t *m, int n_ctx, int n_ubatch, int n_threads, int kv_f16, int all_logits);
void ctx_free(ctx_t *c);

/* Runs n tokens at positions pos0.. through the model (batched, in ubatches of n_ubatch). Afterwards
 * c->logits holds the last token's logits, or every token's when all_logits (c->n_logits rows). */
void forward(ctx_t *c, const int *tokens, int n, int pos0, int all_logits);

#endif
