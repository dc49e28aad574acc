/* Model loading: maps llama.cpp's GGUF tensor names and metadata keys onto model_t, and checks shapes so a
 * foreign or broken file is refused with a clear message (exit 2) instead of crashing later. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common.h"

static const char *g_path;

static tensor_t get_tensor(const model_t *m, const char *name, int n_in, int n_out, int optional) {
    tensor_t t = {0};
    const gguf_tensor *gt = gguf_tensor_find(&m->gg, name);
    if (!gt) {
        if (optional) return t;
        farm_fail("%s: missing tensor %s", g_path, name);
    }
    if (gguf_row_bytes(gt->type, 256) == 0)
        farm_fail("%s: tensor %s has type %s (ggml type %u), which this engine does not run (supported: f32, f16, "
                  "q8_0, q4_0, q4_1, q5_0, q5_1, q4_K, q5_K, q6_K)", g_path, name, gguf_type_name(gt->type), gt->type);
    if (gt->ne[0] != n_in || gt->ne[1] != n_out || gt->ne[2] != 1 || gt->ne[3] != 1)
        farm_fail("%s: tensor %s has shape [%lld, %lld], expected [%d, %d]", g_path, name, (long long)gt->ne[0],
                  (long long)gt->ne[1], n_in, n_out);
    const int block = gt->type == GT_Q4_K || gt->type == GT_Q5_K || gt->type == GT_Q6_K ? QK_K
                      : gt->type == GT_F32 || gt->type == GT_F16                      ? 1
                                                                                       : QK;
    if (n_in % block)
        farm_fail("%s: tensor %s (%s) row length %d is not a multiple of %d", g_path, name, gguf_type_name(gt->type),
                  n_in, block);
    t.type = (int)gt->type;
    t.n_in = n_in;
    t.n_out = n_out;
    t.row_bytes = gguf_row_bytes(gt->type, n_in);
    t.data = gt->data;
    return t;
}

static void own(model_t *m, void *p) {
    void **owned = realloc(m->owned, (size_t)(m->n_owned + 1) * sizeof *owned);
    if (!owned) farm_fail("out of memory");
    m->owned = owned;
    m->owned[m->n_owned++] = p;
}

/* A vector (norm weight, bias, rope factors), copied out of the file: after loading, the forward pass reads no
 * page of the mapping but those of matrices it runs unpacked. A read of a few bytes there would fault in (and
 * count in RSS) the neighbouring pages around it too, packed matrices' dropped pages included (measured: +74 MB
 * of RssFile on SmolLM2 q8_0 from its 61 norm vectors). */
static tensor_t get_vec(model_t *m, const char *name, int n, int optional) {
    tensor_t t = get_tensor(m, name, n, 1, optional);
    if (!t.data) return t;
    if (t.type != GT_F32) farm_fail("%s: tensor %s must be f32", g_path, name);
    float *copy = malloc((size_t)n * sizeof *copy);
    if (!copy) farm_fail("out of memory");
    memcpy(copy, t.data, (size_t)n * sizeof *copy);
    own(m, copy);
    t.data = copy;
    return t;
}

static int key_int(const model_t *m, const char *suffix, int dflt, int required) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", m->arch, suffix);
    if (required && !gguf_find(&m->gg, key)) farm_fail("%s: missing metadata key %s", g_path, key);
    int64_t v = gguf_get_int(&m->gg, key, dflt);
    if (v <= 0 || v > (1 << 30)) farm_fail("%s: bad value %lld for %s", g_path, (long long)v, key);
    return (int)v;
}

/* farm.hidden_act: farm's own key (llama.cpp has no FFN-activation key for these archs and runs SiLU). */
static int ffn_activation(const model_t *m) {
    char act[16];
    if (!gguf_get_str(&m->gg, "farm.hidden_act", act, sizeof act) || !strcmp(act, "silu")) return FFN_SILU;
    if (!strcmp(act, "relu")) return FFN_RELU;
    farm_fail("%s: farm.hidden_act '%s' is not silu or relu", g_path, act);
    return FFN_SILU;
}

/* One value per layer: element l of an array key (OpenELM), or the scalar every layer shares. */
static int key_int_at(const model_t *m, const char *suffix, int l, int dflt, int required) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", m->arch, suffix);
    if (required && !gguf_find(&m->gg, key)) farm_fail("%s: missing metadata key %s", g_path, key);
    int64_t v = gguf_get_int_at(&m->gg, key, (uint64_t)l, dflt);
    if (v <= 0 || v > (1 << 30)) farm_fail("%s: bad value %lld for %s (layer %d)", g_path, (long long)v, key, l);
    return (int)v;
}

