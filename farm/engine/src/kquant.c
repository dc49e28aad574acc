/* The other GGML weight types farm runs: q4_1, q5_1 (32-blocks) and the k-quants q4_K, q5_K, q6_K (256-blocks),
 * with the activation formats llama.cpp pairs them with (ggml-cpu type_traits vec_dot_type): q4_1 / q5_1 ->
 * q8_1, k-quants -> q8_K (q5_0, like q4_0 and q8_0, is multiplied packed: pack.c; its dequantization is here).
 * The scalar code follows ggml's reference and generic
 * kernels (ggml-quants.c, ggml-cpu/quants.c) operation by operation; the AVX2 and NEON bodies follow
 * ggml-cpu/arch/x86/quants.c and arch/arm/quants.c (named at each function). All of them compute the same
 * integer sums per block (no int16 step can saturate: the bounds are noted where it is close), so the
 * builds differ from each other and from llama.cpp only in float summation order. FARM_SCALAR builds and
 * other targets use the portable C bodies. */
#include <math.h>
#include <string.h>

#include "common.h"
#include "gguf.h"
#include "quant.h"

#if defined(FARM_AVX2)
#include <immintrin.h>
#elif defined(FARM_NEON)
#include <arm_neon.h>
#endif

/* quant.c's fp16_to_f32 inlined here: the kernels convert 2-4 scales per 32-block, a call each was a fifth of
 * q4_1 decode. Same conversion (F16C / NEON fcvt, the lookup table otherwise). */
#if defined(FARM_AVX2)
static inline float h2f(f16_t h) { return _cvtsh_ss(h); }
#define fp16_to_f32 h2f
#elif defined(FARM_NEON)
static inline float h2f(f16_t h) {
    __fp16 v;
    memcpy(&v, &h, 2);
    return (float)v;
}
#define fp16_to_f32 h2f
#endif

/* ---- activations ---------------------------------------------------------------------------------- */

/* As llama.cpp's quantize_row_q8_1 of each arch: the 32-block quantizer of q8_0 (quant.c: AVX2 id = 127 / amax,
 * NEON and scalar 1 / d, half-to-even rounding), plus s = d * sum(qs) from the unrounded d. */
void quantize_row_q8_1(const float *x, block_q8_1 *y, int n) {
    for (int b = 0; b < n / QK; b++, x += QK) {
        const float d = quantize_block_q8(x, y[b].qs);
        int sum = 0;
        for (int j = 0; j < QK; j++) sum += y[b].qs[j];
        y[b].d = f32_to_fp16(d);
        y[b].s = f32_to_fp16(sum * d);
    }
}

static inline int nearest_int(float fval) { /* ggml-quants.c: round half to even via the float mantissa */
    float val = fval + 12582912.f;
    int i;
    memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

/* llama.cpp's x86 and ARM builds both use the reference quantize_row_q8_K_ref, so every build here does too
 * (it is O(n) per row against the O(n * n_out) matmul it feeds). |qs| <= 127: the element of largest
 * magnitude maps to exactly -127. */
void quantize_row_q8_K(const float *x, block_q8_K *y, int n) {
    for (int b = 0; b < n / QK_K; b++, x += QK_K) {
        float max = 0.0f, amax = 0.0f;
        for (int j = 0; j < QK_K; j++) {
            const float ax = fabsf(x[j]);
            if (ax > amax) amax = ax, max = x[j];
        }
        if (amax == 0.0f) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K; j++) {
            const int v = nearest_int(iscale * x[j]);
            y[b].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int i = 0; i < 16; i++) sum += y[b].qs[j * 16 + i];
            y[b].bsums[j] = (int16_t)sum;
        }
        y[b].d = 1 / iscale;
    }
}

/* ---- dequantization (token embeddings) ------------------------------------------------------------ */

void scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
    }
}

