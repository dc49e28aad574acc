/* The other GGML weight types farm runs: q4_1, q5_0, q5_1 (32-blocks) and the k-quants q4_K, q5_K, q6_K
 * (256-blocks), with the activation formats llama.cpp pairs them with (ggml-cpu type_traits vec_dot_type):
 * q5_0 -> q8_0, q4_1 / q5_1 -> q8_1, k-quants -> q8_K. The code follows ggml's reference and generic
 * kernels (ggml-quants.c, ggml-cpu/quants.c) operation by operation, so the integer sums are the same and
 * float results differ from llama.cpp only by summation order. Portable C in every build: the compiler
 * vectorises the inner loops (the per-lane accumulators of the k-quant dots are ggml's own layout). */
#include <math.h>
#include <string.h>

#include "common.h"
#include "gguf.h"
#include "quant.h"

/* ---- activations ---------------------------------------------------------------------------------- */

void quantize_row_q8_1(const float *x, block_q8_1 *y, int n) {
    for (int b = 0; b < n / QK; b++, x += QK) {
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
#if defined(FARM_AVX2) /* as llama.cpp's x86 quantize_row_q8_1; its ARM one takes 1 / d (quant.c, q8_0) */
        const float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
#else
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
#endif
        y[b].d = f32_to_fp16(d);
        int sum = 0;
        /* half to even, as ggml's AVX2 (_MM_ROUND_NEAREST) and NEON (vcvtnq) quantizers round */
        for (int j = 0; j < QK; j++) sum += (y[b].qs[j] = (int8_t)lrintf(x[j] * id));
        y[b].s = f32_to_fp16(sum * d);
    }
}

static inline int nearest_int(float fval) { /* ggml-quants.c: round half to even via the float mantissa */
    float val = fval + 12582912.f;
    int i;
    memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

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

static inline void scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
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

/* ---- dot products ------------------------------------------------------------------------------- */

static float dot_q4_1(int n, const block_q4_1 *x, const block_q8_1 *y) {
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
    return sumf;
}

static float dot_q5_0(int n, const block_q5_0 *x, const block_q8_0 *y) {
    float sumf = 0;
    for (int ib = 0; ib < n / QK; ++ib) {
        uint32_t qh;
        memcpy(&qh, x[ib].qh, sizeof qh);
        int sumi0 = 0, sumi1 = 0;
        for (int j = 0; j < QK / 2; ++j) {
            const uint8_t xh_0 = ((qh & (1u << (j + 0))) >> (j + 0)) << 4;
            const uint8_t xh_1 = ((qh & (1u << (j + 16))) >> (j + 12));
            const int32_t x0 = (int8_t)(((x[ib].qs[j] & 0x0F) | xh_0) - 16);
            const int32_t x1 = (int8_t)(((x[ib].qs[j] >> 4) | xh_1) - 16);
            sumi0 += x0 * y[ib].qs[j];
            sumi1 += x1 * y[ib].qs[j + QK / 2];
        }
        sumf += (fp16_to_f32(x[ib].d) * fp16_to_f32(y[ib].d)) * (sumi0 + sumi1);
    }
    return sumf;
}

static float dot_q5_1(int n, const block_q5_1 *x, const block_q8_1 *y) {
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
    return sumf;
}

static void unpack_scales_k4(const uint8_t *src, uint32_t utmp[4]) {
    const uint32_t kmask1 = 0x3f3f3f3f, kmask2 = 0x0f0f0f0f, kmask3 = 0x03030303;
    memcpy(utmp, src, 12);
    utmp[3] = ((utmp[2] >> 4) & kmask2) | (((utmp[1] >> 6) & kmask3) << 4);
    const uint32_t uaux = utmp[1] & kmask1;
    utmp[1] = (utmp[2] & kmask2) | (((utmp[0] >> 6) & kmask3) << 4);
    utmp[2] = uaux;
    utmp[0] &= kmask1;
}

/* q4_K and q5_K: 8 sub-blocks of 32 with 6-bit scales and mins (qh == NULL for q4_K). */
static float dot_q45_K(int nb, const uint8_t *const *qs, const uint8_t *const *qh, const uint8_t *const *scales,
                       const f16_t *d, const f16_t *dmin, size_t stride, const block_q8_K *y) {
    float sums[8] = {0}, sumf = 0;
    for (int i = 0; i < nb; ++i) {
        const uint8_t *q4 = qs[0] + i * stride, *hm = qh ? qh[0] + i * stride : NULL;
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
        unpack_scales_k4(scales[0] + i * stride, utmp);
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
    return sumf;
}

static float dot_q6_K(int n, const block_q6_K *x, const block_q8_K *y) {
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
    return sumf;
}

float vec_dot_more(int type, int n, const void *w, const void *x) {
    switch (type) {
    case GT_Q4_1: return dot_q4_1(n, w, x);
    case GT_Q5_0: return dot_q5_0(n, w, x);
    case GT_Q5_1: return dot_q5_1(n, w, x);
    case GT_Q4_K: {
        const block_q4_K *b = w;
        return dot_q45_K(n / QK_K, &(const uint8_t *){b->qs}, NULL, &(const uint8_t *){b->scales}, &b->d, &b->dmin,
                         sizeof *b, x);
    }
    case GT_Q5_K: {
        const block_q5_K *b = w;
        return dot_q45_K(n / QK_K, &(const uint8_t *){b->qs}, &(const uint8_t *){b->qh},
                         &(const uint8_t *){b->scales}, &b->d, &b->dmin, sizeof *b, x);
    }
    case GT_Q6_K: return dot_q6_K(n, w, x);
    default: farm_fail("no dot product for ggml type %s", gguf_type_name((uint32_t)type));
    }
}
