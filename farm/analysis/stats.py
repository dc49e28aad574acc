"""Statistics of A/B comparisons: tests, confidence intervals of ratios, and the minimum detectable effect.

Owns the numbers behind every verdict of ``farm regress``, ``farm noise`` and ``farm compare``:

- **paired** (the ABBA runs of ``farm regress``): A and B repetitions that ran next to each other on the
  same device form a pair; the test is the Wilcoxon signed-rank test on the per-pair log ratios
  log(B/A), the estimate is their Hodges–Lehmann location (the estimator that goes with that test),
  and the 95% CI of the ratio comes from a bootstrap over pairs. Pairing cancels everything slower
  than one pair: thermal drift, a CI neighbour starting a compile, a governor changing frequency.
- **unpaired** (``farm compare`` of two stored runs, taken at different times): Mann–Whitney U on the
  two samples, the ratio of medians, and a bootstrap CI resampling each side.

Both tests are rank tests: a repetition hit by an interrupt or a background job is one outlier that
moves a rank, not the estimate, and no normality is assumed (timings are skewed to the slow side).
The minimum detectable effect (MDE) is the change a run of `n` pairs can resolve at level `alpha`
with power `power`, from the spread of A/A pair log ratios: (z_{1-α/2} + z_{power}) · s / √n.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

N_BOOT = 2000
CI_LEVEL = 0.95
# Robust scale: MAD × 1.4826 estimates σ for normal data and ignores a few outlier pairs.
MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class Comparison:
    """B against A for one metric: ratio B/A with its CI, p-value and the method used."""

    n_a: int
    n_b: int
    median_a: float
    median_b: float
    ratio: float
    ci_low: float
    ci_high: float
    p_value: float
    method: str
    noise_sd: float | None = None  # robust sd of the pair log ratios (paired only): the in-run noise

    @property
    def change(self) -> float:
        return self.ratio - 1.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "change": self.change}


def _clean(x: Any) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    return a[np.isfinite(a)]


def robust_sd(x: np.ndarray) -> float:
    """MAD-based standard deviation; falls back to the plain sd when more than half the values tie."""
    if len(x) < 2:
        return float("nan")
    mad = float(np.median(np.abs(x - np.median(x)))) * MAD_TO_SD
    return mad if mad > 0 else float(np.std(x, ddof=1))


def hodges_lehmann(d: np.ndarray) -> float:
    """Median of the Walsh averages (d_i + d_j)/2, i ≤ j: the location estimate of the signed-rank test."""
    i, j = np.triu_indices(len(d))
    return float(np.median((d[i] + d[j]) / 2.0))


def _hl_rows(boot: np.ndarray) -> np.ndarray:
    i, j = np.triu_indices(boot.shape[1])
    return np.median((boot[:, i] + boot[:, j]) / 2.0, axis=1)


def paired(a: Any, b: Any, seed: int = 0) -> Comparison:
    """Compare paired samples (a[i] and b[i] ran next to each other). Values must be > 0."""
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(a_arr) & np.isfinite(b_arr) & (a_arr > 0) & (b_arr > 0)
    a_arr, b_arr = a_arr[keep], b_arr[keep]
    n = len(a_arr)
    if n < 2:
        raise ValueError(f"a paired comparison needs at least 2 pairs, got {n}")
    d = np.log(b_arr) - np.log(a_arr)
    est = hodges_lehmann(d)
    if np.allclose(d, d[0], rtol=0, atol=1e-12):
        # Deterministic metric (e.g. peak memory): no spread, the CI is the point.
        lo = hi = est
        p = 1.0 if abs(est) < 1e-12 else float(2.0 ** (1 - n))  # exact signed-rank p of n equal signs
    else:
        rng = np.random.default_rng(seed)
        boot = d[rng.integers(0, n, size=(N_BOOT, n))]
        lo, hi = np.quantile(_hl_rows(boot), [(1 - CI_LEVEL) / 2, (1 + CI_LEVEL) / 2])
        nonzero = d[np.abs(d) > 1e-12]
        p = 1.0 if len(nonzero) == 0 else float(sps.wilcoxon(nonzero, zero_method="wilcox",
                                                             alternative="two-sided").pvalue)
    return Comparison(n, n, float(np.median(a_arr)), float(np.median(b_arr)), math.exp(est), math.exp(lo),
                      math.exp(hi), p, "wilcoxon signed-rank (paired), HL estimate, bootstrap CI",
                      noise_sd=robust_sd(d))


def unpaired(a: Any, b: Any, seed: int = 0) -> Comparison:
    """Compare two independent samples: Mann–Whitney U, ratio of medians, bootstrap CI."""
    a_arr, b_arr = _clean(a), _clean(b)
    if len(a_arr) < 2 or len(b_arr) < 2:
        raise ValueError(f"an unpaired comparison needs ≥ 2 values per side, got {len(a_arr)} and {len(b_arr)}")
    ma, mb = float(np.median(a_arr)), float(np.median(b_arr))
    if ma <= 0:
        raise ValueError("the baseline median must be > 0 to form a ratio")
    if np.ptp(a_arr) == 0 and np.ptp(b_arr) == 0:
        lo = hi = mb / ma
        p = 1.0 if ma == mb else float(sps.mannwhitneyu(a_arr, b_arr, method="exact").pvalue)
    else:
        rng = np.random.default_rng(seed)
        ra = np.median(a_arr[rng.integers(0, len(a_arr), size=(N_BOOT, len(a_arr)))], axis=1)
        rb = np.median(b_arr[rng.integers(0, len(b_arr), size=(N_BOOT, len(b_arr)))], axis=1)
        ratios = rb / np.where(ra > 0, ra, np.nan)
        lo, hi = np.nanquantile(ratios, [(1 - CI_LEVEL) / 2, (1 + CI_LEVEL) / 2])
        p = float(sps.mannwhitneyu(a_arr, b_arr, alternative="two-sided").pvalue)
    return Comparison(len(a_arr), len(b_arr), ma, mb, mb / ma, float(lo), float(hi), p,
                      "mann-whitney U (unpaired), ratio of medians, bootstrap CI")


def mde(noise_sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest relative change n pairs detect at `alpha` (two-sided) with `power`, given the A/A log-ratio sd."""
    if n < 1 or not math.isfinite(noise_sd):
        return float("nan")
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)
    return math.expm1(z * noise_sd / math.sqrt(n))


