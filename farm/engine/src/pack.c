/* q4_0, q5_0, q8_0, q4_K and q6_K matrices repacked at load time, eight rows interleaved per block, and their
 * matmul kernels.
 *
 * Why: with ggml's row-major blocks, an AVX2 dot product of one weight block and one activation block puts
 * 8 partial sums of ONE output in a vector, so every block of every output pays its own int32->float
 * conversion, scale multiply and FMA, and every weight block its own unpacking (the old 2x2 tiles: ~10
 * vector ops per 32-element dot for q4_0, ~8 for q8_0). Here the 8 lanes of a vector are 8 different
 * rows: vector c of a block holds elements 4c..4c+3 of the 8 rows, and is multiplied with one token's
 * 4 activation bytes broadcast to all lanes. So one maddubs does 4 elements of 8 rows, the conversion, scale
 * and FMA serve 8 outputs, and a weight block is unpacked once for up to 4 tokens. For q4_0 the nibbles
 * enter maddubs unsigned (0..15, no sign trick) and the -8 offset is taken off once per block with the
 * activation block's precomputed sum (8 * sum(q)); its eight 4-element products fit int16 (8 * 2*15*127 <
 * 32767), so a block's 32 products are summed with 8 maddubs + 7 adds + 1 madd. The k-quants work the same way
 * per sub-block (see their kernels). Measured on a 2-core x86 VM, SmolLM2-135M pp512, 1 thread: q4_0 145 -> 270
 * t/s, q8_0 185 -> 260 t/s (bench/engine_vs_llamacpp.py: 1.5-2.0x llama.cpp's prefill with attention's rework).
 *
 * Every output is computed with the same operations whatever the tile (1..4 tokens, any 8-row group):
 * acc = fma(d_w * d_x, float(block's integer dot), acc) over the blocks in order. So results do not depend
 * on thread count or on how tokens are tiled, and decode (1 token) gives prefill's numbers.
 *
 * AVX2 and NEON have kernels for the 32-block types; q4_K and q6_K are packed only where AVX2 or the portable body
 * runs them (pack_type). The portable body of gemm_packed (block_term; scalar builds) is the definition
 * farm-kcheck holds every build's kernels to, bit for bit. */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "common.h"
#include "gguf.h"
#include "quant.h"

#if defined(FARM_AVX2)
#include <immintrin.h>
#elif defined(FARM_NEON)
#include <arm_neon.h>
#endif

/* q4_K / q6_K packed need AVX2 or the portable body; NEON builds run them row-major (kquant.c). */
int pack_type(int type) {
#if defined(FARM_NEON)
    if (type == GT_Q4_K || type == GT_Q6_K) return 0;
#endif
    return type == GT_Q4_0 || type == GT_Q5_0 || type == GT_Q8_0 || type == GT_Q4_K || type == GT_Q6_K;
}

static size_t group_block_bytes(int type) {
    switch (type) {
    case GT_Q4_0: return sizeof(block_q4_0x8);
    case GT_Q5_0: return sizeof(block_q5_0x8);
    case GT_Q4_K: return sizeof(block_q4_Kx8);
    case GT_Q6_K: return sizeof(block_q6_Kx8);
    default: return sizeof(block_q8_0x8);
    }
}

static int block_len(int type) { return type == GT_Q4_K || type == GT_Q6_K ? QK_K : QK; }