int dequant_row_more(int type, const void *src, float *y, int n) {
    switch (type) {
    case GT_Q4_1:
        for (int b = 0; b < n / QK; b++, y += QK) {
            const block_q4_1 *x = (const block_q4_1 *)src + b;
            const float d = fp16_to_f32(x->d), m = fp16_to_f32(x->m);
            for (int j = 0; j < QK / 2; j++) {
                y[j] = (x->qs[j] & 0x0F) * d + m;
                y[j + QK / 2] = (x->qs[j] >> 4) * d + m;
            }
        }
        return 1;
    case GT_Q5_0:
    case GT_Q5_1:
        for (int b = 0; b < n / QK; b++, y += QK) {
            const int one = type == GT_Q5_1;
            const block_q5_1 *x1 = (const block_q5_1 *)src + b;
            const block_q5_0 *x0 = (const block_q5_0 *)src + b;
            const uint8_t *qh_p = one ? x1->qh : x0->qh, *qs = one ? x1->qs : x0->qs;
            const float d = fp16_to_f32(one ? x1->d : x0->d), m = one ? fp16_to_f32(x1->m) : 0.0f;
            uint32_t qh;
            memcpy(&qh, qh_p, sizeof qh);
            for (int j = 0; j < QK / 2; j++) {
                const uint8_t xh_0 = ((qh >> (j + 0)) << 4) & 0x10, xh_1 = ((qh >> (j + 12))) & 0x10;
                const int off = one ? 0 : 16;
                y[j] = (((qs[j] & 0x0F) | xh_0) - off) * d + m;
                y[j + QK / 2] = (((qs[j] >> 4) | xh_1) - off) * d + m;
            }
        }
        return 1;
    case GT_Q4_K:
    case GT_Q5_K:
        for (int b = 0; b < n / QK_K; b++) {
            const int five = type == GT_Q5_K;
            const block_q4_K *x4 = (const block_q4_K *)src + b;
            const block_q5_K *x5 = (const block_q5_K *)src + b;
            const uint8_t *q = five ? x5->qs : x4->qs, *scales = five ? x5->scales : x4->scales;
            const uint8_t *qh = five ? x5->qh : NULL;
            const float d = fp16_to_f32(five ? x5->d : x4->d), min = fp16_to_f32(five ? x5->dmin : x4->dmin);
            uint8_t sc, m, u1 = 1, u2 = 2;
            for (int j = 0, is = 0; j < QK_K; j += 64, is += 2, q += 32, u1 <<= 2, u2 <<= 2) {
                scale_min_k4(is + 0, scales, &sc, &m);
                const float d1 = d * sc, m1 = min * m;
                scale_min_k4(is + 1, scales, &sc, &m);
                const float d2 = d * sc, m2 = min * m;
                for (int l = 0; l < 32; l++) *y++ = d1 * ((q[l] & 0xF) + (five && (qh[l] & u1) ? 16 : 0)) - m1;
                for (int l = 0; l < 32; l++) *y++ = d2 * ((q[l] >> 4) + (five && (qh[l] & u2) ? 16 : 0)) - m2;
            }
        }
        return 1;
    case GT_Q6_K:
        for (int b = 0; b < n / QK_K; b++) {
            const block_q6_K *x = (const block_q6_K *)src + b;
            const float d = fp16_to_f32(x->d);
            const uint8_t *ql = x->ql, *qh = x->qh;
            const int8_t *sc = x->scales;
            for (int k = 0; k < QK_K; k += 128, y += 128, ql += 64, qh += 32, sc += 8) {
                for (int l = 0; l < 32; l++) {
                    const int is = l / 16;
                    const int8_t q1 = (int8_t)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                    const int8_t q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    const int8_t q3 = (int8_t)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    const int8_t q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    y[l + 0] = d * sc[is + 0] * q1;
                    y[l + 32] = d * sc[is + 2] * q2;
                    y[l + 64] = d * sc[is + 4] * q3;
                    y[l + 96] = d * sc[is + 6] * q4;
                }
            }
        }
        return 1;
    default: return 0;
    }
}

/* ---- SIMD helpers ------------------------------------------------------------------------------- */

#if defined(FARM_AVX2)
static inline float hsum_f8(__m256 x) { /* ggml's hsum_float_8 */
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}
/* ggml's bytes_from_nibbles_32: low nibbles to bytes 0..15, high nibbles to 16..31, each 0..15. */
static inline __m256i nibbles_32(const uint8_t *qs) {
    const __m128i t = _mm_loadu_si128((const __m128i *)qs);
    const __m256i b = _mm256_insertf128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
    return _mm256_and_si256(b, _mm256_set1_epi8(0x0f));
}
/* ggml's bytes_from_bits_32: bit j of the 32-bit word -> byte j = 0xFF if set, else 0x00. */
static inline __m256i bits_32(const uint8_t *qh) {
    uint32_t x32;
    memcpy(&x32, qh, sizeof x32);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x32), shuf);
    return _mm256_cmpeq_epi8(_mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe)), _mm256_set1_epi64x(-1));
}
/* ggml's mul_sum_us8_pairs_float: unsigned x signed bytes -> 8 int32 lane sums as floats. The int16 pair sums
 * stay below 2 * 31 * 127 for the 5-bit types here, far from saturation. */
static inline __m256 dot_us8(__m256i ax, __m256i sy) {
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1)));
}
/* ggml's mul_sum_i8_pairs_float: signed x signed via the sign trick (|x| <= 16 here). */
static inline __m256 dot_s8(__m256i x, __m256i y) { return dot_us8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x)); }
/* ggml's get_scale_shuffle_k4 / get_scale_shuffle: broadcast int16 scale i (of 8) / int8 scales 2i, 2i+1 (of 16). */
static inline __m256i scale_shuffle_k4(int i) {
    return _mm256_set1_epi16((short)(((2 * i + 1) << 8) | (2 * i)));
}
static inline __m128i scale_shuffle_k6(int i) {
    return _mm_set_epi64x((long long)(0x0101010101010101ULL * (2 * i + 1)), (long long)(0x0101010101010101ULL * (2 * i)));
}
#elif defined(FARM_NEON)
static inline int32x4_t dot_s8(int32x4_t acc, int8x16_t a, int8x16_t b) { /* ggml_vdotq_s32, as quant.c's dot_i8 */
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, b);
#else
    const int16x8_t lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    const int16x8_t hi = vmull_s8(vget_high_s8(a), vget_high_s8(b));
    return vpadalq_s16(vpadalq_s16(acc, lo), hi);
#endif
}
/* Bits at..at+15 of qh -> bytes 0xFF if set, else 0x00: what llama.cpp's table_b2b_0 / table_b2b_1 lookups
 * give (times 0x10), by one compare instead of four table loads. */
static inline uint8x16_t bits_16(uint32_t qh, int at) {
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t b = vcombine_u8(vdup_n_u8((uint8_t)(qh >> at)), vdup_n_u8((uint8_t)(qh >> (at + 8))));
    return vtstq_u8(b, vld1q_u8(bit));
}
#endif

/* ---- dot products ------------------------------------------------------------------------------- */

/* Every kernel takes one weight row and nt (1..TILE_MAX) activation rows `ys` bytes apart, writing out[t] = w . y_t.
 * The weight blocks are decoded once per block and reused for each token; each output keeps its own accumulator
 * with the one-token operation sequence, so a tile's results are bit-identical to nt single-token calls. The scalar
 * bodies loop over the tokens. */
