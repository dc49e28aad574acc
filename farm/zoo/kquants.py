"""numpy ports of ggml's reference k-quantizers (q2_K, q3_K, q4_K, q5_K, q6_K), bit for bit.

These are the quantizers llama-quantize runs when it has no importance matrix: ``quantize_qN_K`` with
``quant_weights == NULL`` calls ``quantize_row_qN_K_ref`` (ggml/src/ggml-quants.c). Each function here
names the C function it mirrors. They are vectorized across blocks; every float32 sum runs over a block's
elements in the C loop's order (a Python loop over at most 32 columns), so the rounding is the same as
ggml's and the bytes are too (tests/test_zoo_kquants.py compares them with llama-quantize's).

`quantize(x, type)` takes a float32 array whose last axis is a multiple of 256 and returns the packed
blocks as uint8, shaped (..., row bytes), as gguf.quants.quantize does for the legacy types.
"""

from __future__ import annotations

import numpy as np

QK_K = 256
GROUP_MAX_EPS = np.float32(1e-15)  # ggml-quants.c GROUP_MAX_EPS
# bytes per 256-element block (ggml-common.h block_qN_K)
BLOCK_BYTES: dict[str, int] = {"q2_k": 84, "q3_k": 110, "q4_k": 144, "q5_k": 176, "q6_k": 210}

F32 = np.float32


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: adding 1.5 * 2^23 rounds a float32 to an integer, ties to even (= rint)."""
    return np.rint(v.astype(F32)).astype(np.int32)


def _round_clip(v: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """MAX(lo, MIN(hi, nearest_int(v))) kept in float32, in place (v is a temporary): the integers are small,
    so float32 holds them exactly and the int round trip is saved."""
    np.rint(v, out=v)
    return np.clip(v, F32(lo), F32(hi), out=v)


def _fp16(v: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16 (round to nearest even) as float16."""
    return np.asarray(v, dtype=F32).astype(np.float16)


def _seq_sum(terms: np.ndarray) -> np.ndarray:
    """Sum over axis 0 in order in float32, as a C `for` loop accumulates (numpy's own sum is pairwise,
    which rounds differently). The helpers below hold a sub-block's elements on axis 0 (shape (n, M)),
    so each step adds one contiguous row."""
    acc = terms[0].copy()
    for i in range(1, terms.shape[0]):
        acc += terms[i]
    return acc


def make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                     use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """make_qkx2_quants over rows of `x` (M, n): (scale (M,), the_min (M,), L (M, n) uint8)."""
    x = np.ascontiguousarray(x.T, dtype=F32)  # (n, M)
    w = np.ascontiguousarray(weights.T, dtype=F32)
    mn = np.minimum(x.min(axis=0), F32(0))  # `if (min > 0) min = 0`
    mx = x.max(axis=0)
    sum_w = _seq_sum(w)
    sum_x = _seq_sum(w * x)
    flat = mx == mn
    span = np.where(flat, F32(1), mx - mn).astype(F32)

    def error(scale: np.ndarray, lmin: np.ndarray, L: np.ndarray) -> np.ndarray:
        diff = scale * L
        diff += lmin
        diff -= x
        if use_mad:
            np.abs(diff, out=diff)
        else:
            diff *= diff
        diff *= w
        return _seq_sum(diff)

    iscale = F32(nmax) / span
    scale = F32(1) / iscale
    L = _round_clip(iscale * (x - mn), 0, nmax)
    best = error(scale, mn, L)
    lmin = mn.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        for step in range(nstep + 1):
            # the C loop reads `min` after a better step replaced it: the current lmin, not the first one
            span = np.where(flat, F32(1), mx - lmin).astype(F32)
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / span
            laux = x - lmin
            laux *= iscale
            laux = _round_clip(laux, 0, nmax)
            wl = w * laux
            sum_l = _seq_sum(wl)
            sum_l2 = _seq_sum(wl * laux)
            sum_xl = _seq_sum(wl * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale).astype(F32)
            this_min = np.where(pos, F32(0), this_min).astype(F32)
            cur = error(this_scale, this_min, laux)
            better = (D > 0) & (cur < best)
            L = np.where(better, laux, L)
            best = np.where(better, cur, best)
            scale = np.where(better, this_scale, scale)
            lmin = np.where(better, this_min, lmin)
    L = np.where(flat, F32(0), L)
    scale = np.where(flat, F32(0), scale)
    return scale.astype(F32), (-lmin).astype(F32), np.ascontiguousarray(L.T).astype(np.uint8)