/* q6_K element i (0..255) as 0..63 (value = d * sc[i / 16] * (q - 32)), ggml's dequantize_row_q6_K order. */
static void q6_K_values(const block_q6_K *b, uint8_t q[QK_K]) {
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
        for (int l = 0; l < 32; l++) {
            q[128 * h + l] = (uint8_t)((ql[l] & 0xF) | ((qh[l] & 3) << 4));
            q[128 * h + l + 32] = (uint8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
            q[128 * h + l + 64] = (uint8_t)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
            q[128 * h + l + 96] = (uint8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
        }
    }
}

static inline int q6_at(const block_q6_Kx8 *s, int r, int i) { /* packed element i of row r, 0..63 */
    const int c = i / 4, e = i % 4, v = c % 32, u = c % 16;
    const uint8_t nib = c < 32 ? s->ql[v][4 * r + e] & 0xF : s->ql[v][4 * r + e] >> 4;
    return nib | ((s->qh[u][4 * r + e] >> (2 * (c / 16))) & 3) << 4;
}

static inline int q5_bit(uint32_t qh, int i) { return (qh >> i) & 1; }

size_t pack_group_bytes(int type, int n_in) { return (size_t)(n_in / block_len(type)) * group_block_bytes(type); }

size_t pack_bytes(int type, int n_in, int n_out) {
    return (size_t)((n_out + PACK_ROWS - 1) / PACK_ROWS) * pack_group_bytes(type, n_in);
}

void pack_matrix(int type, const void *src, size_t row_bytes, int n_in, int n_out, void *dst) {
    const int nb = n_in / block_len(type), groups = (n_out + PACK_ROWS - 1) / PACK_ROWS;
    memset(dst, 0, pack_bytes(type, n_in, n_out)); /* padding rows: zero scales, so zero outputs */
    for (int g = 0; g < groups; g++)
        for (int r = 0; r < PACK_ROWS && g * PACK_ROWS + r < n_out; r++) {
            const char *row = (const char *)src + (size_t)(g * PACK_ROWS + r) * row_bytes;
            for (int b = 0; b < nb; b++) {
                if (type == GT_Q4_0 || type == GT_Q5_0) { /* d, then (q5_0) qh, then the nibbles */
                    const int q5 = type == GT_Q5_0;
                    const char *s = row + (size_t)b * (q5 ? sizeof(block_q5_0) : sizeof(block_q4_0));
                    char *d = (char *)dst + ((size_t)g * nb + b) * group_block_bytes(type);
                    uint8_t *qs = (uint8_t *)d + (q5 ? offsetof(block_q5_0x8, qs) : offsetof(block_q4_0x8, qs));
                    memcpy(d + 2 * r, s, 2);
                    const char *sq = s + (q5 ? offsetof(block_q5_0, qs) : offsetof(block_q4_0, qs));
                    for (int j = 0; j < 4; j++) memcpy(qs + 32 * j + 4 * r, sq + 4 * j, 4);
                    if (q5) {
                        uint32_t qh, *dqh = ((block_q5_0x8 *)d)->qh;
                        memcpy(&qh, ((const block_q5_0 *)s)->qh, 4);
                        for (int c = 0; c < 8; c++)
                            for (int e = 0; e < 4; e++) dqh[c] |= (uint32_t)q5_bit(qh, 4 * c + e) << (4 * r + e);
                    }
                } else if (type == GT_Q6_K) {
                    const block_q6_K *s = (const block_q6_K *)row + b;
                    block_q6_Kx8 *d = (block_q6_Kx8 *)dst + (size_t)g * nb + b;
                    uint8_t q[QK_K];
                    q6_K_values(s, q);
                    d->d[r] = s->d;
                    for (int k = 0; k < 16; k++) d->sc[k][r] = s->scales[k];
                    for (int c = 0; c < 64; c++)
                        for (int e = 0; e < 4; e++) {
                            const uint8_t v = q[4 * c + e];
                            d->ql[c % 32][4 * r + e] |= (uint8_t)((v & 0xF) << (c < 32 ? 0 : 4));
                            d->qh[c % 16][4 * r + e] |= (uint8_t)((v >> 4) << (2 * (c / 16)));
                        }
                } else if (type == GT_Q4_K) {
                    const block_q4_K *s = (const block_q4_K *)row + b;
                    block_q4_Kx8 *d = (block_q4_Kx8 *)dst + (size_t)g * nb + b;
                    d->d[r] = s->d;
                    d->dmin[r] = s->dmin;
                    for (int k = 0; k < 8; k++) scale_min_k4(k, s->scales, &d->sc[k][r], &d->m[k][r]);
                    for (int j = 0; j < 4; j++)
                        for (int c = 0; c < 8; c++) memcpy(d->qs[j][c] + 4 * r, s->qs + 32 * j + 4 * c, 4);
                } else {
                    const block_q8_0 *s = (const block_q8_0 *)row + b;
                    block_q8_0x8 *d = (block_q8_0x8 *)dst + (size_t)g * nb + b;
                    d->d[r] = s->d;
                    for (int c = 0; c < 8; c++) memcpy(d->qs + 32 * c + 4 * r, s->qs + 4 * c, 4);
                }
            }
        }
}

void pack_row(int type, const void *packed, int n_in, int row, float *dst) {
    const int nb = n_in / block_len(type), g = row / PACK_ROWS, r = row % PACK_ROWS;
    for (int b = 0; b < nb; b++) {
        float *y = dst + b * block_len(type);
        if (type == GT_Q6_K) {
            const block_q6_Kx8 *s = (const block_q6_Kx8 *)packed + (size_t)g * nb + b;
            const float d = fp16_to_f32(s->d[r]);
            for (int i = 0; i < QK_K; i++) y[i] = d * s->sc[i / 16][r] * (q6_at(s, r, i) - 32);
        } else if (type == GT_Q4_K) {
            const block_q4_Kx8 *s = (const block_q4_Kx8 *)packed + (size_t)g * nb + b;
            const float d = fp16_to_f32(s->d[r]), dmin = fp16_to_f32(s->dmin[r]);
            for (int j = 0; j < 4; j++)
                for (int c = 0; c < 8; c++)
                    for (int e = 0; e < 4; e++) {
                        const uint8_t q = s->qs[j][c][4 * r + e];
                        y[64 * j + 4 * c + e] = d * s->sc[2 * j][r] * (q & 0x0f) - dmin * s->m[2 * j][r];
                        y[64 * j + 32 + 4 * c + e] = d * s->sc[2 * j + 1][r] * (q >> 4) - dmin * s->m[2 * j + 1][r];
                    }
        } else if (type == GT_Q4_0 || type == GT_Q5_0) {
            const int q5 = type == GT_Q5_0, off = q5 ? 16 : 8;
            const char *blk = (const char *)packed + ((size_t)g * nb + b) * group_block_bytes(type);
            const uint8_t *qs = (const uint8_t *)blk + (q5 ? offsetof(block_q5_0x8, qs) : offsetof(block_q4_0x8, qs));
            const uint32_t *qh = q5 ? ((const block_q5_0x8 *)blk)->qh : NULL;
            const float d = fp16_to_f32(((const f16_t *)blk)[r]); /* d[8] comes first */
            for (int j = 0; j < 4; j++)
                for (int e = 0; e < 4; e++) {
                    const uint8_t q = qs[32 * j + 4 * r + e];
                    const int h0 = q5 ? 16 * q5_bit(qh[j], 4 * r + e) : 0;
                    const int h1 = q5 ? 16 * q5_bit(qh[j + 4], 4 * r + e) : 0;
                    y[4 * j + e] = ((q & 0x0f) + h0 - off) * d;
                    y[16 + 4 * j + e] = ((q >> 4) + h1 - off) * d;
                }
        } else {
            const block_q8_0x8 *s = (const block_q8_0x8 *)packed + (size_t)g * nb + b;
            const float d = fp16_to_f32(s->d[r]);
            for (int c = 0; c < 8; c++)
                for (int e = 0; e < 4; e++) y[4 * c + e] = s->qs[32 * c + 4 * r + e] * d;
        }
    }
}

void q8_0_sums(const block_q8_0 *x, q8_0_sum *s, int nb) {
    for (int b = 0; b < nb; b++) {
        int sum = 0;
        for (int i = 0; i < QK; i++) sum += x[b].qs[i];
        s[b].d = fp16_to_f32(x[b].d);
        s[b].s = sum;
    }
}

#if defined(FARM_AVX2)
/* Software prefetch distance of the weight stream. Decode reads each weight once per token, so it is bound by
 * how many cache misses are in flight; measured with the earlier row-major GEMV on a 2-core x86 VM (q4_0, 0.5B
 * model, 1 thread): 144 B ahead 12.6 tok/s, 1.7 KB 18 tok/s, 4.6 KB 20 tok/s. Groups are contiguous, so this
 * also runs ahead into the next group. */
#define PACK_PREFETCH 4096

static inline __m256i bcast4(const int8_t *p) { /* 4 activation bytes to every lane (qs is not 4-aligned) */
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* q5_0's 5th bits: bit i -> byte i = 0x10 (ggml's bytes_from_bits_32). */
static inline __m256i q5_high(uint32_t bits) {
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    const __m256i b = _mm256_or_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuf),
                                      _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_and_si256(_mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1)), _mm256_set1_epi8(0x10));
}

