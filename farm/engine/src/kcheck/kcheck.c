/* farm-kcheck: the engine's quantized dot-product kernels on fixed pseudo-random data, one line per case, so two
 * builds (scalar, AVX2, NEON on a device or under qemu) can be compared kernel by kernel.
 *
 *   farm-kcheck     prints "<simd> <type> <trial> <mode> <dot> <sum |w_i x_i|>" lines (floats as %a), then
 *                   "acts <checksum>"; the second figure bounds float summation-order differences
 *
 * Weights are random bytes (every bit pattern is a valid block) with finite f16 scales; activations go
 * through the engine's own quantizers (q8_0, q8_1, q8_K). Mode "exact": integer activations with one 127
 * per 32-block and unit weight scales, so every product and partial sum is an integer below 2^24 and every
 * correct build prints the same bits. Mode "float": random scales and activations, where builds may differ
 * by float summation order only. "acts" checksums the q8_K activations and, in exact mode, the q8_1 ones
 * (the same in every build). Then "tiles <checked> <mismatches>": every case again through gemm_more's
 * multi-token tiles (1..4 activation rows, the row under test and rotations of it) and gemm_rows_more's
 * multi-row ones (up to 4 weight rows, rotations of the row under test), each output compared bit for bit with vec_dot_more on that row (the tiles promise the same operations per output). Then "packed <checked>
 * <mismatches>": q4_0, q5_0, q8_0, q4_K and q6_K rows packed 8 at a time (pack.c) through gemm_packed with 1..4 tokens, each
 * output compared bit for bit with the row-major definition (packed_ref). Exit 0, or 2 on bad usage. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common.h"
#include "../gguf.h"
#include "../quant.h"

#define N 1024 /* elements per row: 4 k-quant blocks, 32 small blocks */
#define TRIALS 64

