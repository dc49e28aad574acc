/* Numeric kernels. Each public function has a scalar body that is always compiled (FARM_SCALAR builds
 * use only it) and, where it matters for speed, an AVX2/FMA/F16C or NEON body. The SIMD bodies keep the
 * scalar semantics (same rounding, same per-block integer sums) so results differ only by float
 * summation order. */
#include "quant.h"

#include <math.h>
#include <string.h>

#include "common.h"
#include "gguf.h"

#if defined(FARM_AVX2)
#include <immintrin.h>
#elif defined(FARM_NEON)
#include <arm_neon.h>
#endif

/* ---- fp16 ---------------------------------------------------------------------------------------- */

static float fp16_table[1 << 16]; /* scalar path: conversion by lookup, as ggml does */

static float fp16_to_f32_bits(f16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) {
                mant <<= 1;
                exp--;
            }
            bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

void quant_init(void) {
    for (uint32_t i = 0; i < (1u << 16); i++) fp16_table[i] = fp16_to_f32_bits((f16_t)i);
}

float fp16_to_f32(f16_t h) {
#if defined(FARM_AVX2)
    return _cvtsh_ss(h);
#elif defined(FARM_NEON)
    __fp16 v;
    memcpy(&v, &h, 2);
    return (float)v;
#else
    return fp16_table[h];
#endif
}

f16_t f32_to_fp16(float f) {
#if defined(FARM_AVX2)
    return (f16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#elif defined(FARM_NEON)
    __fp16 v = (__fp16)f;
    f16_t h;
    memcpy(&h, &v, 2);
    return h;
#else
    /* Round to nearest even, like F16C, NEON and numpy (from the FP16 library's algorithm). */
    uint32_t w;
    memcpy(&w, &f, 4);
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    uint32_t bias = two_w & 0xff000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    float b;
    uint32_t bb = (bias >> 1) + 0x07800000u;
    memcpy(&b, &bb, 4);
    base = b + base;
    uint32_t bits;
    memcpy(&bits, &base, 4);
    const uint32_t exp_bits = (bits >> 13) & 0x00007c00u;
    const uint32_t mant_bits = bits & 0x00000fffu;
    const uint32_t nonsign = exp_bits + mant_bits;
    return (f16_t)((sign >> 16) | (two_w > 0xff000000u ? 0x7e00u : nonsign));
#endif
}

void f32_to_f16_row(const float *x, f16_t *y, int n) {
    int i = 0;
#if defined(FARM_AVX2)
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; i++) y[i] = f32_to_fp16(x[i]);
}

void f16_to_f32_row(const f16_t *x, float *y, int n) { /* exact in every build */
    int i = 0;
#if defined(FARM_AVX2)
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
#elif defined(FARM_NEON)
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vcvt_f32_f16(vld1_f16((const __fp16 *)(x + i))));
#endif
    for (; i < n; i++) y[i] = fp16_to_f32(x[i]);
}

/* ---- q8_0 activations ---------------------------------------------------------------------------- */

/* One 32-block of activations to int8 (q8_0 and q8_1 share it): returns the unrounded d = amax / 127. */
float quantize_block_q8(const float *x, int8_t qs[QK]) {
    float amax = 0.0f;
#if defined(FARM_AVX2)
    const __m256 signbit = _mm256_set1_ps(-0.0f);
    __m256 v[4], m = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        m = _mm256_max_ps(m, _mm256_andnot_ps(signbit, v[k]));
    }
    __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    amax = _mm_cvtss_f32(m4);
    /* llama.cpp's x86 quantizer takes id = 127 / amax (its ARM and generic ones 1 / d): the last ulp of
     * id decides the rounding of values near .5, so each build follows its own llama.cpp counterpart */
    const float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int k = 0; k < 4; k++)
        q[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[k], vid), _MM_FROUND_TO_NEAREST_INT));
    /* pack 32 int32 -> 32 int8 and undo the lane interleave of the pack instructions */
    __m256i p16a = _mm256_packs_epi32(q[0], q[1]), p16b = _mm256_packs_epi32(q[2], q[3]);
    __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)qs, p8);
    return d;
#elif defined(FARM_NEON)
    float32x4_t v[8];
    float32x4_t m = vdupq_n_f32(0.0f);
    for (int k = 0; k < 8; k++) {
        v[k] = vld1q_f32(x + 4 * k);
        m = vmaxq_f32(m, vabsq_f32(v[k]));
    }
    amax = vmaxvq_f32(m);
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int k = 0; k < 4; k++) { /* round half to even; |q| <= 127 so narrowing is exact */
        const int32x4_t a = vcvtnq_s32_f32(vmulq_n_f32(v[2 * k], id));
        const int32x4_t c = vcvtnq_s32_f32(vmulq_n_f32(v[2 * k + 1], id));
        vst1_s8(qs + 8 * k, vmovn_s16(vcombine_s16(vmovn_s32(a), vmovn_s32(c))));
    }
    return d;