/* Layer l's head counts and FFN width; the model's are the largest (buffer sizes), n_kv_total their sum. */
static void layer_shape(model_t *m, int l) {
    layer_t *L = &m->layers[l];
    L->n_heads = key_int_at(m, "attention.head_count", l, 0, 1);
    L->n_kv_heads = key_int_at(m, "attention.head_count_kv", l, L->n_heads, 0);
    L->d_ff = key_int_at(m, "feed_forward_length", l, 0, 1);
    if (L->n_heads % L->n_kv_heads) farm_fail("%s: layer %d: head_count not a multiple of head_count_kv", g_path, l);
    L->kv_head0 = m->n_kv_total;
    m->n_kv_total += L->n_kv_heads;
    if (L->n_heads > m->n_heads) m->n_heads = L->n_heads;
    if (L->n_kv_heads > m->n_kv_heads) m->n_kv_heads = L->n_kv_heads;
    if (L->d_ff > m->d_ff) m->d_ff = L->d_ff;
}

/* The rows [r0, r0 + n) of a matrix, as a matrix (q, k and v inside a fused attn_qkv). */
static tensor_t rows(tensor_t t, int r0, int n) {
    t.data = (const char *)t.data + (size_t)r0 * t.row_bytes;
    t.n_out = n;
    return t;
}

static float key_float(const model_t *m, const char *suffix, double dflt) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", m->arch, suffix);
    return (float)gguf_get_float(&m->gg, key, dflt);
}

/* Gemma-2 as llama.cpp's gemma2 graph runs it: embeddings x sqrt(d_model); queries scaled by 1/sqrt(head_dim),
 * except the 27B (46 layers), whose query_pre_attn_scalar is d_model / n_heads (the file has no key for it);
 * score and logit soft-capping (llama.cpp's defaults 50 and 30 when absent). Sliding windows: per layer. */
static void load_gemma2(model_t *m) {
    m->emb_scale = sqrtf((float)m->d_model);
    if (m->n_layers == 46) m->attn_scale = 1.0f / sqrtf((float)(m->d_model / m->n_heads));
    m->attn_softcap = key_float(m, "attn_logit_softcapping", 50.0);
    m->final_softcap = key_float(m, "final_logit_softcapping", 30.0);
}

void tensor_row(const tensor_t *t, int r, float *dst) {
    if (t->packed) pack_row(t->type, t->data, t->n_in, r, dst);
    else dequant_row(t->type, (const char *)t->data + (size_t)r * t->row_bytes, dst, t->n_in);
}

/* A matrix in pack.c's layout, in memory the model owns. It is packed a few hundred rows at a time, and the
 * file's pages each chunk was read from leave the process's resident set right away (MAP_PRIVATE and never
 * written: a later read would fault them in again). So loading never holds a tensor twice, and the engine's
 * peak RSS stays what it runs with (weights, KV cache, scratch), not a load-time transient. */
#define PACK_CHUNK_ROWS 256
static void pack(model_t *m, tensor_t *t) {
    if (!t->data || t->packed || !pack_type(t->type)) return;
    void *p = NULL;
    if (posix_memalign(&p, 64, pack_bytes(t->type, t->n_in, t->n_out)) != 0)
        farm_fail("%s: out of memory packing a %dx%d matrix", g_path, t->n_out, t->n_in);
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t dropped = ((uintptr_t)t->data + page - 1) & ~(page - 1);
    for (int r = 0; r < t->n_out; r += PACK_CHUNK_ROWS) {
        const int n = t->n_out - r < PACK_CHUNK_ROWS ? t->n_out - r : PACK_CHUNK_ROWS;
        const char *src = (const char *)t->data + (size_t)r * t->row_bytes;
        pack_matrix(t->type, src, t->row_bytes, t->n_in, n,
                    (char *)p + (size_t)(r / PACK_ROWS) * pack_group_bytes(t->type, t->n_in));
        const uintptr_t end = ((uintptr_t)src + (size_t)n * t->row_bytes) & ~(page - 1);
        if (end > dropped) {
            madvise((void *)dropped, end - dropped, MADV_DONTNEED);
            dropped = end;
        }
    }
    own(m, p);
    t->data = p;
    t->packed = 1;
}

