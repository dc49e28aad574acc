"""The A/B statistics: power and false-positive rate on simulated timings, MDE, verdict rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from farm.analysis import stats


def _pairs(rng: np.random.Generator, n: int, effect: float, sd: float, drift: float = 0.0):
    """n ABBA pairs of decode t/s with multiplicative noise `sd`, a shared drift, and B = A·(1+effect)."""
    base = 100.0 * np.exp(np.cumsum(rng.normal(0, drift, n)))  # slow drift both sides share
    a = base * np.exp(rng.normal(0, sd, n))
    b = base * (1 + effect) * np.exp(rng.normal(0, sd, n))
    return a, b


def test_paired_detects_5pct_with_10_pairs_and_holds_alpha_under_drift() -> None:
    rng = np.random.default_rng(1)
    trials, sd, drift = 300, 0.01, 0.03  # drift per pair 3× the noise: an unpaired test would drown
    hits = sum(stats.paired(*_pairs(rng, 10, -0.05, sd, drift)).p_value < 0.05 for _ in range(trials))
    false = sum(stats.paired(*_pairs(rng, 10, 0.0, sd, drift)).p_value < 0.05 for _ in range(trials))
    assert hits / trials >= 0.95
    assert false / trials <= 0.08  # 5% nominal, binomial slack for 300 trials
    unpaired_hits = sum(stats.unpaired(*_pairs(rng, 10, -0.05, sd, drift)).p_value < 0.05 for _ in range(trials))
    assert unpaired_hits < hits  # why regress pairs its samples


def test_estimate_and_ci_cover_the_true_ratio() -> None:
    rng = np.random.default_rng(2)
    covered = 0
    for _ in range(200):
        c = stats.paired(*_pairs(rng, 10, -0.05, 0.02))
        covered += c.ci_low <= 0.95 <= c.ci_high
        assert 0.9 < c.ratio < 1.0
    assert covered / 200 >= 0.85  # a percentile bootstrap of 10 pairs is a little narrow, not wildly


def test_mde_matches_simulated_power() -> None:
    rng = np.random.default_rng(3)
    sd_pair = 0.02 * math.sqrt(2)  # sd of a pair's log ratio when each side has sd 2%
    m = stats.mde(sd_pair, 10)
    assert 0.02 < m < 0.04
    power = np.mean([stats.paired(*_pairs(rng, 10, -m, 0.02)).p_value < 0.05 for _ in range(300)])
    assert 0.65 <= power <= 0.95  # ≈ 80% by construction (Wilcoxon is ~95% as efficient as t)
    assert stats.mde(sd_pair, 40) < m / 1.9  # four times the pairs, half the MDE


def test_noise_sd_ignores_a_disturbed_pair() -> None:
    rng = np.random.default_rng(4)
    a, b = _pairs(rng, 10, 0.0, 0.01)
    b[3] *= 0.5  # a neighbour's compile hit one B run
    c = stats.paired(a, b)
    assert c.noise_sd < 0.05 and abs(c.change) < 0.02


def test_deterministic_metric_and_unpaired_ties() -> None:
    same = stats.paired([100.0] * 10, [100.0] * 10)
    assert same.ratio == 1 and same.p_value == 1
    grown = stats.paired([100.0] * 10, [110.0] * 10)  # peak memory +10% in every pair
    assert grown.ratio == pytest.approx(1.1) and grown.p_value == pytest.approx(2 ** -9)
    u = stats.unpaired([5.0] * 6, [6.0] * 6)
    assert u.ratio == pytest.approx(1.2) and u.p_value < 0.01


def test_verdict_rules() -> None:
    c = stats.paired(*_pairs(np.random.default_rng(5), 10, -0.05, 0.005))
    assert stats.verdict(c, True, threshold=0.03, mde_value=0.01).label == "regression"
    assert stats.verdict(c, False, threshold=0.03, mde_value=0.01).label == "improvement"  # e.g. lower TTFT
    v = stats.verdict(c, True, threshold=0.03, mde_value=0.08)
    assert v.label == "within noise" and "MDE" in v.reason and v.bar == 0.08
    assert stats.verdict(c, True, threshold=0.10, mde_value=None).label == "within noise"
    null = stats.paired(*_pairs(np.random.default_rng(6), 10, 0.0, 0.02))
    assert stats.verdict(null, True, threshold=0.0, mde_value=None, alpha=1e-6).label == "no change"
    # the same null result from a test that could not have seen a 3% change is not evidence of none
    v = stats.verdict(null, True, threshold=0.03, mde_value=0.06)
    assert v.label == "inconclusive" and "MDE 6.0%" in v.reason
    assert stats.verdict(null, True, threshold=0.03, mde_value=math.inf).label == "inconclusive"
    assert stats.verdict(null, True, threshold=0.03, mde_value=0.02).label == "no change"


def test_unpaired_mde_and_the_shown_values_match_the_change() -> None:
    # 3 against 3 repetitions: Mann-Whitney's smallest p is 2/20 = 0.1, so no change of any size is callable
    assert stats.min_p_unpaired(3, 3) == pytest.approx(0.1)
    assert stats.mde_unpaired([1.0, 1.1, 0.9], [15.0, 16.0, 14.0]) == math.inf
    assert math.isfinite(stats.mde_unpaired(np.linspace(1, 1.1, 8), np.linspace(1, 1.1, 8)))
    c = stats.paired(*_pairs(np.random.default_rng(9), 10, -0.05, 0.02))
    assert c.head == pytest.approx(c.base * c.ratio) and "geometric mean" in c.statistic


def test_a_metric_and_its_reciprocal_get_the_same_verdict() -> None:
    rng = np.random.default_rng(7)
    a, b = _pairs(rng, 10, -0.0295, 0.001)  # t/s 2.95% lower ⇔ time ≈ 3.04% higher
    fast, slow = stats.paired(a, b), stats.paired(1 / a, 1 / b)
    v_tps = stats.verdict(fast, True, threshold=0.03, mde_value=None)
    v_time = stats.verdict(slow, False, threshold=0.03, mde_value=None)
    assert v_tps.label == v_time.label


def test_too_few_pairs_is_an_error() -> None:
    with pytest.raises(ValueError):
        stats.paired([1.0], [1.0])


def test_modelled_energy_is_shown_but_never_judged() -> None:
    import pandas as pd

    from farm.analysis.compare import compare_paired, markdown

    rows = []
    for pair in range(10):
        for variant, j in (("A", 1.0), ("B", 1.5)):  # B "uses" 50% more energy: far beyond any bar
            rows.append({"device": "local", "backend": "reference", "model": "m", "quant": "q4_0", "test": "tg16",
                         "threads": 1, "pair": pair, "rep": 0, "variant": variant, "exit_status": 0,
                         "decode_tps": 100.0 + pair % 3, "decode_j_per_tok": j * (1 + pair / 100),
                         "prefill_tps": None, "ttft_s": None, "peak_rss_bytes": None, "prefill_j_per_tok": None,
                         "power_modelled": True})
    report = compare_paired(pd.DataFrame(rows), threshold=0.03, alpha=0.05)
    energy = next(r for r in report.results if r.metric.column == "decode_j_per_tok")
    assert energy.verdict is None and energy.comparison is not None and "modelled" in energy.note
    assert report.regressions == []
    assert "not judged: power is modelled" in markdown(report, "t", [])
    measured = compare_paired(pd.DataFrame(rows).assign(power_modelled=False), threshold=0.03, alpha=0.05)
    assert [r.metric.column for r in measured.regressions] == ["decode_j_per_tok"]


def test_holm_keeps_family_wise_error_and_treats_ttft_with_prefill() -> None:
    import pandas as pd

    from farm.analysis.compare import compare_paired, holm

    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == {"a": 0.03, "c": 0.06, "b": 0.06}
    assert holm({"a": 0.5}) == {"a": 0.5}
    # prefill t/s is off by a chance-level amount (p ≈ 0.03 on its own): with decode, prefill+TTFT and
    # memory judged in the cell that is no longer enough; a clear decode slowdown still is.
    rng = np.random.default_rng(3)
    rows = []
    prefill_shift = [1.06, 1.05, 0.98, 1.00, 1.06, 1.05, 1.08, 0.97, 1.04, 1.06]
    for pair in range(10):
        for variant in ("A", "B"):
            b = variant == "B"
            pp = 100.0 * (prefill_shift[pair] if b else 1.0) * rng.lognormal(0, 0.002)
            rows.append({"device": "d", "backend": "reference", "model": "m", "quant": "q4_0", "test": "pp8+tg8",
                         "threads": 1, "pair": pair, "rep": 0, "variant": variant, "exit_status": 0,
                         "decode_tps": 50.0 * (0.95 if b else 1.0) * rng.lognormal(0, 0.005),
                         "prefill_tps": pp, "ttft_s": 8 / pp, "peak_rss_bytes": 2**27 + int(rng.integers(0, 2**16)),
                         "decode_j_per_tok": None, "prefill_j_per_tok": None})
    by = {r.metric.column: r for r in compare_paired(pd.DataFrame(rows), threshold=0.03, alpha=0.05).results}
    raw = by["prefill_tps"].comparison
    assert raw is not None and raw.p_value < 0.05 and raw.change > 0.03  # alone, it would be called
    # not called, and not "no change" either: a +4% estimate with an MDE of ~5% is no evidence of none
    assert by["prefill_tps"].p_adjusted > 0.05 and by["prefill_tps"].verdict.label == "inconclusive"
    # TTFT is the same measurement: one family, so the same factor, not a fourth chance
    assert by["ttft_s"].verdict.label == "inconclusive"
    assert by["decode_tps"].verdict.label == "regression" and by["decode_tps"].p_adjusted < 0.01
    # Identical peak memory in every pair cannot raise an alarm: it does not count as a family.
    constant = pd.DataFrame(rows).assign(peak_rss_bytes=2**27)
    by2 = {r.metric.column: r for r in compare_paired(constant, threshold=0.03, alpha=0.05).results}
    dec = by["decode_tps"]
    assert by2["decode_tps"].p_adjusted == pytest.approx(dec.p_adjusted * 2 / 3)
    assert by2["peak_rss_bytes"].verdict.label == "no change"


def _contaminated(rng: np.random.Generator, effect: float, n: int = 10, sd: float = 0.01, hits: int = 2,
                  slow: float = 0.3, against: bool = False):
    """n pairs of decode t/s; `hits` pairs had one side slowed by `slow` (a busy neighbour).

    against=True puts every hit on A, so it reads as "B faster" and works against detecting a slowdown
    of B; otherwise each hit lands on A or B at random (what ABBA makes of interference under A/A).
    """
    a, b = _pairs(rng, n, effect, sd)
    for i in rng.choice(n, size=hits, replace=False):
        if against or rng.random() < 0.5:
            a[i] *= 1 - slow
        else:
            b[i] *= 1 - slow
    return a, b


def test_trimmed_test_survives_disturbed_pairs_that_sink_a_rank_test() -> None:
    from scipy import stats as sps

    rng = np.random.default_rng(8)
    trials = 300
    hits = rank_hits = 0
    for _ in range(trials):
        a, b = _contaminated(rng, -0.05, against=True)
        hits += stats.paired(a, b).p_value < 0.025
        rank_hits += sps.wilcoxon(np.log(b / a)).pvalue < 0.025
    assert hits / trials >= 0.95
    assert rank_hits / trials < 0.5  # two reversed pairs hold the top ranks: a signed-rank test loses the call
    false = sum(stats.paired(*_contaminated(rng, 0.0)).p_value < 0.05 for _ in range(trials))
    assert false / trials <= 0.08  # the disturbed pairs do not buy false alarms either


def test_hochberg_and_a_second_decode_measure_keep_alpha() -> None:
    import pandas as pd

    from farm.analysis.compare import compare_paired, hochberg

    assert hochberg([0.01, 0.04]) == pytest.approx([0.02, 0.04])
    assert hochberg([0.03, 0.031]) == pytest.approx([0.031, 0.031])  # two looks at one thing keep their p
    rng = np.random.default_rng(9)

    def run(effect: float, burst: bool) -> dict:
        rows = []
        for pair in range(10):
            shared = rng.lognormal(0, 0.01, 2)  # A's and B's process-level noise
            for i, variant in enumerate(("A", "B")):
                step = 50.0 * (1 + effect if variant == "B" else 1.0) * shared[i] * rng.lognormal(0, 0.003)
                # a burst that stalls a few steps of one run moves the total, not the fast steps
                total = step * (0.8 if burst and pair in (2, 7) and variant == "A" else 1.0)
                rows.append({"device": "d", "backend": "reference", "model": "m", "quant": "q4_0", "test": "tg32",
                             "threads": 1, "pair": pair, "rep": 0, "variant": variant, "exit_status": 0,
                             "decode_tps": total, "decode_step_tps": step})
        return {r.metric.column: r for r in compare_paired(pd.DataFrame(rows), threshold=0.03, alpha=0.05).results}

    by = run(-0.05, burst=True)
    assert by["decode_step_tps"].verdict.label == "regression"
    false = sum(any(r.verdict.label == "regression" for r in run(0.0, burst=False).values()) for _ in range(200))
    assert false / 200 <= 0.08


def test_mde_is_what_the_test_resolves_when_the_host_switches_speed() -> None:
    from scipy import stats as sps

    # A shared VM: each run lands in a fast or a slow stretch (25% apart), half the time each.
    rng = np.random.default_rng(10)
    trials = 300
    false = 0
    for _ in range(trials):
        a = 100 * np.where(rng.random(10) < 0.5, 1.0, 0.75) * rng.lognormal(0, 0.005, 10)
        b = 100 * np.where(rng.random(10) < 0.5, 1.0, 0.75) * rng.lognormal(0, 0.005, 10)
        c = stats.paired(a, b)
        v = stats.verdict(c, True, threshold=0.03, mde_value=stats.mde(c.noise_sd, 10))
        false += v.label in ("regression", "improvement")
    assert false / trials <= 0.05
    # For the run's own noise the MDE is (t_{1-α/2} + t_power) standard errors of the trimmed test.
    a, b = _pairs(rng, 10, 0.0, 0.02)
    c = stats.paired(a, b)
    _, se, df = stats.trimmed(np.log(b / a))
    want = math.expm1((sps.t.ppf(0.975, df) + sps.t.ppf(0.8, df)) * se)
    assert stats.mde(c.noise_sd, 10) == pytest.approx(want)