#else
    for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < QK; j++) qs[j] = (int8_t)lrintf(x[j] * id); /* default mode: half-even */
    return d;
#endif
}

void quantize_row_q8_0(const float *x, block_q8_0 *y, int n) {
    for (int b = 0; b < n / QK; b++, x += QK) y[b].d = f32_to_fp16(quantize_block_q8(x, y[b].qs));
}

void dequant_row(int type, const void *src, float *dst, int n) {
    switch (type) {
    case GT_F32: memcpy(dst, src, (size_t)n * 4); break;
    case GT_F16: f16_to_f32_row(src, dst, n); break;
    case GT_Q8_0:
        for (int b = 0; b < n / QK; b++) {
            const block_q8_0 *x = (const block_q8_0 *)src + b;
            const float d = fp16_to_f32(x->d);
            for (int j = 0; j < QK; j++) dst[b * QK + j] = x->qs[j] * d;
        }
        break;
    case GT_Q4_0:
        for (int b = 0; b < n / QK; b++) {
            const block_q4_0 *x = (const block_q4_0 *)src + b;
            const float d = fp16_to_f32(x->d);
            for (int j = 0; j < QK / 2; j++) {
                dst[b * QK + j] = ((x->qs[j] & 0x0f) - 8) * d;
                dst[b * QK + j + QK / 2] = ((x->qs[j] >> 4) - 8) * d;
            }
        }
        break;
    default:
        if (!dequant_row_more(type, src, dst, n)) farm_fail("dequant: no kernel for type %s", gguf_type_name(type));
    }
}

/* ---- SIMD helpers -------------------------------------------------------------------------------- */

#if defined(FARM_AVX2)
static inline float hsum256(__m256 x) {
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}
#endif

/* ---- dot products -------------------------------------------------------------------------------- */

float vec_dot_f32(int n, const float *w, const float *x) {
    int i = 0;
    float s = 0.0f;
#if defined(FARM_AVX2)
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
    }
    s = hsum256(_mm256_add_ps(a0, a1));
#elif defined(FARM_NEON)
    float32x4_t a0 = vdupq_n_f32(0), a1 = vdupq_n_f32(0);
    for (; i + 8 <= n; i += 8) {
        a0 = vfmaq_f32(a0, vld1q_f32(w + i), vld1q_f32(x + i));
        a1 = vfmaq_f32(a1, vld1q_f32(w + i + 4), vld1q_f32(x + i + 4));
    }
    s = vaddvq_f32(vaddq_f32(a0, a1));
#endif
    for (; i < n; i++) s += w[i] * x[i];
    return s;
}

float vec_dot_f16(int n, const f16_t *w, const float *x) {
    int i = 0;
    float s = 0.0f;
#if defined(FARM_AVX2)
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i))), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i + 8))),
                             _mm256_loadu_ps(x + i + 8), a1);
    }
    s = hsum256(_mm256_add_ps(a0, a1));
#elif defined(FARM_NEON)
    float32x4_t a0 = vdupq_n_f32(0), a1 = vdupq_n_f32(0);
    for (; i + 8 <= n; i += 8) {
        const float16x8_t h = vld1q_f16((const __fp16 *)(w + i));
        a0 = vfmaq_f32(a0, vcvt_f32_f16(vget_low_f16(h)), vld1q_f32(x + i));
        a1 = vfmaq_f32(a1, vcvt_high_f32_f16(h), vld1q_f32(x + i + 4));
    }
    s = vaddvq_f32(vaddq_f32(a0, a1));
#endif
    for (; i < n; i++) s += fp16_to_f32(w[i]) * x[i];
    return s;
}


/* ---- attention helpers --------------------------------------------------------------------------- */

void axpy_f32(int n, float a, const float *v, float *out) {
    int i = 0;
#if defined(FARM_AVX2)
    const __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(v + i), _mm256_loadu_ps(out + i)));
#elif defined(FARM_NEON)
    for (; i + 4 <= n; i += 4) vst1q_f32(out + i, vfmaq_n_f32(vld1q_f32(out + i), vld1q_f32(v + i), a));
#endif
    for (; i < n; i++) out[i] += a * v[i];
}

void axpy_f16(int n, float a, const f16_t *v, float *out) {
    int i = 0;
#if defined(FARM_AVX2)
    const __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8) {
        const __m256 vv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + i)));
        _mm256_storeu_ps(out + i, _mm256_fmadd_ps(va, vv, _mm256_loadu_ps(out + i)));
    }
#elif defined(FARM_NEON)
    for (; i + 4 <= n; i += 4)
        vst1q_f32(out + i, vfmaq_n_f32(vld1q_f32(out + i), vcvt_f32_f16(vld1_f16((const __fp16 *)(v + i))), a));
#endif
    for (; i < n; i++) out[i] += a * fp16_to_f32(v[i]);
}