/* q4_0 (Q5 = 0) and q5_0 (Q5 = 1) groups of `nb` blocks of `bsz` bytes, NT tokens. Q5, bsz and NT are
 * compile-time constants after inlining, so acc[] stays in registers and the q5_0 parts vanish for q4_0.
 * q5_0 values are 0..31 (unsigned, offset 16): 8 * 2*31*127 would overflow int16, so its products are summed
 * in two halves of 4 maddubs; q4_0's 8 fit in one. */
static inline __attribute__((always_inline)) void gemm_nibbles_x8(int nb, const char *w, const size_t bsz, const int Q5,
                                                                const block_q8_0 *x, size_t xs, const q8_0_sum *xi,
                                                                size_t xis, const int NT, float *out) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    const size_t qs_off = Q5 ? offsetof(block_q5_0x8, qs) : offsetof(block_q4_0x8, qs);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int b = 0; b < nb; b++) {
        const char *blk = w + (size_t)b * bsz, *pf = blk + PACK_PREFETCH;
        for (size_t k = 0; k < bsz; k += 64) _mm_prefetch(pf + k, _MM_HINT_T0);
        __m256i q[8];
        for (int j = 0; j < 4; j++) {
            const __m256i p = _mm256_loadu_si256((const __m256i *)(blk + qs_off + 32 * j));
            q[j] = _mm256_and_si256(p, m4);                           /* elements 4j..4j+3 of the 8 rows */
            q[j + 4] = _mm256_and_si256(_mm256_srli_epi16(p, 4), m4); /* elements 16+4j.. */
            if (Q5) {
                const block_q5_0x8 *b5 = (const block_q5_0x8 *)blk;
                q[j] = _mm256_or_si256(q[j], q5_high(b5->qh[j]));
                q[j + 4] = _mm256_or_si256(q[j + 4], q5_high(b5->qh[j + 4]));
            }
        }
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)blk)); /* d[8] comes first */
        for (int t = 0; t < NT; t++) {
            const int8_t *y = ((const block_q8_0 *)((const char *)x + t * xs))[b].qs;
            const q8_0_sum *yi = xi + t * xis + b;
            __m256i s0 = _mm256_maddubs_epi16(q[0], bcast4(y)), s1 = _mm256_maddubs_epi16(q[4], bcast4(y + 16));
            for (int c = 1; c < 4; c++) {
                s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(q[c], bcast4(y + 4 * c)));
                s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(q[c + 4], bcast4(y + 16 + 4 * c)));
            }
            const __m256i sum = Q5 ? _mm256_add_epi32(_mm256_madd_epi16(s0, ones), _mm256_madd_epi16(s1, ones))
                                   : _mm256_madd_epi16(_mm256_add_epi16(s0, s1), ones);
            const __m256i dot = _mm256_sub_epi32(sum, _mm256_set1_epi32((Q5 ? 16 : 8) * yi->s));
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(yi->d)), _mm256_cvtepi32_ps(dot), acc[t]);
        }
    }
    for (int t = 0; t < NT; t++) _mm256_storeu_ps(out + 8 * t, acc[t]);
}

