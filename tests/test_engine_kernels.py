"""The quantized dot-product kernels of every build agree with the portable C ones, kernel by kernel.

farm-kcheck (farm/engine/src/kcheck) runs q4_1, q5_1 (q8_1 activations) and q4_K, q5_K, q6_K (q8_K)
on fixed pseudo-random blocks, every bit pattern included. Its "exact" cases have unit scales and integer
activations, so every partial sum is an integer below 2^24: the AVX2, NEON and scalar kernels compute the
same integer sums per block and must print the same bits. Its "float" cases have random scales, where the
builds may differ only by float summation order: |a - b| <= 1e-5 * sum |w_i x_i| (float32 error over
~40 partial sums is ~2.4e-6 of that sum; a dropped or misapplied block scale or min is orders larger).
The logits of whole models in these types: test_engine_correctness (AVX2 vs scalar) and test_engine_aarch64
(NEON vs AVX2). Missing cross compiler or qemu: the NEON case is skipped locally, fails in CI.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from farm.engine import build
from farm.engine.build import host_flags
from tests.support import need

TYPES = {"q4_1", "q5_1", "q4_K", "q5_K", "q6_K"}  # q4_0, q5_0, q8_0 (q4_K, q6_K too): "packed" line


def kcheck(cmd: list[str], simd: str) -> tuple[dict[tuple[str, int, str], tuple[float, float]], str]:
    """farm-kcheck's cases {(type, trial, mode): (dot, sum |w_i x_i|)} and its activation checksum line.

    Also checks its "tiles" line: gemm_more's / gemm_rows_more's tiles gave the single-row kernel's bits everywhere,
    and its "packed" line: pack.c's 8-row kernels gave the row-major definition's bits everywhere."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout.splitlines()
    packed = out.pop(-2).split()  # pack.c: q4_0, q5_0, q8_0, q4_K, q6_K x 8 rows x (1 + 2 + 3 + 4) tokens per trial
    assert packed[0] == "packed" and int(packed[1]) == 2 * 64 * 5 * 8 * 10 and packed[2] == "0", packed
    tiles = out[-2].split()
    per_case = 20 + 4 + 4 + 8 + 3 + 3  # gemm_more: nt 1..4 at each start; gemm_rows_more: 4x1 2x2 2x4 1x3 3x1
    assert tiles[0] == "tiles" and int(tiles[1]) == 2 * 64 * len(TYPES) * per_case and tiles[2] == "0", out[-2]
    rows = {}
    for line in out[:-2]:
        kind, qtype, trial, mode, dot, mag = line.split()
        assert kind == simd, line  # the build really runs the kernels under test
        rows[(qtype, int(trial), mode)] = (float.fromhex(dot), float.fromhex(mag))
    assert out[-1].startswith("acts ")
    return rows, out[-1]


@pytest.fixture(scope="module")
def scalar() -> tuple[dict, str]:
    return kcheck([str(build(program="farm-kcheck", flags=["-DFARM_SCALAR"]).path)], "scalar")


def assert_same_sums(got: tuple[dict, str], want: tuple[dict, str]) -> None:
    rows, acts = got
    ref, ref_acts = want
    assert rows.keys() == ref.keys() and {k[0] for k in ref} == TYPES
    assert acts == ref_acts  # q8_1 / q8_K activations: same bytes
    for key, (dot, mag) in rows.items():
        want_dot, want_mag = ref[key]
        assert mag == want_mag, key  # same weights and activations on both sides
        if key[2] == "exact":
            assert dot == want_dot, key
        else:
            assert abs(dot - want_dot) <= 1e-5 * mag, (key, dot, want_dot, mag)


def test_host_simd_kernels_match_scalar(scalar) -> None:
    need(bool(host_flags()), "a CPU with AVX2, FMA and F16C")
    exe = build(program="farm-kcheck").path
    assert_same_sums(kcheck([str(exe)], "avx2"), scalar)


def test_neon_kernels_match_scalar(scalar) -> None:
    need(shutil.which("aarch64-linux-gnu-gcc") is not None, "aarch64-linux-gnu-gcc (gcc-aarch64-linux-gnu)")
    need(shutil.which("qemu-aarch64-static") is not None, "qemu-aarch64-static (qemu-user-static)")
    exe = build("aarch64-linux-static", program="farm-kcheck").path
    assert_same_sums(kcheck(["qemu-aarch64-static", str(exe)], "neon"), scalar)