#define TILE_MAX 4
#define ALWAYS_INLINE static inline __attribute__((always_inline))
#define YT(T, t) ((const T *)((const char *)y + (size_t)(t) * ys))
/* Software prefetch of the weight stream, as quant.c's GEMV (decode is bound by cache misses in flight). */
#ifndef PREFETCH_BYTES
#define PREFETCH_BYTES 4096
#endif
#define PREFETCH(p) __builtin_prefetch((const char *)(p) + PREFETCH_BYTES)

/* llama.cpp ggml_vec_dot_q4_1_q8_1 (x86 AVX2, ARM NEON without i8mm, generic). */
ALWAYS_INLINE void dot_q4_1(int n, const block_q4_1 *x, const block_q8_1 *y, size_t ys, int nt, float *out) {
#if defined(FARM_AVX2)
    __m256 acc[TILE_MAX];
    float summs[TILE_MAX];
    for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps(), summs[t] = 0;
    for (int ib = 0; ib < n / QK; ++ib) {
        PREFETCH(x + ib);
        const float dx = fp16_to_f32(x[ib].d), mx = fp16_to_f32(x[ib].m);
        const __m256i qx = nibbles_32(x[ib].qs);
        for (int t = 0; t < nt; t++) {
            const block_q8_1 *yb = YT(block_q8_1, t) + ib;
            summs[t] += mx * fp16_to_f32(yb->s);
            const __m256 d = _mm256_set1_ps(dx * fp16_to_f32(yb->d));
            const __m256i qy = _mm256_loadu_si256((const __m256i *)yb->qs);
            acc[t] = _mm256_fmadd_ps(d, dot_us8(qx, qy), acc[t]);
        }
    }
    for (int t = 0; t < nt; t++) out[t] = hsum_f8(acc[t]) + summs[t];
#elif defined(FARM_NEON)
    float32x4_t acc[TILE_MAX];
    float summs[TILE_MAX];
    for (int t = 0; t < nt; t++) acc[t] = vdupq_n_f32(0.0f), summs[t] = 0;
    for (int ib = 0; ib < n / QK; ++ib) {
        PREFETCH(x + ib);
        const float dx = fp16_to_f32(x[ib].d), mx = fp16_to_f32(x[ib].m);
        const uint8x16_t v = vld1q_u8(x[ib].qs);
        const int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F)));
        const int8x16_t hi = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
        for (int t = 0; t < nt; t++) {
            const block_q8_1 *yb = YT(block_q8_1, t) + ib;
            summs[t] += mx * fp16_to_f32(yb->s);
            const int32x4_t p = dot_s8(dot_s8(vdupq_n_s32(0), lo, vld1q_s8(yb->qs)), hi, vld1q_s8(yb->qs + 16));
            acc[t] = vmlaq_n_f32(acc[t], vcvtq_f32_s32(p), dx * fp16_to_f32(yb->d));
        }
    }
    for (int t = 0; t < nt; t++) out[t] = vaddvq_f32(acc[t]) + summs[t];
#else
    const block_q8_1 *y0 = y;
    for (int t = 0; t < nt; t++) {
        y = YT(block_q8_1, t);
        float sumf = 0;
        for (int ib = 0; ib < n / QK; ++ib) {
            int sumi0 = 0, sumi1 = 0;
            for (int j = 0; j < QK / 2; ++j) {
                sumi0 += (x[ib].qs[j] & 0x0F) * y[ib].qs[j];
                sumi1 += (x[ib].qs[j] >> 4) * y[ib].qs[j + QK / 2];
            }
            sumf += (fp16_to_f32(x[ib].d) * fp16_to_f32(y[ib].d)) * (sumi0 + sumi1) +
                    fp16_to_f32(x[ib].m) * fp16_to_f32(y[ib].s);
        }
        out[t] = sumf;
        y = y0;
    }
#endif
}

/* llama.cpp ggml_vec_dot_q5_1_q8_1 (x86 AVX2, ARM NEON, generic). */
ALWAYS_INLINE void dot_q5_1(int n, const block_q5_1 *x, const block_q8_1 *y, size_t ys, int nt, float *out) {
#if defined(FARM_AVX2)
    __m256 acc[TILE_MAX];
    float summs[TILE_MAX];
    for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps(), summs[t] = 0;
    for (int ib = 0; ib < n / QK; ++ib) {
        PREFETCH(x + ib);
        const float dx = fp16_to_f32(x[ib].d), mx = fp16_to_f32(x[ib].m);
        const __m256i hi = _mm256_and_si256(bits_32(x[ib].qh), _mm256_set1_epi8(0x10));
        const __m256i qx = _mm256_or_si256(nibbles_32(x[ib].qs), hi);
        for (int t = 0; t < nt; t++) {
            const block_q8_1 *yb = YT(block_q8_1, t) + ib;
            summs[t] += mx * fp16_to_f32(yb->s);
            const __m256 q = dot_us8(qx, _mm256_loadu_si256((const __m256i *)yb->qs));
            acc[t] = _mm256_fmadd_ps(q, _mm256_set1_ps(dx * fp16_to_f32(yb->d)), acc[t]);
        }
    }
    for (int t = 0; t < nt; t++) out[t] = hsum_f8(acc[t]) + summs[t];
#elif defined(FARM_NEON)
    float32x4_t acc[TILE_MAX];
    float summs[TILE_MAX];
    for (int t = 0; t < nt; t++) acc[t] = vdupq_n_f32(0.0f), summs[t] = 0;
    for (int ib = 0; ib < n / QK; ++ib) {
        PREFETCH(x + ib);
        const float dx = fp16_to_f32(x[ib].d), mx = fp16_to_f32(x[ib].m);
        uint32_t qh;
        memcpy(&qh, x[ib].qh, sizeof qh);
        const uint8x16_t v = vld1q_u8(x[ib].qs), m16 = vdupq_n_u8(0x10);
        const int8x16_t lo = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(v, vdupq_n_u8(0x0F)), vandq_u8(m16, bits_16(qh, 0))));
        const int8x16_t hi = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(v, 4), vandq_u8(m16, bits_16(qh, 16))));
        for (int t = 0; t < nt; t++) {
            const block_q8_1 *yb = YT(block_q8_1, t) + ib;
            summs[t] += mx * fp16_to_f32(yb->s);
            const int32x4_t p = dot_s8(dot_s8(vdupq_n_s32(0), lo, vld1q_s8(yb->qs)), hi, vld1q_s8(yb->qs + 16));
            acc[t] = vmlaq_n_f32(acc[t], vcvtq_f32_s32(p), dx * fp16_to_f32(yb->d));
        }
    }
    for (int t = 0; t < nt; t++) out[t] = vaddvq_f32(acc[t]) + summs[t];