static inline __attribute__((always_inline)) void gemm_q8_0x8(int nb, const block_q8_0x8 *w, const block_q8_0 *x,
                                                            size_t xs, const q8_0_sum *xi, size_t xis, const int NT,
                                                            float *out) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int b = 0; b < nb; b++) {
        const char *pf = (const char *)(w + b) + PACK_PREFETCH;
        for (int k = 0; k < 5; k++) _mm_prefetch(pf + 64 * k, _MM_HINT_T0);
        __m256i dot[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                          _mm256_setzero_si256()};
        for (int c = 0; c < 8; c++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(w[b].qs + 32 * c)), a = _mm256_sign_epi8(q, q);
            for (int t = 0; t < NT; t++) { /* |q| * (y * sign q): maddubs needs one unsigned operand */
                const int8_t *y = ((const block_q8_0 *)((const char *)x + t * xs))[b].qs + 4 * c;
                const __m256i p = _mm256_maddubs_epi16(a, _mm256_sign_epi8(bcast4(y), q));
                dot[t] = _mm256_add_epi32(dot[t], _mm256_madd_epi16(p, ones));
            }
        }
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)w[b].d));
        for (int t = 0; t < NT; t++)
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(xi[t * xis + b].d)), _mm256_cvtepi32_ps(dot[t]),
                                     acc[t]);
    }
    for (int t = 0; t < NT; t++) _mm256_storeu_ps(out + 8 * t, acc[t]);
}
/* q4_K: per 32-element sub-block s, 8 maddubs summed in int16 (8 * 2*15*128 < 32767), then one madd with
 * the rows' 6-bit scales (each in both int16 halves of its lane) gives sc * dot in int32; the mins enter as
 * sum_s m_s * (bsum_2s + bsum_2s+1) from q8_K's 16-element sums, by madd on (m_2k, m_2k+1) pairs. Per super-block
 * and token: acc = fma(d * d_y, isum, acc), then acc = fma(-dmin * d_y, msum, acc). */
/* The k-quants' per-row scales as madd operands: 8 bytes (one per row) widened to int32 lanes, and two such
 * vectors as (lo, hi) int16 pairs in each lane. */
