"""Statistics of A/B comparisons: tests, confidence intervals of ratios, and the minimum detectable effect.

Owns the numbers behind every verdict of ``farm regress``, ``farm noise`` and ``farm compare``:

- **paired** (the ABBA runs of ``farm regress``): A and B repetitions that ran next to each other on the
  same device form a pair; the test is Yuen's trimmed-mean t-test on the per-pair log ratios
  log(B/A) (20% trimmed from each end, winsorized variance, h − 1 degrees of freedom), the
  estimate is their trimmed mean, and the 95% CI is the matching t interval, so "CI excludes no
  change" and "p < 0.05" always agree. Pairing cancels everything slower than one pair: thermal
  drift, a governor changing frequency. Trimming handles what pairing cannot: a burst of
  interference (a CI neighbour's compile, a busy SMT sibling) that hits one side of one or two
  pairs. Such pairs are the largest |log ratios| of the run, so a signed-rank test gives them the
  top ranks and a reversed one costs the run its verdict; measured on this project's recorded
  A/B runs under load, the trimmed test detected a decode slowdown about twice as often as the
  Wilcoxon signed-rank test at the same (zero) A/A false-alarm count (see bench/regression_power.py).
- **unpaired** (``farm compare`` of two stored runs, taken at different times): Mann–Whitney U on the
  two samples, the ratio of medians, and a bootstrap CI resampling each side.

Under no change the ABBA order makes a pair's log ratio symmetric about 0 (interference is as likely
to hit A as B), which is what the trimmed test needs; no normality is assumed of the timings
themselves. The minimum detectable effect (MDE) is the change a run of `n` pairs resolves at level
`alpha` with power `power`, from the noise of pair log ratios as the trimmed test sees it (its
standard error, as the sd of one pair) with the test's degrees of freedom:
(t_{1-α/2} + t_{power}) · s / √(n · 0.94), which for the run's own noise is (t + t) · SE.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

N_BOOT = 2000  # bootstrap resamples (unpaired CI)
CI_LEVEL = 0.95


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
    noise_sd: float | None = None  # sd of one pair log ratio as the trimmed test sees it (paired only)
    # The values a table shows for A and B, from the same statistic as `ratio` (head = base × ratio
    # exactly), and the words that say which statistic that is.
    base: float | None = None
    head: float | None = None
    statistic: str = ""

    @property
    def change(self) -> float:
        return self.ratio - 1.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "change": self.change}


def _clean(x: Any) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    return a[np.isfinite(a)]


PAIRED_STATISTIC = ("base: A's 20%-trimmed geometric mean; change: 20%-trimmed geometric mean of the pair "
                    "ratios B/A; head = base × (1 + change)")
UNPAIRED_STATISTIC = "base, head: median of each run's repetitions; change: ratio of the medians"

TRIM = 0.2  # fraction trimmed from each end of the pair log ratios
TRIM_EFFICIENCY = 0.94  # variance efficiency of the 20% trimmed mean against the mean, for normal data


def trimmed(d: np.ndarray, trim: float = TRIM) -> tuple[float, float, int]:
    """(trimmed mean, its standard error, degrees of freedom) of `d`: the one-sample Yuen statistics."""
    n = len(d)
    g = math.floor(trim * n)
    h = n - 2 * g
    xs = np.sort(d)
    winsorized = np.clip(xs, xs[g], xs[n - g - 1])
    se = math.sqrt((n - 1) * float(np.var(winsorized, ddof=1)) / (h * (h - 1))) if h > 1 else math.inf
    return float(xs[g:n - g].mean()), se, h - 1


def paired(a: Any, b: Any, seed: int = 0) -> Comparison:
    """Compare paired samples (a[i] and b[i] ran next to each other). Values must be > 0.

    `seed` is kept for API stability; the paired analysis is analytic (no resampling).
    """
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(a_arr) & np.isfinite(b_arr) & (a_arr > 0) & (b_arr > 0)
    a_arr, b_arr = a_arr[keep], b_arr[keep]
    n = len(a_arr)
    if n < 2:
        raise ValueError(f"a paired comparison needs at least 2 pairs, got {n}")
    d = np.log(b_arr) - np.log(a_arr)
    nonzero = d[np.abs(d) > 1e-12]
    noise = 0.0
    if np.allclose(d, d[0], rtol=0, atol=1e-12):
        # Deterministic metric (e.g. peak memory): no spread, the CI is the point.
        est = lo = hi = float(d[0])
        p = 1.0 if abs(est) < 1e-12 else float(2.0 ** (1 - n))  # exact sign-test p of n equal signs
        method = "deterministic: every pair alike"
    else:
        est, se, df = trimmed(d)
        # The noise the test itself sees, as the sd of one pair's log ratio: the MDE then says what
        # this very test resolves (a MAD would see only the middle half and promise too much when a
        # run mixes fast and slow stretches of a shared host).
        noise = se * math.sqrt(n * TRIM_EFFICIENCY)  # n ≥ 2 pairs keep h ≥ 2: se is finite
        if se > 0:
            t = est / se
            p = float(2 * sps.t.sf(abs(t), df))
            half = float(sps.t.ppf((1 + CI_LEVEL) / 2, df)) * se
            lo, hi = est - half, est + half
            method = f"yuen trimmed t ({TRIM:.0%}, paired log ratios), t CI"
        else:
            # The untrimmed middle is one value (a nearly discrete metric): the exact sign test decides.
            lo = hi = est
            k = int((nonzero > 0).sum())
            p = 1.0 if est == 0 or not len(nonzero) else float(sps.binomtest(k, len(nonzero)).pvalue)
            method = "sign test (paired log ratios; trimmed spread is 0)"
    # The level of A on the scale the ratio lives on (the same 20%-trimmed mean of logs), and head as
    # base × ratio: shown values whose quotient is the shown change, whatever the spread of A and B.
    base = math.exp(trimmed(np.log(a_arr))[0])
    return Comparison(n, n, float(np.median(a_arr)), float(np.median(b_arr)), math.exp(est), math.exp(lo),
                      math.exp(hi), p, method, noise_sd=noise, base=base, head=base * math.exp(est),
                      statistic=PAIRED_STATISTIC)


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
                      "mann-whitney U (unpaired), ratio of medians, bootstrap CI", base=ma, head=mb,
                      statistic=UNPAIRED_STATISTIC)


def mde(noise_sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest relative change n pairs detect at `alpha` (two-sided) with `power`, given the A/A log-ratio sd.

    Uses the trimmed test's degrees of freedom and efficiency: with 10 pairs (6 kept, 5 df) that is
    3.6 · s / √10, where the normal approximation (2.8 · s / √n) would promise a quarter more than
    the test delivers.
    """
    if n < 2 or not math.isfinite(noise_sd):
        return float("nan")
    df = n - 2 * math.floor(TRIM * n) - 1
    t = sps.t.ppf(1 - alpha / 2, df) + sps.t.ppf(power, df)
    return math.expm1(t * noise_sd / math.sqrt(n * TRIM_EFFICIENCY))