def _abs_argmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """The element of largest |x| along `axis`, the first one on ties (the C loop's `if (ax > amax)`)."""
    idx = np.expand_dims(np.argmax(np.abs(x), axis=axis), axis)
    return np.take_along_axis(x, idx, axis=axis).squeeze(axis)


def make_qx_quants_rmse1(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL) over rows: (scale (M,), L (M, n) int8 in 0..2nmax-1)."""
    x = np.ascontiguousarray(x.T, dtype=F32)  # (n, M)
    mx = _abs_argmax(x, axis=0)
    zero = np.abs(mx) < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx).astype(F32)
    w = x * x
    wx = w * x

    def trial(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lv = _round_clip(iscale * x, -nmax, nmax - 1)
        return lv, _seq_sum(wx * lv), _seq_sum((w * lv) * lv)

    iscale = F32(-nmax) / mx
    L, sumlx, suml2 = trial(iscale)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32)
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(F32(nmax) + F32(0.1) * F32(step)) / mx
            lv, sumlx, suml2 = trial(iscale)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            L = np.where(better, lv, L)
            scale = np.where(better, sumlx / suml2, scale).astype(F32)
            best = np.where(better, scale * sumlx, best).astype(F32)
    L = np.where(zero, F32(-nmax), L)  # all-zero rows: L = 0 after the + nmax below
    scale = np.where(zero, F32(0), scale)
    return scale.astype(F32), np.ascontiguousarray((L + nmax).T).astype(np.int8)


def make_q3_quants_rmse(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_q3_quants(n, nmax, x, L, do_rmse=true) over rows: (scale (M,), L (M, n) int8 in 0..2nmax-1)."""
    x = np.ascontiguousarray(x.T, dtype=F32)  # (n, M)
    mx = _abs_argmax(x, axis=0)
    zero = np.abs(mx) < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx).astype(F32)
    iscale = F32(-nmax) / mx
    L = np.clip(nearest_int(iscale * x), -nmax, nmax - 1).astype(F32)
    w = x * x
    wx = w * x
    sumlx = _seq_sum(wx * L)
    suml2 = _seq_sum((w * L) * L)
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(5):
            changed = np.zeros(x.shape[1], dtype=bool)
            for i in range(x.shape[0]):
                li = L[i]
                slx = sumlx - wx[i] * li
                sl2 = suml2 - (w[i] * li) * li
                new_l = np.clip(nearest_int((x[i] * sl2) / slx), -nmax, nmax - 1).astype(F32)
                slx2 = slx + wx[i] * new_l
                sl22 = sl2 + (w[i] * new_l) * new_l
                take = (slx > 0) & (new_l != li) & (sl22 > 0) & ((slx2 * slx2) * suml2 > (sumlx * sumlx) * sl22)
                L[i] = np.where(take, new_l, li)
                sumlx = np.where(take, slx2, sumlx).astype(F32)
                suml2 = np.where(take, sl22, suml2).astype(F32)
                changed |= take
            # a row with no change in a pass would repeat the same pass: the C loop's break changes nothing
            if not changed.any():
                break
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(F32)
    L = np.where(zero, F32(-nmax), L)
    scale = np.where(zero, F32(0), scale)
    return scale.astype(F32), np.ascontiguousarray((L + nmax).T).astype(np.int8)


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """(nb, 256) values 0..3 -> (nb, 64): qs[j/4 + l] = L[j+l] | L[j+l+32]<<2 | L[j+l+64]<<4 | L[j+l+96]<<6."""
    q = L.astype(np.uint8).reshape(-1, 2, 4, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


def _scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The 12 scale bytes of q4_K/q5_K from 8 six-bit scales and mins (the packing in quantize_row_q4_K_ref)."""
    s = np.zeros((ls.shape[0], 12), dtype=np.uint8)
    s[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    s[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    s[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return s


def _q45_k(x: np.ndarray, nmax: int, rmin: float, nstep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The part quantize_row_q4_K_ref and quantize_row_q5_K_ref share: (d|dmin|scales bytes (nb, 16), L)."""
    nb = x.shape[0]
    sub = x.reshape(nb * 8, 32)
    sum_x2 = _seq_sum(np.ascontiguousarray((sub * sub).T))
    av_x = np.sqrt(sum_x2 / F32(32)).astype(F32)
    weights = av_x[:, None] + np.abs(sub)
    scales, mins, L = make_qkx2_quants(sub, weights, nmax, rmin, 0.1, nstep, False)
    scales, mins, L = scales.reshape(nb, 8), mins.reshape(nb, 8), L.reshape(nb, 8, 32)
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0)).astype(F32)
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0)).astype(F32)
    ls = np.minimum(nearest_int(inv_scale[:, None] * scales) & 0xFF, 63).astype(np.uint8)  # uint8_t ls = ...
    lm = np.minimum(nearest_int(inv_min[:, None] * mins) & 0xFF, 63).astype(np.uint8)
    d = _fp16(max_scale / F32(63))
    dmin = _fp16(max_min / F32(63))
    dl = d.astype(F32)[:, None] * ls.astype(F32)
    ml = dmin.astype(F32)[:, None] * lm.astype(F32)
    xs = x.reshape(nb, 8, 32)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(nearest_int((xs + ml[:, :, None]) / dl[:, :, None]), 0, nmax).astype(np.uint8)
    L = np.where((dl != 0)[:, :, None], requant, L).reshape(nb, QK_K)
    head = np.concatenate([d.view(np.uint8).reshape(nb, 2), dmin.view(np.uint8).reshape(nb, 2),
                           _scale_min_k4(ls, lm)], axis=1)
    return head, L


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """quantize_row_q4_K_ref: (nb, 256) float32 -> (nb, 144) block_q4_K bytes."""
    head, L = _q45_k(x, 15, -1.0, 20)
    q = L.reshape(-1, 4, 2, 32)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([head, qs], axis=1)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    """quantize_row_q5_K_ref: (nb, 256) float32 -> (nb, 176) block_q5_K bytes."""
    head, L = _q45_k(x, 31, -0.5, 15)
    q = L.reshape(-1, 4, 2, 32)  # chunk n/64, half, j
    hi = (q >> 4) & 1
    lo = q & 0xF
    qh = np.zeros((q.shape[0], 32), dtype=np.uint8)
    for c in range(4):
        qh |= (hi[:, c, 0] << (2 * c)) | (hi[:, c, 1] << (2 * c + 1))
    qs = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([head, qh, qs], axis=1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """quantize_row_q6_K_ref: (nb, 256) float32 -> (nb, 210) block_q6_K bytes (ql, qh, scales, d)."""
    nb = x.shape[0]
    scales, L = make_qx_quants_rmse1(x.reshape(nb * 16, 16), 32)
    scales, L = scales.reshape(nb, 16), L.reshape(nb, 16, 16)
    max_scale = _abs_argmax(scales)
    empty = np.abs(max_scale) < GROUP_MAX_EPS
    max_scale = np.where(empty, F32(1), max_scale).astype(F32)
    iscale = F32(-128) / max_scale
    d = _fp16(F32(1) / iscale)
    sc = np.minimum(127, nearest_int(iscale[:, None] * scales)).astype(np.int8)
    dl = d.astype(F32)[:, None] * sc.astype(F32)
    xs = x.reshape(nb, 16, 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = (np.clip(nearest_int(xs / dl[:, :, None]), -32, 31) + 32).astype(np.int8)
    L = np.where((dl != 0)[:, :, None], requant, L).astype(np.uint8).reshape(nb, 2, 4, 32)
    ql = np.concatenate([(L[:, :, 0] & 0xF) | ((L[:, :, 2] & 0xF) << 4),
                         (L[:, :, 1] & 0xF) | ((L[:, :, 3] & 0xF) << 4)], axis=2).reshape(nb, 128)
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4)
          | ((L[:, :, 3] >> 4) << 6)).reshape(nb, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), d.view(np.uint8).reshape(nb, 2)], axis=1)
    out[empty] = 0  # memset(&y[i], 0, sizeof(block_q6_K))
    return out


