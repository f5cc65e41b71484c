"""The drift judge: exact raise/clear points, false-alarm bounds, FDR, floors, updates, state."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from monitor.drift.baseline import SeriesKey
from monitor.drift.divergence import chi2_homogeneity, js_distance, psi
from monitor.drift.judge import MODEL_UPDATE, WITHIN_VERSION, Judge, JudgeConfig, JudgeReport
from monitor.drift.verdict import Hysteresis, bh_adjust

STATS = ("entropy", "max_weight", "topk_mass", "gini", "effective_span", "recent_mass", "genre_entropy")
# Each statistic has its own shape under the null, as in production.
NULL_SHAPES = {s: (2.0 + i * 0.5, 5.0 - i * 0.4) for i, s in enumerate(STATS)}
BINS = 20
EDGES = np.linspace(0.0, 1.0, BINS + 1)
CENTRES = (EDGES[:-1] + EDGES[1:]) / 2


def bin_probs(a: float, b: float) -> np.ndarray:
    return np.diff(stats.beta.cdf(EDGES, a, b))


def binned_sample(rng: np.random.Generator, probs: np.ndarray, n: int) -> np.ndarray:
    """Values at bin centres with multinomial counts: what a Histogram sees of n Beta draws, 20x cheaper."""
    return np.repeat(CENTRES, rng.multinomial(n, probs))


def keys_for(version: str, cohorts: int, statistics=STATS, layers: int = 1, dimension: str = "platform"):
    return [
        SeriesKey(version, dimension, f"c{c}", s, layer)
        for c in range(cohorts)
        for s in statistics
        for layer in range(layers)
    ]


def cohort_drifting(report: JudgeReport, cohort: str, kind: str = WITHIN_VERSION, version: str = "v1") -> bool:
    for v in report.cohorts:
        if (v.model_version, v.cohort, v.kind) == (version, cohort, kind):
            return v.drifting
    return False


# -- effect sizes, test, BH, hysteresis ----------------------------------------------


def test_js_distance_bounds_and_bias_correction() -> None:
    a = np.array([[10, 0, 0, 0], [5, 5, 5, 5]])
    b = np.array([[0, 0, 0, 10], [5, 5, 5, 5]])
    assert js_distance(a, b).tolist() == pytest.approx([1.0, 0.0])
    rng = np.random.default_rng(0)
    p = bin_probs(2, 5)
    wa = rng.multinomial(200, p, size=4000)
    wb = rng.multinomial(2000, p, size=4000)
    raw = js_distance(wa, wb)
    corrected = js_distance(wa, wb, bias_corrected=True)
    # Same distribution: the plug-in estimate sits near 0.13, the corrected one near 0.
    assert 0.11 < raw.mean() < 0.15
    assert corrected.mean() < 0.05 and np.median(corrected) < 0.03
    assert (corrected <= raw + 1e-12).all()


def test_psi_and_chi2_basics() -> None:
    same = np.array([[50, 50, 50, 50]])
    assert psi(same, same)[0] == pytest.approx(0.0)
    stat, df, p = chi2_homogeneity(same, same)
    assert stat[0] == pytest.approx(0.0) and df[0] == 3 and p[0] == pytest.approx(1.0)
    # Agrees with scipy's contingency test when no merging is needed.
    a = np.array([[30, 60, 90, 20]])
    b = np.array([[300, 500, 1000, 400]])
    expected = stats.chi2_contingency(np.vstack([a[0], b[0]]), correction=False)
    stat, df, p = chi2_homogeneity(a, b)
    assert stat[0] == pytest.approx(expected.statistic) and df[0] == expected.dof
    assert p[0] == pytest.approx(expected.pvalue)


def test_chi2_merges_sparse_bins() -> None:
    # Sparse tails are merged until both expected counts reach 5.
    a = np.array([[0, 1, 100, 90, 1, 0, 0, 2]])
    b = np.array([[2, 10, 1000, 900, 10, 3, 1, 1]])
    stat, df, p = chi2_homogeneity(a, b)
    assert df[0] < 7
    # Everything in one group leaves nothing to test.
    stat, df, p = chi2_homogeneity(np.array([[3, 2]]), np.array([[30, 20]]))
    assert df[0] == 0 and p[0] == 1.0


def test_chi2_p_values_are_calibrated_under_the_null() -> None:
    rng = np.random.default_rng(1)
    p0 = bin_probs(2, 5)
    _, _, p = chi2_homogeneity(rng.multinomial(200, p0, size=20_000), rng.multinomial(2000, p0, size=20_000))
    for level in (0.05, 0.01, 0.001):
        assert (p <= level).mean() == pytest.approx(level, rel=0.35, abs=2e-4)


def test_bh_matches_scipy() -> None:
    rng = np.random.default_rng(2)
    p = np.concatenate([rng.uniform(size=50), rng.uniform(0, 1e-3, size=5)])
    assert bh_adjust(p) == pytest.approx(stats.false_discovery_control(p, method="bh"))
    assert bh_adjust(np.array([])).size == 0


def test_hysteresis_raise_and_clear_counts() -> None:
    h = Hysteresis(raise_after=2, clear_after=3)
    flags = [True, False, True, True, False, False, True, False, False, False]
    assert [h.update(f) for f in flags] == [False, False, False, True, True, True, True, True, True, False]
    with pytest.raises(ValueError):
        Hysteresis(0, 1)


def test_config_validation_and_unknown_keys() -> None:
    assert JudgeConfig.from_mapping({"alpha": 0.05}).alpha == 0.05
    with pytest.raises(ValueError, match="unknown"):
        JudgeConfig.from_mapping({"alpah": 0.05})
    for bad in ({"alpha": 0.0}, {"min_effect": 1.5}, {"min_samples": 0}, {"raise_after": 0}, {"bins": 1}):
        with pytest.raises(ValueError):
            JudgeConfig(**bad)


# -- exact raise / clear points --------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_raise_and_clear_windows(seed: int) -> None:
    """Baseline of 2000 from Beta(2,5); windows of 200; Beta(5,2) from window k to j-1."""
    rng = np.random.default_rng(seed)
    config = JudgeConfig()  # 2000 / 200 / raise 2 / clear 3
    judge = Judge(config)
    keys = keys_for("v1", cohorts=1, statistics=STATS, layers=2)
    for key in keys:
        assert judge.observe(key, rng.beta(2, 5, 2000), now=0.0) == "baseline"
    k, j, windows = 4, 10, 16
    drifting, flagged = [], []
    for w in range(windows):
        a, b = (5, 2) if k <= w < j else (2, 5)
        for key in keys:
            assert judge.observe(key, rng.beta(a, b, 200), now=float(w + 1)) == "window"
        report = judge.judge(now=float(w + 1))
        assert report.judged == len(keys) and report.insufficient == 0
        drifting.append(cohort_drifting(report, "c0"))
        flagged.append(all(r.flagged for r in report.results))
        assert all(r.drifting == drifting[-1] for r in report.results)
    raised = k + config.raise_after - 1
    cleared = j + config.clear_after - 1
    assert flagged == [k <= w < j for w in range(windows)]
    assert drifting == [raised <= w < cleared for w in range(windows)]
    assert drifting.index(True) == raised == 5
    assert drifting.index(False, raised) == cleared == 12


def test_result_fields_describe_the_window() -> None:
    rng = np.random.default_rng(3)
    judge = Judge(JudgeConfig())
    key = SeriesKey("v1", "region", "eu", "entropy", 1)
    judge.observe(key, rng.beta(2, 5, 2000))
    judge.observe(key, rng.beta(5, 2, 300))
    (r,) = judge.judge(now=10.0).results
    assert r.key == key and r.kind == WITHIN_VERSION and r.reference_version == "v1"
    assert r.samples == 300 and r.reference_samples == 2000
    assert r.threshold == 0.1 and 0.7 < r.score <= r.js_raw < 0.9
    assert r.psi > 1.0 and r.p_value < 1e-30 and r.p_adjusted == r.p_value
    assert r.flagged and not r.drifting and r.consecutive_flagged == 1 and r.update_at is None


# -- false alarms under the null --------------------------------------------------------


def test_null_streams_false_alarm_rates() -> None:
    """200 seeds x 20 cohorts x 7 statistics x 5 windows of 200 against 2000-event baselines.

    Bounds: under the complete null, BH at alpha flags anything in a round
    with probability <= alpha (it reduces to Simes' test), so flagged rounds
    ~ Binomial(1000, <= 0.01). A given series is flagged with probability
    about alpha / K (K = 140 per round), and drifting needs raise_after = 2
    flags in a row, so per-series false alarms should be essentially absent;
    we allow 1 % of series. Raw (unadjusted) p-values must be calibrated:
    about alpha of them fall below alpha.
    """
    config = JudgeConfig()
    seeds, cohorts, windows = 200, 20, 5
    probs = {s: bin_probs(*NULL_SHAPES[s]) for s in STATS}
    keys = keys_for("v1", cohorts)
    flagged_rounds = flagged_series_windows = raw_significant = judged = 0
    ever_drifting = 0
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        judge = Judge(config)
        for key in keys:
            judge.observe(key, binned_sample(rng, probs[key.statistic], config.reference_events))
        drifted: set[SeriesKey] = set()
        for w in range(windows):
            for key in keys:
                judge.observe(key, binned_sample(rng, probs[key.statistic], config.min_samples))
            report = judge.judge(now=float(w))
            assert report.judged == len(keys)
            judged += report.judged
            flagged_rounds += report.flagged > 0
            flagged_series_windows += report.flagged
            raw_significant += sum(r.p_value <= config.alpha for r in report.results)
            drifted.update(r.key for r in report.results if r.drifting)
        ever_drifting += len(drifted)
    rounds = seeds * windows
    series = seeds * len(keys)
    assert flagged_rounds <= stats.binom.ppf(0.999, rounds, config.alpha)
    assert flagged_series_windows <= stats.binom.ppf(0.999, judged, 2 * config.alpha / len(keys))
    assert ever_drifting / series <= 0.01
    assert ever_drifting <= 3  # in practice 0: two flags in a row on one series is ~(alpha/K)^2
    assert raw_significant / judged == pytest.approx(config.alpha, rel=0.25)


def test_small_real_shift_on_huge_window_is_significant_but_not_flagged() -> None:
    """Beta(2,5) -> Beta(2.2,5): JS 0.056, a harmless wiggle. Significance grows with n; the score does not."""
    rng = np.random.default_rng(4)
    true_js = float(js_distance(bin_probs(2, 5)[None] * 1e9, bin_probs(2.2, 5)[None] * 1e9)[0])
    scores = {}
    for window in (2_000, 20_000, 200_000):
        judge = Judge(JudgeConfig(reference_events=50_000, min_samples=window))
        key = SeriesKey("v1", "platform", "ios", "entropy", 0)
        judge.observe(key, rng.beta(2, 5, 50_000))
        judge.observe(key, rng.beta(2.2, 5, window))
        (r,) = judge.judge(now=1.0).results
        scores[window] = r.score
        if window == 200_000:
            assert r.p_value < 1e-50 and r.p_adjusted < 1e-50  # overwhelmingly "significant"
            assert not r.flagged  # ... but below the effect floor
            no_floor = Judge(JudgeConfig(reference_events=50_000, min_samples=window, min_effect=0.0))
            no_floor.observe(key, rng.beta(2, 5, 50_000))
            no_floor.observe(key, rng.beta(2.2, 5, window))
            assert no_floor.judge(now=1.0).results[0].flagged  # without the floor it would page
    for window, score in scores.items():
        assert score == pytest.approx(true_js, abs=0.015), window


# -- many cohorts: FDR ---------------------------------------------------------------------


def test_fdr_with_100_cohorts_5_shifted() -> None:
    """One round, 100 cohorts, cohorts 0-4 shifted to Beta(3,5) (JS 0.24), windows of 200, 100 seeds."""
    config = JudgeConfig()
    null, shifted = bin_probs(2, 5), bin_probs(3, 5)
    truly = {f"c{i}" for i in range(5)}
    keys = keys_for("v1", cohorts=100, statistics=("entropy",))
    fdp, power, raw_false = [], [], []
    for seed in range(100):
        rng = np.random.default_rng(5000 + seed)
        judge = Judge(config)
        for key in keys:
            judge.observe(key, binned_sample(rng, null, config.reference_events))
            judge.observe(key, binned_sample(rng, shifted if key.cohort in truly else null, 200))
        report = judge.judge(now=1.0)
        flagged = {r.key.cohort for r in report.results if r.flagged}
        fdp.append(len(flagged - truly) / max(len(flagged), 1))
        power.append(len(flagged & truly) / len(truly))
        raw_false.append(sum(r.p_value <= config.alpha for r in report.results if r.key.cohort not in truly))
    assert np.mean(fdp) <= 2 * config.alpha  # BH: E[FDP] <= alpha * 95/100, plus Monte Carlo slack
    assert np.mean(power) >= 0.95
    assert np.mean(raw_false) > 0.5  # what testing each cohort at alpha would have flagged per round


# -- min_samples, no reference, caps, bounded state --------------------------------------------


def test_small_windows_give_no_verdict_and_keep_filling() -> None:
    rng = np.random.default_rng(6)
    judge = Judge(JudgeConfig())
    key = SeriesKey("v1", "platform", "ios", "entropy", 0)
    judge.observe(key, rng.beta(2, 5, 2000))
    for t in range(3):
        judge.observe(key, rng.beta(5, 2, 60))  # a huge shift, but only 60 events per round
        report = judge.judge(now=float(t))
        assert report.results == () and report.insufficient == 1 and report.cohorts == ()
    judge.observe(key, rng.beta(5, 2, 60))
    report = judge.judge(now=3.0)
    (r,) = report.results
    assert r.samples == 240 and r.flagged and not r.drifting
    assert report.insufficient == 0


def test_collecting_baseline_takes_values_then_windows_start() -> None:
    judge = Judge(JudgeConfig(reference_events=500, min_samples=100))
    key = SeriesKey("v1", "platform", "ios", "entropy", 0)
    rng = np.random.default_rng(7)
    assert judge.observe(key, rng.beta(2, 5, 300)) == "baseline"
    report = judge.judge(now=1.0)
    assert report.collecting == 1 and report.judged == 0 and report.insufficient == 0
    assert judge.observe(key, rng.beta(2, 5, 350)) == "baseline+window"  # 200 complete it, 150 to the window
    report = judge.judge(now=2.0)
    assert report.collecting == 0 and report.judged == 1 and report.results[0].samples == 150


def test_reference_seconds_freeze_at_judge_time() -> None:
    judge = Judge(JudgeConfig(reference_events=100, reference_seconds=300.0, min_samples=50))
    key = SeriesKey("v1", "platform", "ios", "entropy", 0)
    rng = np.random.default_rng(8)
    judge.observe(key, rng.beta(2, 5, 400), now=0.0)
    assert judge.judge(now=299.0).collecting == 1
    assert judge.judge(now=300.0).collecting == 0
    assert judge.baselines.reference(key).total == 400  # it kept collecting until old enough
    assert judge.observe(key, rng.beta(2, 5, 60), now=301.0) == "window"
    assert judge.judge(now=360.0).judged == 1


def test_key_cap_refuses_new_series_and_counts() -> None:
    judge = Judge(JudgeConfig(max_keys=3))
    keys = keys_for("v1", cohorts=5, statistics=("entropy",))
    outcomes = [judge.observe(k, np.full(10, 0.5)) for k in keys]
    assert outcomes == ["baseline"] * 3 + ["refused"] * 2
    assert len(judge) == 3 and len(judge.baselines) == 3
    assert judge.counts["refused_key_cap"] == 20
    judge.forget("v1")
    assert len(judge) == 0 and judge.observe(keys[4], np.full(10, 0.5)) == "baseline"


def test_state_does_not_grow_with_rounds() -> None:
    rng = np.random.default_rng(9)
    judge = Judge(JudgeConfig(reference_events=200, min_samples=50))
    keys = keys_for("v1", cohorts=3)
    sizes = []
    for t in range(60):
        for key in keys:
            judge.observe(key, rng.beta(2, 5, 60))
        judge.judge(now=float(t))
        if t in (9, 59):
            sizes.append(len(json.dumps(judge.to_state())))
    assert sizes[1] <= sizes[0] * 1.05


# -- pinning and model updates -------------------------------------------------------------------


def frozen_v1(rng: np.random.Generator, keys, config: JudgeConfig) -> Judge:
    judge = Judge(config)
    for key in keys:
        judge.observe(key, rng.beta(*NULL_SHAPES[key.statistic], config.reference_events), now=0.0)
    assert judge.judge(now=0.0).collecting == 0
    return judge


def test_pinned_version_is_judged_against_the_known_good_baseline() -> None:
    rng = np.random.default_rng(10)
    keys = keys_for("v1", cohorts=2)
    judge = frozen_v1(rng, keys, JudgeConfig())
    judge.pin("v2", "v1")
    for t in range(2):
        for key in keys:
            a, b = (5, 2) if key.cohort == "c1" else NULL_SHAPES[key.statistic]
            assert judge.observe(key.with_version("v2"), rng.beta(a, b, 200)) == "window"
        report = judge.judge(now=float(t + 1))
    assert {r.reference_version for r in report.results} == {"v1"}
    assert {r.kind for r in report.results} == {WITHIN_VERSION}
    assert cohort_drifting(report, "c1", version="v2") and not cohort_drifting(report, "c0", version="v2")
    assert all(k.model_version == "v1" for k in judge.baselines)  # v2 collected nothing


def run_update(seed: int, shifted: set[str], rounds: int = 13) -> list[JudgeReport]:
    """v1 frozen; v2 takes over at t=100 with 200 events per series per round."""
    rng = np.random.default_rng(seed)
    config = JudgeConfig(update_min_effect=None)  # the mechanism, at the within-version floor
    keys = keys_for("v1", cohorts=6, layers=2)
    judge = frozen_v1(rng, keys, config)
    assert judge.start_update("v2", "v1", at=100.0)
    assert not judge.start_update("v2", "v1", at=999.0)  # idempotent on restart
    reports = []
    for t in range(rounds):
        for key in keys:
            a, b = NULL_SHAPES[key.statistic]
            if key.cohort in shifted:
                a, b = a + 2.0, b  # a large shift (JS ~ 0.3) of every statistic
            judge.observe(key.with_version("v2"), rng.beta(a, b, 200), now=100.0 + t)
        reports.append(judge.judge(now=100.0 + t))
    return reports


def test_update_with_unchanged_attention_raises_nothing_then_switches_to_within_version() -> None:
    reports = run_update(seed=11, shifted=set())
    for t, report in enumerate(reports):
        kinds = {r.kind for r in report.results}
        if t < 9:  # 9 windows judged against v1 while v2's own 2000-event baseline collects
            assert kinds == {MODEL_UPDATE} and report.judged == 6 * 7 * 2
            assert {r.reference_version for r in report.results} == {"v1"}
            assert {r.update_at for r in report.results} == {100.0}
        elif t == 9:  # the batch that completes v2's baseline restarts the window
            assert report.judged == 0 and report.collecting == 0
        else:
            assert kinds == {WITHIN_VERSION}
            assert {r.reference_version for r in report.results} == {"v2"}
        assert report.drifting == 0
        assert not any(v.drifting for v in report.cohorts)
    final = {(v.cohort, v.kind): v for v in reports[-1].cohorts}
    assert final[("c0", MODEL_UPDATE)].active is False and final[("c0", MODEL_UPDATE)].update_at == 100.0


def test_update_with_shifted_cohorts_raises_model_update_for_those_only() -> None:
    shifted = {"c1", "c4"}
    reports = run_update(seed=12, shifted=shifted)
    for t, report in enumerate(reports[:9]):
        update_verdicts = {v.cohort: v for v in report.cohorts if v.kind == MODEL_UPDATE}
        assert set(update_verdicts) == {f"c{i}" for i in range(6)}
        drifting = {c for c, v in update_verdicts.items() if v.drifting}
        assert drifting == (shifted if t >= 1 else set())  # raise_after = 2: raised at window 1
        for c in shifted:
            v = update_verdicts[c]
            assert v.reference_version == "v1" and v.update_at == 100.0 and v.active
            if t >= 1:
                assert len(v.drifting_series) == 7 * 2
    # After v2's baseline freezes: judged within v2 (its own, shifted, traffic) -> quiet, while the
    # model_update verdict persists, final, with the update time.
    last = reports[-1]
    assert {r.kind for r in last.results} == {WITHIN_VERSION}
    assert not any(v.drifting for v in last.cohorts if v.kind == WITHIN_VERSION)
    persisted = {v.cohort for v in last.cohorts if v.kind == MODEL_UPDATE and v.drifting}
    assert persisted == shifted
    assert all(not v.active for v in last.cohorts if v.kind == MODEL_UPDATE)
    assert last.drifting == 0  # finished updates no longer count as live drift


def test_update_without_previous_baseline_counts_no_reference() -> None:
    rng = np.random.default_rng(13)
    judge = Judge(JudgeConfig())
    judge.start_update("v2", "v1", at=0.0)  # v1 has nothing for this cohort
    key = SeriesKey("v2", "platform", "new", "entropy", 0)
    assert judge.observe(key, rng.beta(2, 5, 300)) == "baseline+window"
    report = judge.judge(now=1.0)
    assert report.no_reference == 1 and report.judged == 0


# -- persistence ---------------------------------------------------------------------------------


def test_save_load_mid_stream_gives_identical_verdicts() -> None:
    rng = np.random.default_rng(14)
    config = JudgeConfig(reference_events=1000, reference_seconds=5.0, update_min_effect=None)
    keys = keys_for("v1", cohorts=4)
    judge = frozen_v1(rng, keys, JudgeConfig(reference_events=1000))
    judge = Judge.from_state(judge.to_state(), config)
    judge.start_update("v2", "v1", at=10.0)
    judge.pin("v3", "v1")

    def feed(j: Judge, batches: dict, t: float) -> JudgeReport:
        for key, values in batches.items():
            j.observe(key, values, now=t)
        return j.judge(now=t)

    def batches(t: int) -> dict:
        out = {}
        for key in keys:
            a, b = NULL_SHAPES[key.statistic]
            shift = 2.0 if key.cohort == "c2" and t >= 3 else 0.0
            out[key] = rng.beta(a, b, 150)  # v1: windows fill across rounds (min_samples 200)
            out[key.with_version("v2")] = rng.beta(a + shift, b, 200)
            out[key.with_version("v3")] = rng.beta(a, b + shift, 250)
        return out

    for t in range(4):
        feed(judge, batches(t), 10.0 + t)
    saved = json.loads(json.dumps(judge.to_state()))
    clone = Judge.from_state(saved)
    assert clone.to_state() == judge.to_state()
    reports = []
    for t in range(4, 12):
        b = batches(t)
        reports.append(feed(judge, b, 10.0 + t))
        assert feed(clone, b, 10.0 + t) == reports[-1]
    assert clone.to_state() == judge.to_state()
    # The continued stream exercised every path: v1 windows spanning rounds, v2 under update then
    # within its own baseline, v3 pinned, and drift raised on the shifted cohort.
    seen = {(r.key.model_version, r.kind, r.reference_version) for rep in reports for r in rep.results}
    assert seen == {
        ("v1", WITHIN_VERSION, "v1"),
        ("v2", MODEL_UPDATE, "v1"),
        ("v2", WITHIN_VERSION, "v2"),
        ("v3", WITHIN_VERSION, "v1"),
    }
    drifting = {(v.model_version, v.cohort, v.kind) for v in reports[-1].cohorts if v.drifting}
    # v2's own baseline froze half before, half after the shift began, so c2 drifts within v2 too.
    assert drifting == {("v2", "c2", MODEL_UPDATE), ("v2", "c2", WITHIN_VERSION), ("v3", "c2", WITHIN_VERSION)}
    with pytest.raises(ValueError):
        Judge.from_state(saved, JudgeConfig(bins=10))