MW_EFFICIENCY = 3 / math.pi  # asymptotic relative efficiency of Mann-Whitney against the t-test (normal data)


def min_p_unpaired(n_a: int, n_b: int) -> float:
    """The smallest two-sided p Mann–Whitney can give n_a against n_b values (complete separation)."""
    return min(1.0, 2.0 / math.comb(n_a + n_b, n_a))


def mde_unpaired(a: Any, b: Any, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest relative change the unpaired test resolves at `alpha` with `power`; inf when it cannot at all.

    With 3 repetitions a side Mann–Whitney's smallest possible p is 2/C(6,3) = 0.1: no effect of any size
    reaches p < 0.05, so the MDE is infinite and a non-significant result says nothing. Otherwise the
    two-sample t formula on log values, (t_{1-α/2} + t_power) · s · √(1/n_a + 1/n_b), widened by the
    test's efficiency (3/π) against the t-test.
    """
    la, lb = np.log(_clean(a)), np.log(_clean(b))
    la, lb = la[np.isfinite(la)], lb[np.isfinite(lb)]
    n_a, n_b = len(la), len(lb)
    if n_a < 2 or n_b < 2 or min_p_unpaired(n_a, n_b) >= alpha:
        return math.inf
    df = n_a + n_b - 2
    s = math.sqrt(((n_a - 1) * np.var(la, ddof=1) + (n_b - 1) * np.var(lb, ddof=1)) / df)
    t = sps.t.ppf(1 - alpha / 2, df) + sps.t.ppf(power, df)
    return math.expm1(t * s * math.sqrt(1 / n_a + 1 / n_b) / math.sqrt(MW_EFFICIENCY))


@dataclass(frozen=True)
class Verdict:
    """What a comparison means for CI: regression | improvement | within noise | no change | inconclusive."""

    label: str
    worse: bool
    bar: float  # the |change| a call needs: max(threshold, MDE)
    reason: str


def verdict(c: Comparison, higher_is_better: bool, *, threshold: float, mde_value: float | None,
            alpha: float = 0.05, p_value: float | None = None) -> Verdict:
    """Call a change only when it is significant, its CI excludes no-change, and it clears threshold and MDE.

    `p_value`: the p to judge by when it was adjusted for multiple testing (default: the comparison's).

    A result that is not significant is "no change" only when the test could have seen a change of the
    threshold's size (MDE ≤ threshold) and the estimate is below it; otherwise it is "inconclusive" with the
    MDE in its reason: a test without power must not read as evidence of no change. `mde_value=None` means
    the caller has no power estimate (the old rule: not significant is "no change").
    """
    p = c.p_value if p_value is None else p_value
    bar = max(threshold, mde_value if mde_value is not None and math.isfinite(mde_value) else 0.0)
    worse = (c.ratio < 1) if higher_is_better else (c.ratio > 1)
    # Sizes compare on the log scale, so a metric and its reciprocal (prefill t/s and TTFT) get the
    # same verdict: -3% t/s is +3.09% time, and neither may clear a 3% bar that the other misses.
    size = abs(math.log(c.ratio)) if c.ratio > 0 else math.inf
    ci_excludes_one = c.ci_high < 1 or c.ci_low > 1
    if p >= alpha or not ci_excludes_one:
        why = f"p={p:.3g}, CI includes 1" if not ci_excludes_one else f"p={p:.3g} ≥ {alpha}"
        if mde_value is not None and not math.isfinite(mde_value):
            return Verdict("inconclusive", worse, math.inf,
                           f"{why}; this test cannot reach p < {alpha} at n={c.n_a}/{c.n_b} (MDE ∞)")
        if mde_value is not None and (mde_value > threshold or size >= math.log1p(bar)):
            return Verdict("inconclusive", worse, bar, f"{why}; MDE {mde_value:.1%}: a change below it cannot "
                                                       "be seen")
        return Verdict("no change", worse, bar, why)
    if size < math.log1p(bar):
        what = "MDE" if mde_value is not None and bar == mde_value and mde_value > threshold else "threshold"
        return Verdict("within noise", worse, bar, f"|{c.change:+.1%}| < {what} {bar:.1%}")
    return Verdict("regression" if worse else "improvement", worse, bar,
                   f"{c.change:+.1%} beyond {bar:.1%}, p={p:.2g}")
