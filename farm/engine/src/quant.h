/* Numeric kernels: fp16 conversion, GGML block formats, q8_0 activation quantization, dot products. */
#ifndef FARM_QUANT_H
#define FARM_QUANT_H

#include <stddef.h>
#include <stdint.h>

#define QK 32 /* elements per q4_0 / q8_0 block */

typedef uint16_t f16_t;

/* GGML block layouts, byte-exact with ggml-common.h. */
typedef struct {
    f16_t d;
    uint8_t qs[QK / 2]; /* low nibbles: elements 0..15, high nibbles: 16..31; value = (q - 8) * d */
} block_q4_0;
typedef struct {
    f16_t d;
    int8_t qs[QK]; /* value = q * d */
} block_q8_0;

#define QK_K 256 /* elements per k-quant / q8_K block */
typedef struct {
    f16_t d, m;
    uint8_t qs[QK / 2]; /* value = q * d + m */
} block_q4_1;
typedef struct {
    f16_t d;
    uint8_t qh[4]; /* 5th bits */
    uint8_t qs[QK / 2]; /* value = (q - 16) * d */
} block_q5_0;
typedef struct {
    f16_t d, m;
    uint8_t qh[4];
    uint8_t qs[QK / 2]; /* value = q * d + m */
} block_q5_1;
typedef struct {
    f16_t d, s; /* s = d * sum(qs) */
    int8_t qs[QK];
} block_q8_1;
typedef struct {
    f16_t d, dmin;
    uint8_t scales[12]; /* 8 six-bit scales and mins */
    uint8_t qs[QK_K / 2];
} block_q4_K;
typedef struct {
    f16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
} block_q5_K;
typedef struct {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    f16_t d;
} block_q6_K;
typedef struct {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];
} block_q8_K;

_Static_assert(sizeof(block_q4_1) == 20 && sizeof(block_q5_0) == 22 && sizeof(block_q5_1) == 24 &&
                   sizeof(block_q8_1) == 36, "32-block sizes as in ggml-common.h");
_Static_assert(sizeof(block_q4_K) == 144 && sizeof(block_q5_K) == 176 && sizeof(block_q6_K) == 210 &&
                   sizeof(block_q8_K) == 292, "k-quant block sizes as in ggml-common.h");
_Static_assert(sizeof(block_q4_0) == 18, "q4_0 block must be 18 bytes");
_Static_assert(sizeof(block_q8_0) == 34, "q8_0 block must be 34 bytes");

void quant_init(void);
float fp16_to_f32(f16_t h);
f16_t f32_to_fp16(float f);

/* Activations for q4_0/q8_0 matmuls are quantized to q8_0 per 32-block: d = amax/127 (stored as f16),
 * q = round-half-even(x * (1/d)), the rounding tests' numpy reference reproduces exactly. n % 32 == 0. */
void quantize_row_q8_0(const float *x, block_q8_0 *y, int n);
float quantize_block_q8(const float *x, int8_t qs[QK]); /* one block; returns d before its f16 rounding */
void dequant_row(int type, const void *src, float *dst, int n);
void f32_to_f16_row(const float *x, f16_t *y, int n);
void f16_to_f32_row(const f16_t *x, float *y, int n);

/* Dot products of one f32/f16 weight row with one f32 activation row. (Quantized matrices: pack.c's kernels for
 * the types it packs, kquant.c's for the others.) */
float vec_dot_f32(int n, const float *w, const float *x);
float vec_dot_f16(int n, const f16_t *w, const float *x);

/* kquant.c: q4_1, q5_1, q4_K, q5_K, q6_K weights row-major (q4_K / q6_K: where pack_type says no), q5_0's
 * dequantization, and the activation formats q8_1, q8_K. */
void quantize_row_q8_1(const float *x, block_q8_1 *y, int n);
void quantize_row_q8_K(const float *x, block_q8_K *y, int n);
int dequant_row_more(int type, const void *src, float *dst, int n); /* 0: not one of these types */
void scale_min_k4(int j, const uint8_t *scales, uint8_t *d, uint8_t *m); /* q4_K / q5_K sub-block j's 6-bit pair */
float vec_dot_more(int type, int n, const void *w, const void *x);
/* One weight row against nt (1..4) activation rows `xs` bytes apart: out[t] = w . x_t, each weight block decoded
 * once for all nt tokens. Bit-identical to nt vec_dot_more calls (same operations per output). */