@dataclass(frozen=True)
class Verdict:
    """What a comparison means for CI: regression | improvement | within noise | no change."""

    label: str
    worse: bool
    bar: float  # the |change| a call needs: max(threshold, MDE)
    reason: str


def verdict(c: Comparison, higher_is_better: bool, *, threshold: float, mde_value: float | None,
            alpha: float = 0.05, p_value: float | None = None) -> Verdict:
    """Call a change only when it is significant, its CI excludes no-change, and it clears threshold and MDE.

    `p_value`: the p to judge by when it was adjusted for multiple testing (default: the comparison's).
    """
    p = c.p_value if p_value is None else p_value
    bar = max(threshold, mde_value if mde_value is not None and math.isfinite(mde_value) else 0.0)
    worse = (c.ratio < 1) if higher_is_better else (c.ratio > 1)
    # Sizes compare on the log scale, so a metric and its reciprocal (prefill t/s and TTFT) get the
    # same verdict: -3% t/s is +3.09% time, and neither may clear a 3% bar that the other misses.
    size = abs(math.log(c.ratio)) if c.ratio > 0 else math.inf
    ci_excludes_one = c.ci_high < 1 or c.ci_low > 1
    if p >= alpha or not ci_excludes_one:
        return Verdict("no change", worse, bar, f"p={p:.3g}, CI includes 1" if not ci_excludes_one
                       else f"p={p:.3g} ≥ {alpha}")
    if size < math.log1p(bar):
        what = "MDE" if mde_value is not None and bar == mde_value and mde_value > threshold else "threshold"
        return Verdict("within noise", worse, bar, f"|{c.change:+.1%}| < {what} {bar:.1%}")
    return Verdict("regression" if worse else "improvement", worse, bar,
                   f"{c.change:+.1%} beyond {bar:.1%}, p={p:.2g}")