#else
    const block_q8_1 *y0 = y;
    for (int t = 0; t < nt; t++) {
        y = YT(block_q8_1, t);
        float sumf = 0;
        for (int ib = 0; ib < n / QK; ++ib) {
            uint32_t qh;
            memcpy(&qh, x[ib].qh, sizeof qh);
            int sumi0 = 0, sumi1 = 0;
            for (int j = 0; j < QK / 2; ++j) {
                const uint8_t xh_0 = ((qh >> (j + 0)) << 4) & 0x10;
                const uint8_t xh_1 = ((qh >> (j + 12))) & 0x10;
                sumi0 += ((x[ib].qs[j] & 0xF) | xh_0) * y[ib].qs[j];
                sumi1 += ((x[ib].qs[j] >> 4) | xh_1) * y[ib].qs[j + QK / 2];
            }
            sumf += (fp16_to_f32(x[ib].d) * fp16_to_f32(y[ib].d)) * (sumi0 + sumi1) +
                    fp16_to_f32(x[ib].m) * fp16_to_f32(y[ib].s);
        }
        out[t] = sumf;
        y = y0;
    }
#endif
}

static void unpack_scales_k4(const uint8_t *src, uint32_t utmp[4]) { /* utmp[0..1]: 8 scales, [2..3]: 8 mins */
    const uint32_t kmask1 = 0x3f3f3f3f, kmask2 = 0x0f0f0f0f, kmask3 = 0x03030303;
    memcpy(utmp, src, 12);
    utmp[3] = ((utmp[2] >> 4) & kmask2) | (((utmp[1] >> 6) & kmask3) << 4);
    const uint32_t uaux = utmp[1] & kmask1;
    utmp[1] = (utmp[2] & kmask2) | (((utmp[0] >> 6) & kmask3) << 4);
    utmp[2] = uaux;
    utmp[0] &= kmask1;
}

/* q4_K and q5_K: 8 sub-blocks of 32 with 6-bit scales and mins (qh == NULL for q4_K). llama.cpp
 * ggml_vec_dot_q4_K_q8_K / ggml_vec_dot_q5_K_q8_K (x86 AVX2, ARM NEON without i8mm/SVE, generic); the SIMD
 * bodies are q4_K's with q5_K's fifth bit ORed in. Values <= 31 times |q8| <= 127: the maddubs pairs stay
 * below 7874 and the scale products (<= 63) fit int32. */
ALWAYS_INLINE void dot_q45_K(int nb, const uint8_t *qs, const uint8_t *qh, const uint8_t *scales, const f16_t *d,
                             const f16_t *dmin, size_t stride, const block_q8_K *y, size_t ys, int nt, float *out) {
#if defined(FARM_AVX2)
    const __m256i m4 = _mm256_set1_epi8(0xF), one = _mm256_set1_epi8(1);
    __m256 acc[TILE_MAX];
    __m128 acc_m[TILE_MAX];
    for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps(), acc_m[t] = _mm_setzero_ps();
    for (int i = 0; i < nb; ++i) {
        const uint8_t *q4 = qs + i * stride, *hm = qh ? qh + i * stride : NULL;
        const float xd = fp16_to_f32(*(const f16_t *)((const char *)d + i * stride));
        const float xm = fp16_to_f32(*(const f16_t *)((const char *)dmin + i * stride));
        uint32_t utmp[4];
        unpack_scales_k4(scales + i * stride, utmp);
        const __m256i mins_and_scales =
            _mm256_cvtepu8_epi16(_mm_set_epi32((int)utmp[3], (int)utmp[2], (int)utmp[1], (int)utmp[0]));
        const __m128i mins = _mm256_extracti128_si256(mins_and_scales, 1);
        __m256i sumi[TILE_MAX];
        for (int t = 0; t < nt; t++) {
            const block_q8_K *yb = YT(block_q8_K, t) + i;
            const float dm = -yb->d * xm;
            const __m256i q8sums = _mm256_loadu_si256((const __m256i *)yb->bsums);
            const __m128i q8s = _mm_hadd_epi16(_mm256_extracti128_si256(q8sums, 0), _mm256_extracti128_si256(q8sums, 1));
            const __m128i prod = _mm_madd_epi16(mins, q8s);
            acc_m[t] = _mm_fmadd_ps(_mm_set1_ps(dm), _mm_cvtepi32_ps(prod), acc_m[t]);
            sumi[t] = _mm256_setzero_si256();
        }
        const __m128i sc128 = _mm256_extracti128_si256(mins_and_scales, 0);
        const __m256i sc = _mm256_set_m128i(sc128, sc128);
        const __m256i hbits = hm ? _mm256_loadu_si256((const __m256i *)hm) : _mm256_setzero_si256();
        for (int j = 0; j < QK_K / 64; ++j, q4 += 32) {
            PREFETCH(q4);
            const __m256i q4bits = _mm256_loadu_si256((const __m256i *)q4);
            __m256i q4l = _mm256_and_si256(q4bits, m4);
            __m256i q4h = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);
            if (hm) { /* bit 2j (2j+1) of each qh byte -> 0x10 */
                const __m128i s0 = _mm_cvtsi32_si128(2 * j), s1 = _mm_cvtsi32_si128(2 * j + 1);
                q4l = _mm256_or_si256(q4l, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hbits, s0), one), 4));
                q4h = _mm256_or_si256(q4h, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hbits, s1), one), 4));
            }
            const __m256i scl = _mm256_shuffle_epi8(sc, scale_shuffle_k4(2 * j));
            const __m256i sch = _mm256_shuffle_epi8(sc, scale_shuffle_k4(2 * j + 1));
            for (int t = 0; t < nt; t++) {
                const int8_t *q8 = YT(block_q8_K, t)[i].qs + 64 * j;
                const __m256i p16l = _mm256_madd_epi16(scl, _mm256_maddubs_epi16(q4l, _mm256_loadu_si256((const __m256i *)q8)));
                const __m256i p16h =
                    _mm256_madd_epi16(sch, _mm256_maddubs_epi16(q4h, _mm256_loadu_si256((const __m256i *)(q8 + 32))));
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(p16l, p16h));
            }
        }
        for (int t = 0; t < nt; t++) {
            const float dd = YT(block_q8_K, t)[i].d * xd;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
        }
    }
    for (int t = 0; t < nt; t++) {
        __m128 m = acc_m[t];
        m = _mm_add_ps(m, _mm_movehl_ps(m, m));
        m = _mm_add_ss(m, _mm_movehdup_ps(m));
        out[t] = hsum_f8(acc[t]) + _mm_cvtss_f32(m);
    }