def quantize_q2_k(x: np.ndarray) -> np.ndarray:
    """quantize_row_q2_K_ref: (nb, 256) float32 -> (nb, 84) block_q2_K bytes (scales, qs, d, dmin)."""
    nb = x.shape[0]
    sub = x.reshape(nb * 16, 16)
    scales, mins, L = make_qkx2_quants(sub, np.abs(sub), 3, -0.5, 0.1, 15, True)
    scales, mins, L = scales.reshape(nb, 16), mins.reshape(nb, 16), L.reshape(nb, 16, 16)
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    q4scale = F32(15)
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = np.where(max_scale[:, None] > 0, nearest_int((q4scale / max_scale)[:, None] * scales) & 0xFF, 0)
        lm = np.where(max_min[:, None] > 0, (nearest_int((q4scale / max_min)[:, None] * mins) << 4) & 0xFF, 0)
    sc = (ls | lm).astype(np.uint8)
    d = np.where(max_scale > 0, _fp16(max_scale / q4scale), np.float16(0))
    dmin = np.where(max_min > 0, _fp16(max_min / q4scale), np.float16(0))
    dl = d.astype(F32)[:, None] * (sc & 0xF).astype(F32)
    ml = dmin.astype(F32)[:, None] * (sc >> 4).astype(F32)
    xs = x.reshape(nb, 16, 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(nearest_int((xs + ml[:, :, None]) / dl[:, :, None]), 0, 3).astype(np.uint8)
    L = np.where((dl != 0)[:, :, None], requant, L).reshape(nb, QK_K)
    return np.concatenate([sc, _pack_2bit(L), d.astype(np.float16).view(np.uint8).reshape(nb, 2),
                           dmin.astype(np.float16).view(np.uint8).reshape(nb, 2)], axis=1)


def quantize_q3_k(x: np.ndarray) -> np.ndarray:
    """quantize_row_q3_K_ref: (nb, 256) float32 -> (nb, 110) block_q3_K bytes (hmask, qs, scales, d)."""
    nb = x.shape[0]
    scales, L = make_q3_quants_rmse(x.reshape(nb * 16, 16), 4)
    scales, L = scales.reshape(nb, 16), L.reshape(nb, 16, 16)
    max_scale = _abs_argmax(scales)
    has = max_scale != 0
    safe = np.where(has, max_scale, F32(1)).astype(F32)
    iscale = F32(-32) / safe
    lv = (np.clip(nearest_int(iscale[:, None] * scales), -32, 31) + 32).astype(np.uint8)
    lv = np.where(has[:, None], lv, np.uint8(0)).astype(np.uint8)
    sb = np.zeros((nb, 12), dtype=np.uint8)
    sb[:, 0:8] = (lv[:, 0:8] & 0xF) | ((lv[:, 8:16] & 0xF) << 4)
    hi = lv >> 4
    for j in range(16):
        sb[:, 8 + j % 4] |= hi[:, j] << (2 * (j // 4))
    d = np.where(has, _fp16(F32(1) / iscale), np.float16(0)).astype(np.float16)
    dl = d.astype(F32)[:, None] * (lv.astype(np.int32) - 32).astype(F32)
    dl = np.where(has[:, None], dl, F32(0))
    xs = x.reshape(nb, 16, 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = (np.clip(nearest_int(xs / dl[:, :, None]), -4, 3) + 4).astype(np.int8)
    L = np.where((dl != 0)[:, :, None], requant, L).astype(np.uint8).reshape(nb, QK_K)
    high = (L > 3).reshape(nb, 8, 32)  # bit b of hmask[m] is element 32*b + m
    hmask = np.zeros((nb, 32), dtype=np.uint8)
    for b in range(8):
        hmask |= high[:, b].astype(np.uint8) << b
    L = np.where(L > 3, L - 4, L)
    return np.concatenate([hmask, _pack_2bit(L), sb, d.view(np.uint8).reshape(nb, 2)], axis=1)


_QUANTIZERS = {"q2_k": quantize_q2_k, "q3_k": quantize_q3_k, "q4_k": quantize_q4_k, "q5_k": quantize_q5_k,
               "q6_k": quantize_q6_k}

# Blocks quantized per call: small enough that the temporaries stay in cache (fastest of 256..16384).
_CHUNK_BLOCKS = 1024


def quantize(x: np.ndarray, qtype: str) -> np.ndarray:
    """`x` (..., n) with n a multiple of 256 -> uint8 (..., n / 256 * block bytes) in ggml's `qtype` layout."""
    fn = _QUANTIZERS[qtype]
    x = np.ascontiguousarray(x, dtype=F32)
    if x.shape[-1] % QK_K:
        raise ValueError(f"{qtype} needs rows that are a multiple of {QK_K}, got {x.shape[-1]}")
    blocks = x.reshape(-1, QK_K)
    out = np.empty((blocks.shape[0], BLOCK_BYTES[qtype]), dtype=np.uint8)
    for b0 in range(0, blocks.shape[0], _CHUNK_BLOCKS):
        out[b0:b0 + _CHUNK_BLOCKS] = fn(blocks[b0:b0 + _CHUNK_BLOCKS])
    return out.reshape(*x.shape[:-1], x.shape[-1] // QK_K * BLOCK_BYTES[qtype])