void model_load(model_t *m, const char *path) {
    memset(m, 0, sizeof *m);
    g_path = path;
    gguf_open(&m->gg, path);
    if (!gguf_get_str(&m->gg, "general.architecture", m->arch, sizeof m->arch))
        farm_fail("%s: missing general.architecture", path);
    const int gemma2 = !strcmp(m->arch, "gemma2"), openelm = !strcmp(m->arch, "openelm");
    if (strcmp(m->arch, "llama") != 0 && strcmp(m->arch, "qwen2") != 0 && !gemma2 && !openelm)
        farm_fail("%s: unsupported architecture '%s' (supported: llama, qwen2, gemma2, openelm)", path, m->arch);
    if (!gguf_get_str(&m->gg, "general.name", m->name, sizeof m->name)) strcpy(m->name, "");
    m->rope_neox = !strcmp(m->arch, "qwen2") || gemma2 || openelm;
    m->ffn_act = gemma2 ? FFN_GELU : ffn_activation(m);
    m->n_layers = key_int(m, "block_count", 0, 1);
    m->d_model = key_int(m, "embedding_length", 0, 1);
    m->layers = calloc((size_t)m->n_layers, sizeof *m->layers);
    for (int l = 0; l < m->n_layers; l++) layer_shape(m, l);
    m->head_dim = key_int(m, "attention.key_length", m->d_model / m->layers[0].n_heads, 0);
    m->n_ctx_train = key_int(m, "context_length", 2048, 0);
    char key[128];
    snprintf(key, sizeof key, "%s.rope.freq_base", m->arch);
    m->rope_theta = (float)gguf_get_float(&m->gg, key, 10000.0);
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", m->arch);
    m->rms_eps = (float)gguf_get_float(&m->gg, key, 1e-5);
    if (m->head_dim % 2) farm_fail("%s: odd head dimension", path);
    if (key_int(m, "attention.value_length", m->head_dim, 0) != m->head_dim)
        farm_fail("%s: value_length != key_length is not supported", path);
    m->emb_scale = 1.0f;
    m->attn_scale = 1.0f / sqrtf((float)m->head_dim);
    if (gemma2) load_gemma2(m);

    const gguf_tensor *emb = gguf_tensor_find(&m->gg, "token_embd.weight");
    if (!emb) farm_fail("%s: missing tensor token_embd.weight", path);
    m->n_vocab = (int)emb->ne[1];
    const int d = m->d_model, hd = m->head_dim;
    m->tok_embd = get_tensor(m, "token_embd.weight", d, m->n_vocab, 0);
    m->out_norm = get_vec(m, "output_norm.weight", d, 0);
    m->output = get_tensor(m, "output.weight", d, m->n_vocab, 1);
    m->tied = m->output.data == NULL;
    if (m->tied) m->output = m->tok_embd;
    m->rope_freqs = get_vec(m, "rope_freqs.weight", m->head_dim / 2, 1).data;
    char name[96];
#define T(field, nm, nin, nout) \
    (snprintf(name, sizeof name, "blk.%d." nm, l), L->field = get_tensor(m, name, nin, nout, 0))
#define V(field, nm, n, opt) (snprintf(name, sizeof name, "blk.%d." nm, l), L->field = get_vec(m, name, n, opt))
    for (int l = 0; l < m->n_layers; l++) {
        layer_t *L = &m->layers[l];
        const int qd = L->n_heads * hd, kvd = L->n_kv_heads * hd;
        V(attn_norm, "attn_norm.weight", d, 0);
        snprintf(name, sizeof name, "blk.%d.attn_qkv.weight", l);
        if (gguf_tensor_find(&m->gg, name)) { /* fused, q heads then k then v (llama.cpp's openelm, phi3) */
            const tensor_t qkv = get_tensor(m, name, d, qd + 2 * kvd, 0);
            L->wq = rows(qkv, 0, qd);
            L->wk = rows(qkv, qd, kvd);
            L->wv = rows(qkv, qd + kvd, kvd);
        } else {
            T(wq, "attn_q.weight", d, qd);
            T(wk, "attn_k.weight", d, kvd);
            T(wv, "attn_v.weight", d, kvd);
        }
        V(q_norm, "attn_q_norm.weight", hd, !openelm);
        V(k_norm, "attn_k_norm.weight", hd, !openelm);
        if ((L->q_norm.data == NULL) != (L->k_norm.data == NULL))
            farm_fail("%s: layer %d has only one of the q/k norms", path, l);
        V(bq, "attn_q.bias", qd, 1);
        V(bk, "attn_k.bias", kvd, 1);
        V(bv, "attn_v.bias", kvd, 1);
        L->has_bias = L->bq.data != NULL;
        if (L->has_bias != (L->bk.data != NULL) || L->has_bias != (L->bv.data != NULL))
            farm_fail("%s: layer %d has only some of the q/k/v biases", path, l);
        T(wo, "attn_output.weight", qd, d);
        V(ffn_norm, "ffn_norm.weight", d, 0);
        T(wgate, "ffn_gate.weight", d, L->d_ff);
        T(wup, "ffn_up.weight", d, L->d_ff);
        T(wdown, "ffn_down.weight", L->d_ff, d);
        if (gemma2) {
            V(attn_post_norm, "post_attention_norm.weight", d, 0);
            V(ffn_post_norm, "post_ffw_norm.weight", d, 0);
            L->n_swa = l % 2 == 0 ? key_int(m, "attention.sliding_window", 4096, 0) : 0; /* llama.cpp: pattern 2 */
        }
        m->qkv_bias |= L->has_bias;
    }
#undef T
#undef V
    for (int l = 0; l < m->n_layers; l++) {
        layer_t *L = &m->layers[l];
        tensor_t *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->wgate, &L->wup, &L->wdown};
        for (size_t i = 0; i < sizeof mats / sizeof *mats; i++) pack(m, mats[i]);
    }
    pack(m, &m->output);
    if (m->tied) m->tok_embd = m->output; /* one copy: the lookup reads rows of the packed matrix */
    m->main_type = m->layers[0].wq.type;
    for (uint64_t i = 0; i < m->gg.n_tensors; i++) {
        const gguf_tensor *t = &m->gg.tensors[i];
        m->n_params += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    }
}

void model_free(model_t *m) {
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    gguf_close(&m->gg);
}
