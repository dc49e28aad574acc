"""The reference engine computes what the numpy reference computes, for every weight type and both arches.

Tolerances (absolute, on logits whose std is ~1 by construction of the synthetic weights):

- f32/f16 weights: the only differences are float32 summation order (engine: SIMD lanes, numpy: float64),
  ~1e-6 relative per matmul, and the f16 KV cache, which the reference emulates (a summation-order
  difference can flip one f16 rounding: seen 1.7e-4). TOL = 2e-3.
- q8_0/q4_0 weights: the engine quantizes activations to q8_0; the reference emulates that exactly (same
  float32 arithmetic, half-even rounding), which removes the ~0.02 rms / ~0.1 max error of comparing with
  unquantized activations. But quantization is discontinuous: an element that lands within float noise
  of a rounding boundary (about one per few positions here) rounds differently in the two
  implementations and moves logits by up to ~0.06 (measured over 12 model seeds), and such a flip in a K/V
  row reaches later positions. So for quantized weights the checks are: rms difference < 0.01 (the
  plain-activation error is 2x-5x above it, see test_activation_quantization_matters), max < 0.1, and at
  least a quarter of all positions matching to TOL exactly (flip-free); a wrong kernel fails all three.
- Argmax must agree wherever the reference's top-2 gap exceeds 0.1 (more than any rounding flip moves).
- Thread counts must not change a single bit: rows are split across threads, never the sums.
- The other weight types (q4_1, q5_0, q5_1 from the zoo writer; q4_K, q5_K, q6_K as random valid blocks, see
  engine_ref.write_kquant_gguf) are checked build against build: their SIMD kernels give the scalar kernels'
  integer sums exactly (test_engine_kernels), so the logits differ only by rounding flips as above. Measured
  over both arches and the six types: rms <= 0.011, max <= 0.073, the flip-free share anywhere from 0 (a flip at
  position 0 reaches every later one) to 100%. So: rms < 0.02, max < 0.1 and the clear-argmax check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from farm.engine import build
from farm.zoo.writer import write_gguf
from tests import engine_ref
from tests.engine_ref import TOKENS, kquant_arch, run_logits, tiny_arch, write_kquant_gguf

TOL = 2e-3
QUANTS = ["f32", "f16", "q8_0", "q4_0"]
MORE_QUANTS = ["q4_1", "q5_0", "q5_1", "q4_K", "q5_K", "q6_K"]  # build-against-build checks only
ARCHES = ["llama", "qwen2"]


@pytest.fixture(scope="session")
def scalar_engine() -> Path:
    return build(flags=["-DFARM_SCALAR"]).path


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    d = tmp_path_factory.mktemp("engine-models")
    return {(a, q): write_gguf(tiny_arch(a), d / f"{a}-{q}.gguf", q, seed=7) for a in ARCHES for q in QUANTS}


@pytest.fixture(scope="session")
def refs(models: dict[tuple[str, str], Path]) -> dict[tuple[str, str], engine_ref.RefModel]:
    return {k: engine_ref.RefModel(p) for k, p in models.items()}


def assert_close(got: np.ndarray, want: np.ndarray, quant: str) -> None:
    assert got.shape == want.shape
    assert np.all(np.isfinite(got))
    diff = np.abs(got - want)
    if quant in ("f32", "f16"):
        assert diff.max() < TOL, f"max abs diff {diff.max()}"
    else:
        rms = float(np.sqrt((diff**2).mean()))
        assert rms < 0.01 and diff.max() < 0.1, f"rms {rms}, max {diff.max()}"
        if got.ndim == 2:
            exact = float((diff.max(axis=1) < TOL).mean())
            assert exact >= 0.25, f"only {exact:.0%} of positions match exactly"
    w2 = np.atleast_2d(want)
    top2 = np.sort(w2, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.1
    assert np.array_equal(np.atleast_2d(got).argmax(axis=1)[clear], w2.argmax(axis=1)[clear])


def assert_builds_close(got: np.ndarray, want: np.ndarray) -> None:
    """Two builds' --all logits on a MORE_QUANTS model (tolerances: module docstring)."""
    assert got.shape == want.shape and np.all(np.isfinite(got))
    diff = np.abs(got - want)
    rms = float(np.sqrt((diff**2).mean()))
    assert rms < 0.02 and diff.max() < 0.1, f"rms {rms}, max {diff.max()}"
    top2 = np.sort(want, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.1
    assert np.array_equal(got.argmax(axis=1)[clear], want.argmax(axis=1)[clear])


def write_more_model(arch: str, quant: str, path: Path, seed: int) -> Path:
    if quant.endswith("_K"):
        return write_kquant_gguf(kquant_arch(arch), path, quant, seed=seed)
    return write_gguf(tiny_arch(arch), path, quant, seed=seed)


@pytest.fixture(scope="session")
def more_models(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    d = tmp_path_factory.mktemp("engine-more-models")
    return {(a, q): write_more_model(a, q, d / f"{a}-{q}.gguf", 7) for a in ARCHES for q in MORE_QUANTS}


def _ref(refs, arch: str, quant: str, kv: str, tokens: list[int] = TOKENS) -> np.ndarray:
    return engine_ref.forward(refs[(arch, quant)], tokens, quantize_acts=True, kv_f16=kv == "f16")


@pytest.mark.parametrize("kv", ["f16", "f32"])
@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("arch", ARCHES)
def test_logits_match_numpy(engine, models, refs, arch, quant, kv) -> None:
    got = run_logits(engine, models[(arch, quant)], TOKENS, "--kv", kv, "-t", "2")
    want = _ref(refs, arch, quant, kv)[-1]
    assert got.shape == (320,)
    assert_close(got, want, quant)


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("arch", ARCHES)
def test_all_positions_and_decode_path(engine, models, refs, arch, quant) -> None:
    """--all checks every position's logits (causal mask, RoPE at each position); --ubatch 1 runs the
    prompt token by token through the decode path (GEMV + KV cache reads) and must agree too."""
    want = _ref(refs, arch, quant, "f16")
    batched = run_logits(engine, models[(arch, quant)], TOKENS, "--all", "-t", "2")
    stepped = run_logits(engine, models[(arch, quant)], TOKENS, "--all", "--ubatch", "1", "-t", "2")
    for got in (batched, stepped):
        assert_close(got, want, quant)


@pytest.mark.parametrize("quant", QUANTS)
def test_threads_do_not_change_results(engine, models, quant) -> None:
    one = run_logits(engine, models[("qwen2", quant)], TOKENS, "-t", "1")
    two = run_logits(engine, models[("qwen2", quant)], TOKENS, "-t", "2")
    three = run_logits(engine, models[("qwen2", quant)], TOKENS, "-t", "3")
    assert np.array_equal(one, two)
    assert np.array_equal(one, three)


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("arch", ARCHES)
def test_scalar_build_matches_simd_build(engine, scalar_engine, models, refs, arch, quant) -> None:
    simd = run_logits(engine, models[(arch, quant)], TOKENS, "--all")
    scalar = run_logits(scalar_engine, models[(arch, quant)], TOKENS, "--all")
    assert_close(simd, scalar, quant)
    assert_close(scalar, _ref(refs, arch, quant, "f16"), quant)


@pytest.mark.parametrize("quant", MORE_QUANTS)
@pytest.mark.parametrize("arch", ARCHES)
def test_scalar_build_matches_simd_build_more_types(engine, scalar_engine, more_models, arch, quant) -> None:
    """The AVX2 kernels of q4_1 ... q6_K against the portable C ones, batched (prefill) and token by token."""
    scalar = run_logits(scalar_engine, more_models[(arch, quant)], TOKENS, "--all")
    assert_builds_close(run_logits(engine, more_models[(arch, quant)], TOKENS, "--all", "-t", "2"), scalar)
    stepped = run_logits(engine, more_models[(arch, quant)], TOKENS, "--all", "--ubatch", "1")
    assert_builds_close(stepped, scalar)


def test_activation_quantization_matters(engine, models, refs) -> None:
    """Guards the tolerance argument: without the q8_0 emulation the quantized-weight checks fail."""
    for quant in ("q8_0", "q4_0"):
        got = run_logits(engine, models[("llama", quant)], TOKENS, "--all")
        plain = engine_ref.forward(refs[("llama", quant)], TOKENS, quantize_acts=False)
        with pytest.raises(AssertionError):
            assert_close(got, plain, quant)


def test_q8_0_roundtrip_matches_gguf_quantizer() -> None:
    """The reference's activation quantizer agrees with gguf-py's q8_0 (same block layout and scale)."""
    from gguf import GGMLQuantizationType, quants

    x = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    ours = engine_ref.q8_0_roundtrip(x)
    theirs = quants.dequantize(quants.quantize(x, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0)
    # gguf-py rounds half away from zero and scales by 127/amax: at most one step apart per element.
    step = np.abs(x).reshape(-1, 32).max(axis=1).repeat(32).reshape(x.shape) / 127
    assert np.all(np.abs(ours - theirs) <= step * 1.01)


def test_head_dim_not_d_model_over_heads(engine, tmp_path) -> None:
    """attention.key_length differs from d_model / n_heads (q/o projections are not square)."""
    from farm.zoo.arch import Architecture

    a = Architecture(arch="llama", n_layers=2, d_model=64, n_heads=4, n_kv_heads=1, d_ff=96, vocab_size=320,
                     head_dim=32)
    for quant in ("f16", "q8_0"):
        p = write_gguf(a, tmp_path / f"hd-{quant}.gguf", quant, seed=4)
        got = run_logits(engine, p, TOKENS, "--all")
        assert_close(got, engine_ref.forward(engine_ref.RefModel(p), TOKENS), quant)


def test_llama3_rope_scaling(engine, tmp_path) -> None:
    """rope_scaling llama3 (Llama 3.2): the zoo writes rope_freqs.weight as convert_hf_to_gguf does, and the
    engine divides RoPE's angles by it. original_max_position 32 makes the factors bite at this head_dim."""
    from farm.zoo.arch import Architecture, RopeScaling

    scaling = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=32)
    a = Architecture(arch="llama", n_layers=2, d_model=128, n_heads=4, n_kv_heads=2, d_ff=256, vocab_size=320,
                     rope_scaling=scaling)
    freqs = a.rope_freq_factors()
    assert freqs is not None and freqs[0] == 1.0 and freqs[-1] == 8.0 and len(freqs) == 16
    p = write_gguf(a, tmp_path / "llama3.gguf", "f16", seed=3)
    got = run_logits(engine, p, TOKENS, "--all")
    assert_close(got, engine_ref.forward(engine_ref.RefModel(p), TOKENS), "f16")
    plain = write_gguf(a.model_copy(update={"rope_scaling": None}), tmp_path / "plain.gguf", "f16", seed=3)
    assert np.abs(run_logits(engine, plain, TOKENS, "--all") - got).max() > 0.01  # the scaling is not a no-op


def test_relu_gated_ffn(engine, tmp_path) -> None:
    """hidden_act relu (PhoneLM): the file says farm.hidden_act, the engine gates with ReLU, not SiLU."""
    from farm.zoo.writer import read_arch

    a = tiny_arch("llama").model_copy(update={"hidden_act": "relu"})
    got = {}
    for quant in ("f16", "q8_0"):
        p = write_gguf(a, tmp_path / f"relu-{quant}.gguf", quant, seed=5)
        assert read_arch(p).hidden_act == "relu"
        got[quant] = run_logits(engine, p, TOKENS, "--all")
        assert_close(got[quant], engine_ref.forward(engine_ref.RefModel(p), TOKENS), quant)
    silu = write_gguf(tiny_arch("llama"), tmp_path / "silu.gguf", "f16", seed=5)  # same weights, SiLU
    assert np.abs(run_logits(engine, silu, TOKENS, "--all") - got["f16"]).max() > 0.1


def gemma2_arch(**over: object):  # -> Architecture
    """A tiny Gemma-2 whose features all bite within TOKENS: caps near the spread of scores (std ~1) and
    logits (std ~1) and an 8-token window (on layers 0 and 2), head_dim 64 != d_model / n_heads."""
    from farm.zoo.arch import Architecture

    fields = dict(arch="gemma2", n_layers=3, d_model=128, n_heads=4, n_kv_heads=2, head_dim=64, d_ff=256,
                  vocab_size=320, rope_style="neox", rms_eps=1e-6, tied_embeddings=True, hidden_act="gelu_tanh",
                  attn_softcap=1.5, final_softcap=4.0, sliding_window=8)
    return Architecture(**{**fields, **over})


def test_gemma2(engine, tmp_path) -> None:
    """Gemma-2: sqrt(d) embedding scale, sandwich norms, GeGLU, soft-capped scores and logits, sliding window
    on even layers, against the numpy reference; each feature changes the logits (so none is skipped)."""
    from farm.zoo.writer import read_arch

    for quant in ("f32", "q8_0"):
        p = write_gguf(gemma2_arch(), tmp_path / f"g2-{quant}.gguf", quant, seed=3)
        assert read_arch(p) == gemma2_arch()
        got = run_logits(engine, p, TOKENS, "--all")
        assert_close(got, engine_ref.forward(engine_ref.RefModel(p), TOKENS), quant)
        assert np.abs(got).max() < 4.0  # the final cap
    base = run_logits(engine, tmp_path / "g2-f32.gguf", TOKENS, "--all")
    # ubatches of 5: the window reaches back across ubatch boundaries into the KV cache
    assert_close(run_logits(engine, tmp_path / "g2-f32.gguf", TOKENS, "--all", "--ubatch", "5"), base, "f32")
    for over in ({"attn_softcap": 50.0}, {"final_softcap": 50.0}, {"sliding_window": 64}):
        p = write_gguf(gemma2_arch(**over), tmp_path / "g2-other.gguf", "f32", seed=3)
        assert np.abs(run_logits(engine, p, TOKENS, "--all") - base).max() > 0.05, over


def openelm_arch(**over: object):  # -> Architecture
    """A tiny OpenELM: 4 layers with 2, 4, 4, 6 query heads, 1, 2, 1, 3 KV heads (group sizes 2 and 4), FFN
    widths 128..384, head_dim 32 (d_model 128): layer-wise scaling, fused qkv and q/k norms."""
    from farm.zoo.arch import Architecture

    fields = dict(arch="openelm", n_layers=4, d_model=128, n_heads=4, n_kv_heads=2, head_dim=32, d_ff=256,
                  vocab_size=320, rope_style="neox", rms_eps=1e-6, tied_embeddings=True,
                  layer_n_heads=(2, 4, 4, 6), layer_n_kv_heads=(1, 2, 1, 3), layer_d_ff=(128, 224, 288, 384))
    return Architecture(**{**fields, **over})


def test_openelm(engine, tmp_path) -> None:
    """OpenELM: per-layer head counts and FFN widths, fused attn_qkv, per-head q/k RMSNorm, against numpy."""
    from farm.zoo.writer import read_arch

    for quant in ("f32", "q8_0"):
        p = write_gguf(openelm_arch(), tmp_path / f"oe-{quant}.gguf", quant, seed=6)
        assert read_arch(p) == openelm_arch()
        got = run_logits(engine, p, TOKENS, "--all")
        assert_close(got, engine_ref.forward(engine_ref.RefModel(p), TOKENS), quant)
        for threads in ("2", "3"):  # layers of other shapes split across threads the same way
            assert np.array_equal(run_logits(engine, p, TOKENS, "--all", "-t", threads), got)
    # ubatches of 5: every layer's K/V read back from its own slice of the cache
    assert_close(run_logits(engine, p, TOKENS, "--all", "--ubatch", "5"), got, "q8_0")