static inline __m256i u8x8(const uint8_t *p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)); }
static inline __m256i i8x8(const int8_t *p) { return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)); }
static inline __m256i i16_pairs(__m256i lo, __m256i hi) {
    return _mm256_or_si256(_mm256_and_si256(lo, _mm256_set1_epi32(0xFFFF)), _mm256_slli_epi32(hi, 16));
}

static inline __attribute__((always_inline)) void gemm_q4_Kx8(int nsb, const block_q4_Kx8 *w, const block_q8_K *x,
                                                            size_t xs, const int NT, float *out) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int sb = 0; sb < nsb; sb++) {
        const block_q4_Kx8 *B = w + sb;
        __m256i isum[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                           _mm256_setzero_si256()};
        for (int j = 0; j < 4; j++) {
            __m256i slo[4], shi[4];
            for (int t = 0; t < NT; t++) slo[t] = shi[t] = _mm256_setzero_si256();
            for (int c = 0; c < 8; c++) {
                const char *pf = (const char *)B->qs[j][c] + PACK_PREFETCH;
                _mm_prefetch(pf, _MM_HINT_T0);
                const __m256i p = _mm256_loadu_si256((const __m256i *)B->qs[j][c]);
                const __m256i lo = _mm256_and_si256(p, m4), hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), m4);
                for (int t = 0; t < NT; t++) {
                    const int8_t *y = ((const block_q8_K *)((const char *)x + t * xs))[sb].qs + 64 * j + 4 * c;
                    slo[t] = _mm256_add_epi16(slo[t], _mm256_maddubs_epi16(lo, bcast4(y)));
                    shi[t] = _mm256_add_epi16(shi[t], _mm256_maddubs_epi16(hi, bcast4(y + 32)));
                }
            }
            const __m256i lo = u8x8(B->sc[2 * j]), hi = u8x8(B->sc[2 * j + 1]);
            const __m256i sc_lo = i16_pairs(lo, lo), sc_hi = i16_pairs(hi, hi);
            for (int t = 0; t < NT; t++)
                isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(_mm256_madd_epi16(slo[t], sc_lo),
                                                                     _mm256_madd_epi16(shi[t], sc_hi)));
        }
        __m256i mp[4];
        for (int k = 0; k < 4; k++) mp[k] = i16_pairs(u8x8(B->m[2 * k]), u8x8(B->m[2 * k + 1]));
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)B->d));
        const __m256 dm = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)B->dmin));
        for (int t = 0; t < NT; t++) {
            const block_q8_K *yb = (const block_q8_K *)((const char *)x + t * xs) + sb;
            int32_t b2[4]; /* (bsum_4k + bsum_4k+1, bsum_4k+2 + bsum_4k+3) as int16 pairs */
            _mm_storeu_si128((__m128i *)b2, _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)yb->bsums),
                                                           _mm_loadu_si128((const __m128i *)(yb->bsums + 8))));
            __m256i msum = _mm256_madd_epi16(mp[0], _mm256_set1_epi32(b2[0]));
            for (int k = 1; k < 4; k++)
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(mp[k], _mm256_set1_epi32(b2[k])));
            const __m256 yd = _mm256_set1_ps(yb->d);
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, yd), _mm256_cvtepi32_ps(isum[t]), acc[t]);
            acc[t] = _mm256_fnmadd_ps(_mm256_mul_ps(dm, yd), _mm256_cvtepi32_ps(msum), acc[t]);
        }
    }
    for (int t = 0; t < NT; t++) _mm256_storeu_ps(out + 8 * t, acc[t]);
}
/* q6_K: a chunk's 6-bit values (0..63) from its nibble and 2-bit vectors; each maddubs (<= 2*63*128) goes
 * straight into a madd with its 16-element sub-block's int8 scale (in both int16 halves of the row's lane). The
 * offset 32 enters once per super-block: 32 * sum_s sc_s * bsum_s, by madd on (sc_2k, sc_2k+1) pairs. Per
 * super-block and token: acc = fma(d * d_y, isum - 32 * msum, acc). */