#elif defined(FARM_NEON)
    const uint8x16_t m4b = vdupq_n_u8(0xf), mone = vdupq_n_u8(1), mtwo = vdupq_n_u8(2);
    const int32x4_t mzero = vdupq_n_s32(0);
    float sumf[TILE_MAX];
    for (int t = 0; t < nt; t++) sumf[t] = 0;
    for (int i = 0; i < nb; ++i) {
        const uint8_t *q4 = qs + i * stride, *hm = qh ? qh + i * stride : NULL;
        const float xd = fp16_to_f32(*(const f16_t *)((const char *)d + i * stride));
        const float xm = fp16_to_f32(*(const f16_t *)((const char *)dmin + i * stride));
        uint32_t utmp[4];
        unpack_scales_k4(scales + i * stride, utmp);
        const int16x8_t mins = vreinterpretq_s16_u16(vmovl_u8(vld1_u8((const uint8_t *)utmp + 8)));
        int32_t sumi_mins[TILE_MAX], sumi[TILE_MAX];
        for (int t = 0; t < nt; t++) {
            const block_q8_K *yb = YT(block_q8_K, t) + i;
            const int16x8_t q8sums = vpaddq_s16(vld1q_s16(yb->bsums), vld1q_s16(yb->bsums + 8));
            const int32x4_t prod = vaddq_s32(vmull_s16(vget_low_s16(q8sums), vget_low_s16(mins)),
                                             vmull_s16(vget_high_s16(q8sums), vget_high_s16(mins)));
            sumi_mins[t] = vaddvq_s32(prod);
            sumi[t] = 0;
        }
        const uint8_t *sc = (const uint8_t *)utmp;
        uint8x16_t qh0 = hm ? vld1q_u8(hm) : vdupq_n_u8(0), qh1 = hm ? vld1q_u8(hm + 16) : vdupq_n_u8(0);
        for (int j = 0; j < QK_K / 64; ++j, q4 += 32) {
            PREFETCH(q4);
            const uint8x16_t b0 = vld1q_u8(q4), b1 = vld1q_u8(q4 + 16);
            uint8x16_t l0 = vandq_u8(b0, m4b), l1 = vandq_u8(b1, m4b), h0 = vshrq_n_u8(b0, 4), h1 = vshrq_n_u8(b1, 4);
            if (hm) {
                l0 = vorrq_u8(l0, vshlq_n_u8(vandq_u8(mone, qh0), 4));
                l1 = vorrq_u8(l1, vshlq_n_u8(vandq_u8(mone, qh1), 4));
                h0 = vorrq_u8(h0, vshlq_n_u8(vandq_u8(mtwo, qh0), 3));
                h1 = vorrq_u8(h1, vshlq_n_u8(vandq_u8(mtwo, qh1), 3));
                qh0 = vshrq_n_u8(qh0, 2);
                qh1 = vshrq_n_u8(qh1, 2);
            }
            for (int t = 0; t < nt; t++) {
                const int8_t *q8 = YT(block_q8_K, t)[i].qs + 64 * j;
                const int32x4_t pl = dot_s8(dot_s8(mzero, vreinterpretq_s8_u8(l0), vld1q_s8(q8)),
                                            vreinterpretq_s8_u8(l1), vld1q_s8(q8 + 16));
                const int32x4_t ph = dot_s8(dot_s8(mzero, vreinterpretq_s8_u8(h0), vld1q_s8(q8 + 32)),
                                            vreinterpretq_s8_u8(h1), vld1q_s8(q8 + 48));
                sumi[t] += vaddvq_s32(pl) * sc[2 * j] + vaddvq_s32(ph) * sc[2 * j + 1];
            }
        }
        for (int t = 0; t < nt; t++) {
            const float yd = YT(block_q8_K, t)[i].d;
            sumf[t] += (yd * xd) * sumi[t] - (yd * xm) * sumi_mins[t];
        }
    }
    for (int t = 0; t < nt; t++) out[t] = sumf[t];