void farm_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("farm-kcheck: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static uint64_t rng_state = 88172645463325252ULL;
static uint32_t rnd(void) { /* xorshift64: the same stream on every target */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

typedef struct {
    int type, block_bytes, block_len, d_off, m_off; /* m_off: second f16 (m / dmin), -1 if none */
} block_kind;
static const block_kind TYPES[] = {
    {GT_Q4_1, 20, QK, 0, 2},     {GT_Q5_1, 24, QK, 0, 2},
    {GT_Q4_K, 144, QK_K, 0, 2},  {GT_Q5_K, 176, QK_K, 0, 2},  {GT_Q6_K, 210, QK_K, 208, -1},
};

/* pack.c's types (q4_K and q6_K are in TYPES too, for their row-major kernels). */
static const block_kind PACKED[] = {
    {GT_Q4_0, 18, QK, 0, -1}, {GT_Q5_0, 22, QK, 0, -1}, {GT_Q8_0, 34, QK, 0, -1},
    {GT_Q4_K, 144, QK_K, 0, 2}, {GT_Q6_K, 210, QK_K, 208, -1},
};

/* nb random blocks of kind k (every bit pattern is a valid block) with finite f16 scales: 1.0 in exact mode,
 * else |scale| in [2^-10, 2^-3), d of either sign. */
static void random_blocks(const block_kind *k, int nb, int exact, uint8_t *w) {
    for (int i = 0; i < nb * k->block_bytes; i++) w[i] = (uint8_t)rnd();
    for (int b = 0; b < nb; b++) {
        uint8_t *blk = w + b * k->block_bytes;
        const f16_t one = 0x3C00, d = (f16_t)((rnd() & 0x8000) | ((5 + rnd() % 8) << 10) | (rnd() & 0x3ff));
        const f16_t m = (f16_t)(((5 + rnd() % 8) << 10) | (rnd() & 0x3ff));
        memcpy(blk + k->d_off, exact ? &one : &d, 2);
        if (k->m_off >= 0) memcpy(blk + k->m_off, exact ? &one : &m, 2);
    }
}

/* The packed kernels' definition on ggml's row-major blocks: each block's exact integer dot, then
 * acc = fma(d_w * d_x, dot, acc) block after block. */
static float packed_ref(int type, const void *w, const void *act, int nb) {
    float acc = 0.0f;
    if (type == GT_Q6_K) { /* d * d_y * sum_s sc_s * sum_i (q_i - 32) y_i over 16-element sub-blocks */
        for (int b = 0; b < nb; b++) {
            const block_q6_K *q = (const block_q6_K *)w + b;
            const block_q8_K *y = (const block_q8_K *)act + b;
            int isum = 0;
            for (int s = 0; s < 16; s++) {
                int dot = 0;
                for (int i = 16 * s; i < 16 * s + 16; i++) { /* element i: half h, quarter qd, position l */
                    const int h = i / 128, qd = i % 128 / 32, l = i % 32;
                    const uint8_t lo = q->ql[64 * h + l + 32 * (qd % 2)], hi = q->qh[32 * h + l];
                    dot += (((qd < 2 ? lo & 0xF : lo >> 4) | ((hi >> (2 * qd)) & 3) << 4) - 32) * y->qs[i];
                }
                isum += q->scales[s] * dot;
            }
            acc = fmaf(fp16_to_f32(q->d) * y->d, (float)isum, acc);
        }
        return acc;
    }
    if (type == GT_Q4_K) { /* per super-block: d * d_y * sum_s sc_s dot_s - dmin * d_y * sum_s m_s bsum_s */
        for (int b = 0; b < nb; b++) {
            const block_q4_K *q = (const block_q4_K *)w + b;
            const block_q8_K *y = (const block_q8_K *)act + b;
            int isum = 0, msum = 0;
            for (int k = 0; k < 8; k++) {
                uint8_t sc, m;
                scale_min_k4(k, q->scales, &sc, &m);
                int dot = 0;
                for (int l = 0; l < 32; l++) {
                    const uint8_t v = q->qs[32 * (k / 2) + l];
                    dot += (k % 2 ? v >> 4 : v & 0x0f) * y->qs[32 * k + l];
                }
                isum += sc * dot;
                msum += m * (y->bsums[2 * k] + y->bsums[2 * k + 1]);
            }
            acc = fmaf(fp16_to_f32(q->d) * y->d, (float)isum, acc);
            acc = fmaf(-(fp16_to_f32(q->dmin) * y->d), (float)msum, acc);
        }
        return acc;
    }
    const block_q8_0 *x = act;
    for (int b = 0; b < nb; b++) {
        int dot = 0;
        f16_t d;
        if (type == GT_Q8_0) {
            const block_q8_0 *q = (const block_q8_0 *)w + b;
            for (int j = 0; j < QK; j++) dot += q->qs[j] * x[b].qs[j];
            d = q->d;
        } else {
            const uint8_t *qs = type == GT_Q4_0 ? ((const block_q4_0 *)w + b)->qs : ((const block_q5_0 *)w + b)->qs;
            uint32_t qh = 0;
            if (type == GT_Q5_0) memcpy(&qh, ((const block_q5_0 *)w + b)->qh, 4);
            const int off = type == GT_Q4_0 ? 8 : 16;
            for (int j = 0; j < QK / 2; j++)
                dot += ((qs[j] & 0x0f) + (int)((qh >> j) & 1) * 16 - off) * x[b].qs[j] +
                       ((qs[j] >> 4) + (int)((qh >> (j + 16)) & 1) * 16 - off) * x[b].qs[j + QK / 2];
            memcpy(&d, (const char *)w + (size_t)b * (type == GT_Q4_0 ? sizeof(block_q4_0) : sizeof(block_q5_0)), 2);
        }
        acc = fmaf(fp16_to_f32(d) * fp16_to_f32(x[b].d), (float)dot, acc);
    }
    return acc;
}

int main(int argc, char **argv) {
    (void)argv;
    if (argc != 1) farm_fail("usage: farm-kcheck (no arguments)");
    quant_init();
    static float x[N];
    static uint8_t w[N * 2];
    static block_q8_1 a1[N / QK];
    static block_q8_K ak[N / QK_K];
    long long acts = 0, tiles = 0, tile_bad = 0, packed = 0, packed_bad = 0;
    static float xr[N];
    static block_q8_0 t0[4][N / QK];
    static block_q8_1 t1[4][N / QK];
    static block_q8_K tk[4][N / QK_K];
    for (int trial = 0; trial < 2 * TRIALS; trial++) {
        const int exact = trial < TRIALS;
        for (int i = 0; i < N; i++)
            x[i] = exact ? (float)((int)(rnd() % 7) - 3) : ((float)(rnd() % 2000001) / 1e6f - 1.0f) * (1 + trial % 3 * 40);
        if (exact)
            for (int i = 0; i < N; i += QK) x[i + rnd() % QK] = 127.0f; /* d = 1 for q8_0/q8_1, d = -1 for q8_K */
        quantize_row_q8_1(x, a1, N);
        quantize_row_q8_K(x, ak, N);
        for (int k = 0; k < 4; k++) { /* tile rows: x rotated by 37k elements */
            for (int i = 0; i < N; i++) xr[i] = x[(i + 37 * k) % N];
            quantize_row_q8_0(xr, t0[k], N);
            quantize_row_q8_1(xr, t1[k], N);
            quantize_row_q8_K(xr, tk[k], N);
        }
        for (int b = 0; b < (exact ? N / QK : 0); b++) { /* float mode: x86 rounds x * (127 / amax), the others
                                                            x * (1 / d), which may differ by one near .5 */
            acts += a1[b].d * 7 + a1[b].s * 3;
            for (int j = 0; j < QK; j++) acts += a1[b].qs[j] * (j + 1);
        }
        for (int b = 0; b < N / QK_K; b++)
            for (int j = 0; j < QK_K; j++) acts += ak[b].qs[j] * (j % 13 + 1) + ak[b].bsums[j / 16];
        static q8_0_sum ts0[4][N / QK];
        for (int k = 0; k < 4; k++) q8_0_sums(t0[k], ts0[k], N / QK);
        for (size_t p = 0; p < sizeof PACKED / sizeof PACKED[0]; p++) {
            const int ty = PACKED[p].type, nb = N / PACKED[p].block_len, k4 = PACKED[p].block_len == QK_K;
            static uint8_t rows8[PACK_ROWS][N / QK * 34];
            static uint8_t pk[PACK_ROWS * (N / QK) * 40];
            for (int r = 0; r < PACK_ROWS; r++) random_blocks(&PACKED[p], nb, exact, rows8[r]);
            pack_matrix(ty, rows8, sizeof rows8[0], N, PACK_ROWS, pk);
            for (int nt = 1; nt <= 4; nt++) {
                float out[4 * PACK_ROWS];
                if (k4) gemm_packed(ty, N, pk, tk[4 - nt], sizeof tk[0], NULL, 0, nt, out);
                else gemm_packed(ty, N, pk, t0[4 - nt], sizeof t0[0], ts0[4 - nt], N / QK, nt, out);
                for (int k = 0; k < nt; k++)
                    for (int r = 0; r < PACK_ROWS; r++) {
                        const float want = packed_ref(ty, rows8[r], k4 ? (const void *)tk[4 - nt + k] : (const void *)t0[4 - nt + k], nb);
                        packed++;
                        packed_bad += memcmp(&want, &out[k * PACK_ROWS + r], sizeof want) != 0;
                    }
            }
        }
        for (size_t t = 0; t < sizeof TYPES / sizeof TYPES[0]; t++) {
            const int nb = N / TYPES[t].block_len;
            random_blocks(&TYPES[t], nb, exact, w);
            const int ty = TYPES[t].type;
            const void *act = ty == GT_Q4_1 || ty == GT_Q5_1 ? (const void *)a1 : (const void *)ak;
            static float wf[N];
            dequant_row(ty, w, wf, N);
            double mag = 0;
            for (int i = 0; i < N; i++) mag += fabs((double)wf[i] * x[i]);
            printf("%s %s %d %s %a %a\n", FARM_SIMD, gguf_type_name((uint32_t)ty), trial, exact ? "exact" : "float",
                   (double)vec_dot_more(ty, N, w, act), mag);
            const void *tact = ty == GT_Q4_1 || ty == GT_Q5_1 ? (const void *)t1 : (const void *)tk;
            const size_t ts = ty == GT_Q4_1 || ty == GT_Q5_1 ? sizeof t1[0] : sizeof tk[0];
            static uint8_t wr[4][N * 2]; /* gemm_rows_more: 4 weight rows, the row under test rotated by k blocks */
            const size_t rb = (size_t)nb * TYPES[t].block_bytes;
            for (int k = 0; k < 4; k++)
                for (size_t i = 0; i < rb; i++) wr[k][i] = w[(i + (size_t)k * TYPES[t].block_bytes) % rb];
            static const int shapes[][2] = {{4, 1}, {2, 2}, {2, 4}, {1, 3}, {3, 1}};
            for (int sh = 0; sh < 5; sh++) {
                const int nr = shapes[sh][0], nt = shapes[sh][1];
                float out[16];
                gemm_rows_more(ty, N, wr, sizeof wr[0], nr, tact, ts, nt, out);
                for (int r = 0; r < nr; r++)
                    for (int k = 0; k < nt; k++) {
                        const float want = vec_dot_more(ty, N, wr[r], (const char *)tact + k * ts);
                        tiles++;
                        tile_bad += memcmp(&want, &out[r * nt + k], sizeof want) != 0;
                    }
            }
            for (int nt = 1; nt <= 4; nt++) {
                for (int first = 0; first + nt <= 4; first++) {
                    float out[4];
                    const char *base = (const char *)tact + first * ts;
                    gemm_more(ty, N, w, base, ts, nt, out);
                    for (int k = 0; k < nt; k++) {
                        const float want = vec_dot_more(ty, N, w, base + k * ts);
                        tiles++;
                        tile_bad += memcmp(&want, &out[k], sizeof want) != 0;
                    }
                }
            }
        }
    }
    printf("tiles %lld %lld\n", tiles, tile_bad);
    printf("packed %lld %lld\n", packed, packed_bad);
    printf("acts %lld\n", acts);
    return 0;
}