static inline __attribute__((always_inline)) void gemm_q6_Kx8(int nsb, const block_q6_Kx8 *w, const block_q8_K *x,
                                                            size_t xs, const int NT, float *out) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int sb = 0; sb < nsb; sb++) {
        const block_q6_Kx8 *B = w + sb;
        __m256i isum[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                           _mm256_setzero_si256()};
        for (int k = 0; k < 4; k++) { /* chunks u = 4k..4k+3 and u + 16, 32, 48: sub-blocks k, k+4, k+8, k+12 */
            __m256i sc[4];
            for (int i = 0; i < 4; i++) {
                const __m256i v = i8x8(B->sc[k + 4 * i]);
                sc[i] = i16_pairs(v, v);
            }
            for (int u = 4 * k; u < 4 * k + 4; u++) {
                _mm_prefetch((const char *)B->ql[u] + PACK_PREFETCH, _MM_HINT_T0);
                const __m256i h = _mm256_loadu_si256((const __m256i *)B->qh[u]);
                const __m256i n0 = _mm256_loadu_si256((const __m256i *)B->ql[u]);
                const __m256i n1 = _mm256_loadu_si256((const __m256i *)B->ql[u + 16]);
                __m256i q[4]; /* chunks u, u+16, u+32, u+48 */
                q[0] = _mm256_or_si256(_mm256_and_si256(n0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m30));
                q[1] = _mm256_or_si256(_mm256_and_si256(n1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m30));
                q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(n0, 4), m4), _mm256_and_si256(h, m30));
                q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(n1, 4), m4),
                                       _mm256_and_si256(_mm256_srli_epi16(h, 2), m30));
                for (int t = 0; t < NT; t++) {
                    const int8_t *y = ((const block_q8_K *)((const char *)x + t * xs))[sb].qs + 4 * u;
                    for (int i = 0; i < 4; i++) {
                        const __m256i p = _mm256_maddubs_epi16(q[i], bcast4(y + 64 * i));
                        isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(p, sc[i]));
                    }
                }
            }
        }
        __m256i sp[8];
        for (int k = 0; k < 8; k++) sp[k] = i16_pairs(i8x8(B->sc[2 * k]), i8x8(B->sc[2 * k + 1]));
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)B->d));
        for (int t = 0; t < NT; t++) {
            const block_q8_K *yb = (const block_q8_K *)((const char *)x + t * xs) + sb;
            int32_t bp[8]; /* (bsum_2k, bsum_2k+1) int16 pairs */
            memcpy(bp, yb->bsums, sizeof bp);
            __m256i msum = _mm256_madd_epi16(sp[0], _mm256_set1_epi32(bp[0]));
            for (int k = 1; k < 8; k++)
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(sp[k], _mm256_set1_epi32(bp[k])));
            const __m256i dot = _mm256_sub_epi32(isum[t], _mm256_slli_epi32(msum, 5));
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(yb->d)), _mm256_cvtepi32_ps(dot), acc[t]);
        }
    }
    for (int t = 0; t < NT; t++) _mm256_storeu_ps(out + 8 * t, acc[t]);
}
#elif defined(FARM_NEON)
/* NEON: a chunk of 8 rows is two vectors (rows 0-3, 4-7), and sdot by lane takes the token's 4 activation
 * bytes straight from its block, so q4_0, q5_0 and q8_0 share one kernel (q8_0 is signed: no offset). */
#if defined(__ARM_FEATURE_DOTPROD)
#define DOT_LANE(acc, w, y, lane) vdotq_laneq_s32(acc, w, y, lane)
#else
static inline int32x4_t dot_bcast(int32x4_t acc, int8x16_t w, int8x16_t yb) { /* 4 products per int32 lane */
    const int16x8_t lo = vmull_s8(vget_low_s8(w), vget_low_s8(yb)), hi = vmull_high_s8(w, yb);
    return vaddq_s32(acc, vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi)));
}
#define DOT_LANE(acc, w, y, lane) \
    dot_bcast(acc, w, vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(y), lane)))
#endif

static inline uint8x16_t q5_high(uint32_t bits) { /* bits 0..15 -> bytes 0..15 = 0x10 where set */
    const uint8x16_t idx = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
    const uint8x16_t mask = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t b = vqtbl1q_u8(vreinterpretq_u8_u32(vdupq_n_u32(bits)), idx);
    return vandq_u8(vtstq_u8(b, mask), vdupq_n_u8(0x10));
}