#else
    const block_q8_K *y0 = y;
    for (int t = 0; t < nt; t++) {
        y = YT(block_q8_K, t);
        float sums[8] = {0}, sumf = 0;
        for (int i = 0; i < nb; ++i) {
            const uint8_t *q4 = qs + i * stride, *hm = qh ? qh + i * stride : NULL;
            const int8_t *q8 = y[i].qs;
            int8_t aux8[QK_K], *a = aux8;
            int32_t aux32[8] = {0};
            uint8_t m = 1;
            for (int j = 0; j < QK_K / 64; ++j, q4 += 32) {
                for (int l = 0; l < 32; ++l) a[l] = (int8_t)((q4[l] & 0xF) + (hm && (hm[l] & m) ? 16 : 0));
                a += 32, m <<= 1;
                for (int l = 0; l < 32; ++l) a[l] = (int8_t)((q4[l] >> 4) + (hm && (hm[l] & m) ? 16 : 0));
                a += 32, m <<= 1;
            }
            uint32_t utmp[4];
            unpack_scales_k4(scales + i * stride, utmp);
            const uint8_t *sc = (const uint8_t *)&utmp[0], *mins = (const uint8_t *)&utmp[2];
            int sumi = 0;
            for (int j = 0; j < QK_K / 16; ++j) sumi += y[i].bsums[j] * mins[j / 2];
            a = aux8;
            for (int j = 0; j < QK_K / 32; ++j) {
                const int32_t scale = sc[j];
                for (int k = 0; k < 4; ++k, q8 += 8, a += 8)
                    for (int l = 0; l < 8; ++l) aux32[l] += scale * (int16_t)(q8[l] * a[l]);
            }
            const float dd = fp16_to_f32(*(const f16_t *)((const char *)d + i * stride)) * y[i].d;
            for (int l = 0; l < 8; ++l) sums[l] += dd * aux32[l];
            const float dm = fp16_to_f32(*(const f16_t *)((const char *)dmin + i * stride)) * y[i].d;
            sumf -= dm * sumi;
        }
        for (int l = 0; l < 8; ++l) sumf += sums[l];
        out[t] = sumf;
        y = y0;
    }
#endif
}

/* llama.cpp ggml_vec_dot_q6_K_q8_K (x86 AVX2, ARM NEON without i8mm/SVE, generic): the SIMD bodies multiply the
 * unsigned 6-bit q (<= 63: maddubs pairs <= 16002) and subtract 32 * sum(scale * bsums) per block. */
ALWAYS_INLINE void dot_q6_K(int n, const block_q6_K *x, const block_q8_K *y, size_t ys, int nt, float *out) {
#if defined(FARM_AVX2)
    const __m256i m3 = _mm256_set1_epi8(3), m15 = _mm256_set1_epi8(15);
    __m256 acc[TILE_MAX];
    for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps();
    for (int i = 0; i < n / QK_K; ++i) {
        const float xd = fp16_to_f32(x[i].d);
        const uint8_t *q4 = x[i].ql, *qh = x[i].qh;
        const __m128i scales = _mm_loadu_si128((const __m128i *)x[i].scales);
        const __m256i scales16 = _mm256_cvtepi8_epi16(scales);
        __m256i sumi[TILE_MAX];
        for (int t = 0; t < nt; t++) sumi[t] = _mm256_setzero_si256();
        for (int j = 0, is = 0; j < QK_K / 128; ++j, is += 4, q4 += 64, qh += 32) {
            PREFETCH(q4);
            PREFETCH(qh);
            const __m256i q4bits1 = _mm256_loadu_si256((const __m256i *)q4);
            const __m256i q4bits2 = _mm256_loadu_si256((const __m256i *)(q4 + 32));
            const __m256i q4bitsH = _mm256_loadu_si256((const __m256i *)qh);
            const __m256i q4h_0 = _mm256_slli_epi16(_mm256_and_si256(q4bitsH, m3), 4);
            const __m256i q4h_1 = _mm256_slli_epi16(_mm256_and_si256(q4bitsH, _mm256_set1_epi8(12)), 2);
            const __m256i q4h_2 = _mm256_and_si256(q4bitsH, _mm256_set1_epi8(48));
            const __m256i q4h_3 = _mm256_srli_epi16(_mm256_and_si256(q4bitsH, _mm256_set1_epi8(-64)), 2);
            const __m256i q[4] = {
                _mm256_or_si256(_mm256_and_si256(q4bits1, m15), q4h_0),
                _mm256_or_si256(_mm256_and_si256(q4bits2, m15), q4h_1),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits1, 4), m15), q4h_2),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits2, 4), m15), q4h_3),
            };
            for (int k = 0; k < 4; k++) {
                const __m256i s16 = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, scale_shuffle_k6(is + k)));
                for (int t = 0; t < nt; t++) {
                    const int8_t *q8 = YT(block_q8_K, t)[i].qs + 128 * j + 32 * k;
                    const __m256i p16 = _mm256_maddubs_epi16(q[k], _mm256_loadu_si256((const __m256i *)q8));
                    sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(s16, p16));
                }
            }
        }
        for (int t = 0; t < nt; t++) {
            const block_q8_K *yb = YT(block_q8_K, t) + i;
            const __m256i q8sums = _mm256_loadu_si256((const __m256i *)yb->bsums);
            const __m256i q8sclsub = _mm256_slli_epi32(_mm256_madd_epi16(q8sums, scales16), 5);
            const __m256i s = _mm256_sub_epi32(sumi[t], q8sclsub);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(yb->d * xd), _mm256_cvtepi32_ps(s), acc[t]);
        }
    }
    for (int t = 0; t < nt; t++) out[t] = hsum_f8(acc[t]);