void gemm_more(int type, int n, const void *w, const void *x, size_t xs, int nt, float *out);
/* nr weight rows `ws` bytes apart x nt activation rows: out[r * nt + t]. Real multi-row kernels (the activation
 * block shared by the rows) where gemm_rows_more_ok(type) for (nr, nt) = (4, 1), (2, 2), (2, 4); else rows of
 * gemm_more. Bit-identical to vec_dot_more per output either way. */
int gemm_rows_more_ok(int type);
void gemm_rows_more(int type, int n, const void *w, size_t ws, int nr, const void *x, size_t xs, int nt, float *out);

/* pack.c: q4_0 / q5_0 / q8_0 / q4_K / q6_K matrices with PACK_ROWS rows interleaved per block (see pack.c for why).
 * In a block_q4_0x8, qs[32 j + 4 r + e] is row r's byte 4 j + e (low nibble: element 4 j + e, high: 16 + 4 j + e);
 * in a block_q8_0x8, qs[32 c + 4 r + e] is row r's element 4 c + e. Rows are padded to a multiple of 8. */
#define PACK_ROWS 8
typedef struct {
    f16_t d[PACK_ROWS];
    uint8_t qs[PACK_ROWS * QK / 2];
} block_q4_0x8;
typedef struct {
    f16_t d[PACK_ROWS];
    int8_t qs[PACK_ROWS * QK];
} block_q8_0x8;
typedef struct {
    f16_t d[PACK_ROWS];
    uint32_t qh[8]; /* qh[c] bit 4 r + e: the 5th bit of row r's element 4 c + e */
    uint8_t qs[PACK_ROWS * QK / 2]; /* as block_q4_0x8 */
} block_q5_0x8;
typedef struct {
    f16_t d[PACK_ROWS], dmin[PACK_ROWS];
    uint8_t sc[8][PACK_ROWS], m[8][PACK_ROWS]; /* sub-block s's 6-bit scale and min of row r, unpacked */
    uint8_t qs[4][8][32]; /* qs[j][c][4 r + e] = row r's qs[32 j + 4 c + e]: sub-blocks 2j (low), 2j+1 (high) */
} block_q4_Kx8; /* 1184 bytes for 8 rows (1152 in ggml's layout: the scales are stored unpacked) */
typedef struct {
    f16_t d[PACK_ROWS];
    int8_t sc[16][PACK_ROWS]; /* sub-block s (16 elements) of row r */
    uint8_t ql[32][32];       /* ql[v][4 r + e]: low 4 bits of element 4 v + e (low nibble) and 4 (v + 32) + e */
    uint8_t qh[16][32];       /* qh[u][4 r + e]: bits 2i, 2i+1 = high 2 bits of element 4 (u + 16 i) + e */
} block_q6_Kx8;
typedef struct {
    float d; /* the block's scale */
    int32_t s; /* sum of its quants */
} q8_0_sum;
_Static_assert(sizeof(block_q4_0x8) == 8 * sizeof(block_q4_0) && sizeof(block_q8_0x8) == 8 * sizeof(block_q8_0) &&
                   sizeof(block_q5_0x8) == 8 * sizeof(block_q5_0),
               "packed blocks hold 8 ggml blocks");

int pack_type(int type); /* 1: this build runs `type` matrices packed */
size_t pack_bytes(int type, int n_in, int n_out);
size_t pack_group_bytes(int type, int n_in); /* one group of PACK_ROWS rows */
void pack_matrix(int type, const void *src, size_t row_bytes, int n_in, int n_out, void *dst);
void pack_row(int type, const void *packed, int n_in, int row, float *dst); /* dequantize one row */
void q8_0_sums(const block_q8_0 *x, q8_0_sum *s, int nb);
/* One group of PACK_ROWS packed rows x nt (1..4) activation rows `xs` bytes apart (q8_0, with their sums `xis`
 * entries apart; q4_K / q6_K: q8_K, xi unused): out[t * PACK_ROWS + r]. */
void gemm_packed(int type, int n, const void *w, const void *x, size_t xs, const q8_0_sum *xi, size_t xis, int nt,
                 float *out);

/* out += a * v, for attention's weighted sum of V rows (KV cache f16 or f32). */
void axpy_f16(int n, float a, const f16_t *v, float *out);
void axpy_f32(int n, float a, const float *v, float *out);

#endif