/* KIND: 0 q4_0, 1 q5_0, 2 q8_0; KIND, bsz and NT are compile-time constants after inlining. */
static inline __attribute__((always_inline)) void gemm_x8(int nb, const char *w, const size_t bsz, const int KIND,
                                                        const block_q8_0 *x, size_t xs, const q8_0_sum *xi,
                                                        size_t xis, const int NT, float *out) {
    float32x4_t acc[4][2];
    for (int t = 0; t < NT; t++) acc[t][0] = acc[t][1] = vdupq_n_f32(0.0f);
    for (int b = 0; b < nb; b++) {
        const char *blk = w + (size_t)b * bsz;
        int8x16_t q[8][2];
        if (KIND == 2) {
            for (int c = 0; c < 8; c++)
                for (int h = 0; h < 2; h++)
                    q[c][h] = vld1q_s8((const int8_t *)blk + offsetof(block_q8_0x8, qs) + 32 * c + 16 * h);
        } else {
            const uint8_t *qs = (const uint8_t *)blk + (KIND ? offsetof(block_q5_0x8, qs) : offsetof(block_q4_0x8, qs));
            for (int j = 0; j < 4; j++)
                for (int h = 0; h < 2; h++) {
                    const uint8x16_t p = vld1q_u8(qs + 32 * j + 16 * h);
                    uint8x16_t lo = vandq_u8(p, vdupq_n_u8(0x0f)), hi = vshrq_n_u8(p, 4);
                    if (KIND == 1) {
                        const block_q5_0x8 *b5 = (const block_q5_0x8 *)blk;
                        lo = vorrq_u8(lo, q5_high(b5->qh[j] >> (16 * h)));
                        hi = vorrq_u8(hi, q5_high(b5->qh[j + 4] >> (16 * h)));
                    }
                    q[j][h] = vreinterpretq_s8_u8(lo);
                    q[j + 4][h] = vreinterpretq_s8_u8(hi);
                }
        }
        const float16x8_t dh = vld1q_f16((const __fp16 *)blk); /* d[8] comes first */
        const float32x4_t dw0 = vcvt_f32_f16(vget_low_f16(dh)), dw1 = vcvt_high_f32_f16(dh);
        for (int t = 0; t < NT; t++) {
            const int8_t *y = ((const block_q8_0 *)((const char *)x + t * xs))[b].qs;
            const q8_0_sum *yi = xi + t * xis + b;
            const int8x16_t y0 = vld1q_s8(y), y1 = vld1q_s8(y + 16);
            int32x4_t s0 = vdupq_n_s32(0), s1 = vdupq_n_s32(0);
#define CHUNK(c, yv, lane)                         \
    s0 = DOT_LANE(s0, q[c][0], yv, lane);          \
    s1 = DOT_LANE(s1, q[c][1], yv, lane);
            CHUNK(0, y0, 0) CHUNK(1, y0, 1) CHUNK(2, y0, 2) CHUNK(3, y0, 3)
            CHUNK(4, y1, 0) CHUNK(5, y1, 1) CHUNK(6, y1, 2) CHUNK(7, y1, 3)
#undef CHUNK
            if (KIND != 2) {
                const int32x4_t off = vdupq_n_s32((KIND ? 16 : 8) * yi->s);
                s0 = vsubq_s32(s0, off);
                s1 = vsubq_s32(s1, off);
            }
            acc[t][0] = vfmaq_f32(acc[t][0], vmulq_n_f32(dw0, yi->d), vcvtq_f32_s32(s0));
            acc[t][1] = vfmaq_f32(acc[t][1], vmulq_n_f32(dw1, yi->d), vcvtq_f32_s32(s1));
        }
    }
    for (int t = 0; t < NT; t++) {
        vst1q_f32(out + 8 * t, acc[t][0]);
        vst1q_f32(out + 8 * t + 4, acc[t][1]);
    }
}
#endif