#elif defined(FARM_NEON)
    const uint8x16_t m4b = vdupq_n_u8(0xF), m3 = vdupq_n_u8(3);
    const int32x4_t vzero = vdupq_n_s32(0);
    float sum[TILE_MAX];
    for (int t = 0; t < nt; t++) sum[t] = 0;
    for (int i = 0; i < n / QK_K; ++i) {
        const uint8_t *q6 = x[i].ql, *qh = x[i].qh;
        const int8_t *scale = x[i].scales;
        const int8x16_t scales = vld1q_s8(scale);
        const int16x8_t s0 = vmovl_s8(vget_low_s8(scales)), s1 = vmovl_s8(vget_high_s8(scales));
        int32_t isum_mins[TILE_MAX], isum[TILE_MAX];
        for (int t = 0; t < nt; t++) {
            const block_q8_K *yb = YT(block_q8_K, t) + i;
            const int16x8_t b0 = vld1q_s16(yb->bsums), b1 = vld1q_s16(yb->bsums + 8);
            const int32x4_t prod = vaddq_s32(vaddq_s32(vmull_s16(vget_low_s16(b0), vget_low_s16(s0)),
                                                       vmull_s16(vget_high_s16(b0), vget_high_s16(s0))),
                                             vaddq_s32(vmull_s16(vget_low_s16(b1), vget_low_s16(s1)),
                                                       vmull_s16(vget_high_s16(b1), vget_high_s16(s1))));
            isum_mins[t] = vaddvq_s32(prod);
            isum[t] = 0;
        }
        for (int j = 0, o = 0; j < QK_K / 128; ++j, qh += 32, q6 += 64) {
            PREFETCH(q6);
            PREFETCH(qh);
            const uint8x16_t qh0 = vld1q_u8(qh), qh1 = vld1q_u8(qh + 16);
            const uint8x16_t ql[4] = {vld1q_u8(q6), vld1q_u8(q6 + 16), vld1q_u8(q6 + 32), vld1q_u8(q6 + 48)};
            for (int half = 0; half < 2; half++, o += 64, scale += 4) { /* low nibbles + qh bits 0-3, then high + 4-7 */
                const int sh = 4 * half;
                const uint8x16_t h[4] = {
                    vshlq_n_u8(vandq_u8(m3, vshlq_u8(qh0, vdupq_n_s8((int8_t)-sh))), 4),
                    vshlq_n_u8(vandq_u8(m3, vshlq_u8(qh1, vdupq_n_s8((int8_t)-sh))), 4),
                    vshlq_n_u8(vandq_u8(m3, vshlq_u8(qh0, vdupq_n_s8((int8_t)(-sh - 2)))), 4),
                    vshlq_n_u8(vandq_u8(m3, vshlq_u8(qh1, vdupq_n_s8((int8_t)(-sh - 2)))), 4),
                };
                for (int k = 0; k < 4; k++) {
                    const uint8x16_t lo = half ? vshrq_n_u8(ql[k], 4) : vandq_u8(ql[k], m4b);
                    const int8x16_t q = vreinterpretq_s8_u8(vorrq_u8(lo, h[k]));
                    for (int t = 0; t < nt; t++)
                        isum[t] += vaddvq_s32(dot_s8(vzero, q, vld1q_s8(YT(block_q8_K, t)[i].qs + o + 16 * k))) * scale[k];
                }
            }
        }
        for (int t = 0; t < nt; t++) sum[t] += fp16_to_f32(x[i].d) * YT(block_q8_K, t)[i].d * (isum[t] - 32 * isum_mins[t]);
    }
    for (int t = 0; t < nt; t++) out[t] = sum[t];
#else
    const block_q8_K *y0 = y;
    for (int t = 0; t < nt; t++) {
        y = YT(block_q8_K, t);
        float sums[8] = {0}, sumf = 0;
        for (int i = 0; i < n / QK_K; ++i) {
            const uint8_t *q4 = x[i].ql, *qh = x[i].qh;
            const int8_t *q8 = y[i].qs;
            int8_t aux8[QK_K], *a = aux8;
            int32_t aux32[8] = {0};
            for (int j = 0; j < QK_K; j += 128, a += 128, q4 += 64, qh += 32) {
                for (int l = 0; l < 32; ++l) {
                    a[l + 0] = (int8_t)((q4[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                    a[l + 32] = (int8_t)((q4[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    a[l + 64] = (int8_t)((q4[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    a[l + 96] = (int8_t)((q4[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                }
            }
            a = aux8;
            for (int j = 0; j < QK_K / 16; ++j) {
                const int scale = x[i].scales[j];
                for (int k = 0; k < 2; ++k, q8 += 8, a += 8)
                    for (int l = 0; l < 8; ++l) aux32[l] += scale * (int16_t)(q8[l] * a[l]);
            }
            const float d = fp16_to_f32(x[i].d) * y[i].d;
            for (int l = 0; l < 8; ++l) sums[l] += d * aux32[l];
        }
        for (int l = 0; l < 8; ++l) sumf += sums[l];
        out[t] = sumf;
        y = y0;
    }
#endif
}

ALWAYS_INLINE void dot_tile(int type, int n, const void *w, const void *x, size_t xs, int nt, float *out) {
    switch (type) {
    case GT_Q4_1: dot_q4_1(n, w, x, xs, nt, out); break;
    case GT_Q5_1: dot_q5_1(n, w, x, xs, nt, out); break;
    case GT_Q4_K: {
        const block_q4_K *b = w;
        dot_q45_K(n / QK_K, b->qs, NULL, b->scales, &b->d, &b->dmin, sizeof *b, x, xs, nt, out);
        break;
    }
    case GT_Q5_K: {
        const block_q5_K *b = w;
        dot_q45_K(n / QK_K, b->qs, b->qh, b->scales, &b->d, &b->dmin, sizeof *b, x, xs, nt, out);
        break;
    }
    case GT_Q6_K: dot_q6_K(n, w, x, xs, nt, out); break;
    default: farm_fail("no dot product for ggml type %s", gguf_type_name((uint32_t)type));
    }
}

float vec_dot_more(int type, int n, const void *w, const void *x) {
    float out;
    dot_tile(type, n, w, x, 0, 1, &out);
    return out;
}

/* nt is dispatched to constants so each tile width gets its own fully unrolled body. */
void gemm_more(int type, int n, const void *w, const void *x, size_t xs, int nt, float *out) {
    switch (nt) {
    case 1: dot_tile(type, n, w, x, xs, 1, out); break;
    case 2: dot_tile(type, n, w, x, xs, 2, out); break;
    case 3: dot_tile(type, n, w, x, xs, 3, out); break;
    case 4: dot_tile(type, n, w, x, xs, 4, out); break;
    default: farm_fail("gemm_more: tile of %d tokens", nt);
    }
}

/* ---- multi-row tiles (q4_1) --------------------------------------------------------------- */

/* nr weight rows `ws` bytes apart x nt activation rows: out[r * nt + t], nr * nt <= 8. The activation block is
 * loaded and its scales converted once for all rows (decode: 4 rows, 4 independent accumulator chains); every
 * output keeps dot_q4_1's operation sequence, so the results are those of the one-row kernels. */
#define XR(T, r) ((const T *)((const char *)w + (size_t)(r) * ws))
#if defined(FARM_AVX2) || defined(FARM_NEON)
ALWAYS_INLINE void rows_q4_1(int n, const void *w, size_t ws, int nr, const void *y, size_t ys, int nt, float *out) {
#if defined(FARM_AVX2)
    __m256 acc[8];
    float summs[8];
    for (int k = 0; k < nr * nt; k++) acc[k] = _mm256_setzero_ps(), summs[k] = 0;
    for (int ib = 0; ib < n / QK; ++ib) {
        float dx[4], mx[4];
        __m256i qx[4];
        for (int r = 0; r < nr; r++) {
            const block_q4_1 *xb = XR(block_q4_1, r) + ib;
            PREFETCH(xb);
            dx[r] = fp16_to_f32(xb->d), mx[r] = fp16_to_f32(xb->m), qx[r] = nibbles_32(xb->qs);
        }
        for (int t = 0; t < nt; t++) {
            const block_q8_1 *yb = YT(block_q8_1, t) + ib;
            const float dy = fp16_to_f32(yb->d), sy = fp16_to_f32(yb->s);
            const __m256i qy = _mm256_loadu_si256((const __m256i *)yb->qs);
            for (int r = 0; r < nr; r++) {
                summs[r * nt + t] += mx[r] * sy;
                acc[r * nt + t] = _mm256_fmadd_ps(_mm256_set1_ps(dx[r] * dy), dot_us8(qx[r], qy), acc[r * nt + t]);
            }
        }
    }
    for (int k = 0; k < nr * nt; k++) out[k] = hsum_f8(acc[k]) + summs[k];
#else
    float32x4_t acc[8];
    float summs[8];
    for (int k = 0; k < nr * nt; k++) acc[k] = vdupq_n_f32(0.0f), summs[k] = 0;
    for (int ib = 0; ib < n / QK; ++ib) {
        float dx[4], mx[4];
        int8x16_t lo[4], hi[4];
        for (int r = 0; r < nr; r++) {
            const block_q4_1 *xb = XR(block_q4_1, r) + ib;
            PREFETCH(xb);
            dx[r] = fp16_to_f32(xb->d), mx[r] = fp16_to_f32(xb->m);
            const uint8x16_t v = vld1q_u8(xb->qs);
            lo[r] = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F)));
            hi[r] = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
        }
        for (int t = 0; t < nt; t++) {
            const block_q8_1 *yb = YT(block_q8_1, t) + ib;
            const float dy = fp16_to_f32(yb->d), sy = fp16_to_f32(yb->s);
            const int8x16_t y0 = vld1q_s8(yb->qs), y1 = vld1q_s8(yb->qs + 16);
            for (int r = 0; r < nr; r++) {
                summs[r * nt + t] += mx[r] * sy;
                const int32x4_t p = dot_s8(dot_s8(vdupq_n_s32(0), lo[r], y0), hi[r], y1);
                acc[r * nt + t] = vmlaq_n_f32(acc[r * nt + t], vcvtq_f32_s32(p), dx[r] * dy);
            }
        }
    }
    for (int k = 0; k < nr * nt; k++) out[k] = vaddvq_f32(acc[k]) + summs[k];
#endif
}

ALWAYS_INLINE void rows_tile(int type, int n, const void *w, size_t ws, int nr, const void *x, size_t xs, int nt,
                             float *out) {
    (void)type; /* q4_1 */
    rows_q4_1(n, w, ws, nr, x, xs, nt, out);
}
#endif

int gemm_rows_more_ok(int type) {
#if defined(FARM_AVX2) || defined(FARM_NEON)
    return type == GT_Q4_1;
#else
    (void)type;
    return 0;
#endif
}

void gemm_rows_more(int type, int n, const void *w, size_t ws, int nr, const void *x, size_t xs, int nt, float *out) {
#if defined(FARM_AVX2) || defined(FARM_NEON)
    if (gemm_rows_more_ok(type)) {
        switch (nr * 16 + nt) {
        case 0x41: rows_tile(type, n, w, ws, 4, x, xs, 1, out); return;
        case 0x22: rows_tile(type, n, w, ws, 2, x, xs, 2, out); return;
        case 0x24: rows_tile(type, n, w, ws, 2, x, xs, 4, out); return;
        default: break;
        }
    }
#endif
    for (int r = 0; r < nr; r++) gemm_more(type, n, (const char *)w + (size_t)r * ws, x, xs, nt, out + r * nt);
}