/* Row r's term of block b in the portable definition: acc after that block (x: the token's activation row). */
static float block_term(int type, const void *w, const void *x, const q8_0_sum *xi, int b, int r, float acc) {
    int32_t dot = 0;
    if (type == GT_Q6_K || type == GT_Q4_K) {
        const block_q8_K *yb = (const block_q8_K *)x + b;
        int32_t msum = 0;
        if (type == GT_Q6_K) {
            const block_q6_Kx8 *B = (const block_q6_Kx8 *)w + b;
            for (int s = 0; s < 16; s++) {
                int32_t sub = 0;
                for (int i = 16 * s; i < 16 * s + 16; i++) sub += q6_at(B, r, i) * yb->qs[i];
                dot += B->sc[s][r] * sub;
                msum += B->sc[s][r] * yb->bsums[s];
            }
            return fmaf(fp16_to_f32(B->d[r]) * yb->d, (float)(dot - 32 * msum), acc);
        }
        const block_q4_Kx8 *B = (const block_q4_Kx8 *)w + b;
        for (int j = 0; j < 4; j++) {
            int32_t lo = 0, hi = 0;
            for (int c = 0; c < 8; c++)
                for (int e = 0; e < 4; e++) {
                    const uint8_t q = B->qs[j][c][4 * r + e];
                    lo += (q & 0x0f) * yb->qs[64 * j + 4 * c + e];
                    hi += (q >> 4) * yb->qs[64 * j + 32 + 4 * c + e];
                }
            dot += lo * B->sc[2 * j][r] + hi * B->sc[2 * j + 1][r];
        }
        for (int k = 0; k < 8; k++) msum += B->m[k][r] * (yb->bsums[2 * k] + yb->bsums[2 * k + 1]);
        acc = fmaf(fp16_to_f32(B->d[r]) * yb->d, (float)dot, acc);
        return fmaf(-(fp16_to_f32(B->dmin[r]) * yb->d), (float)msum, acc);
    }
    const int8_t *y = ((const block_q8_0 *)x + b)->qs;
    f16_t d;
    if (type == GT_Q8_0) {
        const block_q8_0x8 *s = (const block_q8_0x8 *)w + b;
        d = s->d[r];
        for (int c = 0; c < 8; c++)
            for (int e = 0; e < 4; e++) dot += s->qs[32 * c + 4 * r + e] * y[4 * c + e];
    } else { /* q4_0, q5_0: nibbles (and 5th bits), offset 8 / 16 */
        const int q5 = type == GT_Q5_0, off = q5 ? 16 : 8;
        const uint8_t *qs = q5 ? ((const block_q5_0x8 *)w + b)->qs : ((const block_q4_0x8 *)w + b)->qs;
        d = q5 ? ((const block_q5_0x8 *)w + b)->d[r] : ((const block_q4_0x8 *)w + b)->d[r];
        for (int j = 0; j < 4; j++)
            for (int e = 0; e < 4; e++) {
                const uint8_t q = qs[32 * j + 4 * r + e];
                const int h0 = q5 ? 16 * q5_bit(((const block_q5_0x8 *)w + b)->qh[j], 4 * r + e) : 0;
                const int h1 = q5 ? 16 * q5_bit(((const block_q5_0x8 *)w + b)->qh[j + 4], 4 * r + e) : 0;
                dot += ((q & 0x0f) + h0 - off) * y[4 * j + e] + ((q >> 4) + h1 - off) * y[16 + 4 * j + e];
            }
    }
    return fmaf(fp16_to_f32(d) * xi[b].d, (float)dot, acc);
}

void gemm_packed(int type, int n, const void *w, const void *x, size_t xs, const q8_0_sum *xi, size_t xis, int nt,
                 float *out) {
    const int nb = n / block_len(type);
#if defined(FARM_AVX2)
#define KERNEL(NT)                                                                                                  \
    if (type == GT_Q4_0) gemm_nibbles_x8(nb, w, sizeof(block_q4_0x8), 0, x, xs, xi, xis, NT, out);                  \
    else if (type == GT_Q5_0) gemm_nibbles_x8(nb, w, sizeof(block_q5_0x8), 1, x, xs, xi, xis, NT, out);             \
    else if (type == GT_Q4_K) gemm_q4_Kx8(nb, w, x, xs, NT, out);                                                    \
    else if (type == GT_Q6_K) gemm_q6_Kx8(nb, w, x, xs, NT, out);                                                    \
    else gemm_q8_0x8(nb, w, x, xs, xi, xis, NT, out);
    const int simd = 1;
#elif defined(FARM_NEON)
#define KERNEL(NT)                                                                                                  \
    if (type == GT_Q4_0) gemm_x8(nb, w, sizeof(block_q4_0x8), 0, x, xs, xi, xis, NT, out);                          \
    else if (type == GT_Q5_0) gemm_x8(nb, w, sizeof(block_q5_0x8), 1, x, xs, xi, xis, NT, out);                     \
    else gemm_x8(nb, w, sizeof(block_q8_0x8), 2, x, xs, xi, xis, NT, out);
    const int simd = type != GT_Q4_K && type != GT_Q6_K; /* not packed on NEON (pack_type); kcheck: portable body */
#endif
#if defined(KERNEL)
    if (simd) { /* NT as a constant: each tile width gets its own unrolled body */
        switch (nt) {
        case 1: KERNEL(1) return;
        case 2: KERNEL(2) return;
        case 3: KERNEL(3) return;
        case 4: KERNEL(4) return;
        }
    }
#undef KERNEL
#endif
    /* The portable definition (what the SIMD kernels compute, output by output). */
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < PACK_ROWS; r++) {
            float acc = 0.0f;
            for (int b = 0; b < nb; b++) acc = block_term(type, w, (const char *)x + t * xs, xi + t * xis, b, r, acc);
            out[8 * t + r] = acc;
        }
}
