"""Paired old-vs-new comparison: benign retrains stay quiet, harmful ones raise at exact windows;
layers judged apart; the evidence counted in users, not events."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from monitor.drift.paired import (
    PairCohort,
    PairedComparison,
    PairedConfig,
    PairKey,
    binomial_tail,
    cutoff_from_benign,
)
from monitor.drift.users import hash_users

COHORT = PairCohort("v2", "platform", "ios")
KEY = PairKey("v2", "platform", "ios", 0)  # its one layer, when pairs come as [P]


def benign(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A retrain that keeps each event's focus: JS ~ Beta(2, 8) (mean 0.2, 2 % above 0.5)."""
    js = rng.beta(2, 8, n)
    return js, np.clip(1.0 - js + rng.normal(0, 0.05, n), 0, 1)


def harmful(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A change that moves attention elsewhere: JS ~ Beta(16, 2) (mean 0.89, 87 % above 0.8),
    about what the context cut measured (docs/drift.md)."""
    js = rng.beta(16, 2, n)
    return js, np.clip(1.0 - js, 0, 1)


def boundary(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Exactly at H0's edge: 10 % of events above the cutoff."""
    js = np.where(rng.uniform(size=n) < 0.1, 0.9, 0.1)
    return js, 1.0 - js


def test_config_validation_and_unknown_keys() -> None:
    assert PairedConfig.from_mapping({"min_pairs": 50}).min_pairs == 50
    with pytest.raises(ValueError, match="unknown"):
        PairedConfig.from_mapping({"min_pair": 50})
    for bad in ({"event_js_cutoff": 1.0}, {"benign_fraction": 0.0}, {"alpha": 1.0}, {"min_pairs": 0},
                {"min_users": 0.5}):
        with pytest.raises(ValueError):
            PairedConfig(**bad)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_raise_and_clear_windows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    config = PairedConfig()  # min_pairs 100, raise 2, clear 3
    pc = PairedComparison(config)
    k, j, windows = 3, 8, 14
    verdicts, flags = [], []
    for w in range(windows):
        js, overlap = (harmful if k <= w < j else benign)(rng, 150)
        assert pc.observe(COHORT, js, overlap) == "window"
        (r,) = pc.judge(now=float(w)).results
        verdicts.append(r.model_caused)
        flags.append(r.flagged)
    assert flags == [k <= w < j for w in range(windows)]
    raised, cleared = k + config.raise_after - 1, j + config.clear_after - 1
    assert verdicts == [raised <= w < cleared for w in range(windows)]


def test_result_fields() -> None:
    rng = np.random.default_rng(3)
    pc = PairedComparison(PairedConfig(event_js_cutoff=0.5))
    js, overlap = harmful(rng, 400)
    pc.observe(COHORT, js, overlap)
    (r,) = pc.judge(now=1.0).results
    assert r.key == KEY and r.pairs == 400 and r.above == int((js > 0.5).sum())
    assert r.effective_users == 400  # no user ids: every pair its own user
    assert r.fraction_above == pytest.approx(r.above / 400)
    assert r.mean_js == pytest.approx(js.mean()) and r.mean_overlap == pytest.approx(overlap.mean())
    assert r.p90_js == pytest.approx(np.quantile(js, 0.9), abs=0.05)
    assert r.cutoff == 0.5 and r.benign_fraction == 0.1 and r.p_value < 1e-100
    assert r.flagged and not r.model_caused and r.total_pairs == 400


def test_benign_retrains_stay_quiet_and_boundary_false_alarms_are_bounded() -> None:
    """20 cohorts x 200 seeds x 3 windows of 100 pairs, all exactly at H0's edge (10 % above).

    The binomial test is exact (conservative, being discrete), so BH over the
    round keeps the chance of any flag per round <= alpha even at the edge;
    a retrain inside the tolerance (2 % above) flags nothing at all.
    """
    config = PairedConfig()
    keys = [PairCohort("v2", "platform", f"c{i}") for i in range(20)]
    flagged_rounds = ever_on = 0
    for seed in range(200):
        rng = np.random.default_rng(100 + seed)
        pc = PairedComparison(config)
        for w in range(3):
            for key in keys:
                pc.observe(key, *boundary(rng, 100))
            report = pc.judge(now=float(w))
            assert len(report.results) == 20
            flagged_rounds += any(r.flagged for r in report.results)
        ever_on += len(report.model_caused)
    assert flagged_rounds <= stats.binom.ppf(0.999, 600, config.alpha)
    assert ever_on <= 2
    rng = np.random.default_rng(7)
    pc = PairedComparison(config)
    for w in range(20):
        for key in keys:
            pc.observe(key, *benign(rng, 150))
        report = pc.judge(now=float(w))
        assert not any(r.flagged for r in report.results) and report.model_caused == ()


def test_huge_sample_inside_the_tolerance_is_not_a_verdict() -> None:
    """A million pairs of a benign retrain: 'rows changed at all' is certain, yet no verdict."""
    rng = np.random.default_rng(4)
    pc = PairedComparison()
    moved = PairedConfig().event_js_cutoff + 0.05  # a row that moved past the cutoff
    js = np.where(rng.uniform(size=1_000_000) < 0.09, moved, rng.uniform(0.05, 0.3, 1_000_000))
    pc.observe(COHORT, js, 1.0 - js)
    (r,) = pc.judge(now=1.0).results
    assert stats.ttest_1samp(js, 0.0, alternative="greater").pvalue < 1e-100  # any-change test fires
    assert r.p_value > 0.5 and not r.flagged
    # ... while a share just above the tolerance, with that much evidence, is one.
    js = np.where(rng.uniform(size=1_000_000) < 0.11, moved, 0.2)
    pc.observe(COHORT, js, 1.0 - js)
    assert pc.judge(now=2.0).results[0].flagged


def test_min_pairs_gives_no_verdict_and_windows_keep_filling() -> None:
    rng = np.random.default_rng(5)
    pc = PairedComparison(PairedConfig(min_pairs=100))
    for t in range(3):
        pc.observe(COHORT, *harmful(rng, 30))
        report = pc.judge(now=float(t))
        assert report.results == () and report.insufficient == 1
    pc.observe(COHORT, *harmful(rng, 30))
    (r,) = pc.judge(now=3.0).results
    assert r.pairs == 120 and r.flagged


def test_bh_across_cohorts_flags_the_harmful_ones() -> None:
    config = PairedConfig()
    truly = {f"c{i}" for i in range(3)}
    fdp, power = [], []
    for seed in range(50):
        rng = np.random.default_rng(300 + seed)
        pc = PairedComparison(config)
        for i in range(60):
            key = PairCohort("v2", "platform", f"c{i}")
            # Harmful but subtle: 30 % of events moved a lot (past the cutoff), the rest benign.
            js, overlap = benign(rng, 150)
            if key.cohort in truly:
                moved = rng.uniform(size=150) < 0.3
                js = np.where(moved, rng.uniform(config.event_js_cutoff, 1.0, 150), js)
            pc.observe(key, js, overlap)
        flagged = {r.key.cohort for r in pc.judge(now=1.0).results if r.flagged}
        fdp.append(len(flagged - truly) / max(len(flagged), 1))
        power.append(len(flagged & truly) / 3)
    assert np.mean(fdp) <= 2 * config.alpha
    assert np.mean(power) >= 0.9


def test_nan_pairs_dropped_and_shapes_checked() -> None:
    pc = PairedComparison(PairedConfig(min_pairs=3, min_users=1))
    pc.observe(COHORT, np.array([0.1, np.nan, 0.9, 0.2]), np.array([0.9, 0.5, np.nan, 0.8]))
    assert pc.counts["nan_dropped"] == 1 and pc.counts["pairs"] == 3
    (r,) = pc.judge(now=0.0).results
    assert r.pairs == 3 and r.above == 1 and r.mean_overlap == pytest.approx(0.85)
    with pytest.raises(ValueError):
        pc.observe(COHORT, np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="one hash per pair"):
        pc.observe(COHORT, np.zeros(3), np.zeros(3), users=hash_users(["a", "b"]))
    with pytest.raises(ValueError, match="layers"):
        pc.observe(COHORT, np.zeros((3, 2)), np.zeros((3, 2)))  # the cohort holds one layer


def test_key_cap_and_forget() -> None:
    pc = PairedComparison(PairedConfig(max_keys=2))
    outcomes = [pc.observe(PairCohort("v2", "d", f"c{i}"), np.full(5, 0.2), np.full(5, 0.8)) for i in range(4)]
    assert outcomes == ["window", "window", "refused", "refused"]
    assert len(pc) == 2 and pc.counts["refused_key_cap"] == 10
    pc.forget("v2")
    assert len(pc) == 0


def test_cutoff_from_benign() -> None:
    rng = np.random.default_rng(6)
    js = rng.beta(2, 8, 100_000)
    cutoff = cutoff_from_benign(js, benign_fraction=0.1)
    assert (js > cutoff).mean() == pytest.approx(0.05, abs=0.002)
    with pytest.raises(ValueError):
        cutoff_from_benign(np.array([np.nan]))
    # Per layer ([events, layers]): the largest layer's cutoff, so no layer's benign share passes half the tolerance.
    two = np.stack([js, np.sqrt(js)], axis=1)
    cutoff = cutoff_from_benign(two)
    assert cutoff == pytest.approx(np.quantile(np.sqrt(js), 0.95))
    assert ((two > cutoff).mean(axis=0) <= 0.05 + 1e-9).all()


def test_save_load_mid_stream_gives_identical_verdicts() -> None:
    rng = np.random.default_rng(8)
    keys = [PairCohort("v2", "platform", f"c{i}") for i in range(5)]
    pc = PairedComparison()
    users = hash_users(f"user-{i}" for i in range(70))

    def batches(t: int) -> dict:
        return {k: (harmful if k.cohort == "c1" and t >= 2 else benign)(rng, (70, 2)) for k in keys}

    for t in range(3):
        for key, (js, ov) in batches(t).items():
            pc.observe(key, js, ov, users)
        pc.judge(now=float(t))
    clone = PairedComparison.from_state(json.loads(json.dumps(pc.to_state())))
    assert clone.to_state() == pc.to_state()
    on = set()
    for t in range(3, 10):
        b = batches(t)
        for key, (js, ov) in b.items():
            pc.observe(key, js, ov, users)
            clone.observe(key, js, ov, users)
        report = pc.judge(now=float(t))
        assert clone.judge(now=float(t)) == report
        on.update(report.model_caused)
    assert on == {PairKey("v2", "platform", "c1", 0), PairKey("v2", "platform", "c1", 1)}
    with pytest.raises(ValueError):
        PairedComparison.from_state(pc.to_state(), PairedConfig(bins=10))


def test_binomial_tail_is_exact_at_integers_and_continuous_between() -> None:
    n = np.arange(1, 60)
    for k in (0, 1, 3, 10):
        np.testing.assert_allclose(binomial_tail(np.full(n.shape, float(k)), n.astype(float), 0.1),
                                   np.where(k <= n, stats.binom.sf(k - 1, n, 0.1), 0.0), rtol=1e-9, atol=1e-300)
    k = np.linspace(0.5, 20.0, 40)
    tail = binomial_tail(k, np.full(k.shape, 20.0), 0.1)
    assert (np.diff(tail) < 0).all()  # more successes, less likely: no steps, no rounding
    assert binomial_tail(np.array(0.0), np.array(5.5), 0.1) == 1.0


def test_a_heavy_users_pairs_count_as_one_user() -> None:
    """40 of 100 pairs above the cutoff, all from one user: one user's evidence, not 40 events'."""
    config = PairedConfig(min_users=1)
    rng = np.random.default_rng(11)
    light = [f"light-{i}" for i in range(60)]
    js = np.concatenate([np.full(40, 0.9), rng.uniform(0.1, 0.4, 60)])  # [100]
    heavy = PairedComparison(config)
    heavy.observe(COHORT, js, 1.0 - js, hash_users(["heavy"] * 40 + light))
    (r,) = heavy.judge(now=0.0).results
    assert r.pairs == 100 and r.above == 40
    assert r.effective_users == pytest.approx(100**2 / (40**2 + 60), rel=0.1)  # ~6 users
    assert r.p_value > config.alpha and not r.flagged
    # The same 40 moved rows from 40 users are overwhelming evidence.
    spread = PairedComparison(config)
    spread.observe(COHORT, js, 1.0 - js, hash_users([f"moved-{i}" for i in range(40)] + light))
    (r,) = spread.judge(now=0.0).results
    assert r.effective_users == pytest.approx(100, rel=0.1) and r.p_value < 1e-8 and r.flagged
    # With the default min_users the heavy user's window is not judged at all: it waits for users.
    waiting = PairedComparison()
    waiting.observe(COHORT, js, 1.0 - js, hash_users(["heavy"] * 40 + light))
    report = waiting.judge(now=0.0)
    assert report.results == () and report.insufficient == 1


def test_layers_are_judged_apart() -> None:
    """A layer that moved is flagged even when the other did not move: averaged over
    layers (the old pooling) the per-event distance would sit below the cutoff."""
    rng = np.random.default_rng(12)
    pc = PairedComparison()
    cutoff = pc.config.event_js_cutoff
    for t in range(2):
        still = rng.uniform(0.05, 0.3, 200)
        moved = rng.uniform(cutoff + 0.02, 1.0, 200)
        assert ((still + moved) / 2 > cutoff).mean() < pc.config.benign_fraction
        js = np.stack([still, moved], axis=1)  # [200, 2]
        pc.observe(COHORT, js, 1.0 - js, hash_users(f"user-{t}-{i}" for i in range(200)))
        report = pc.judge(now=float(t))
    by_layer = {r.key.layer: r for r in report.results}
    assert not by_layer[0].flagged and by_layer[1].flagged
    assert report.model_caused == (PairKey("v2", "platform", "ios", 1),)
    assert len(pc) == 1  # one cohort, judged per layer


def test_format_1_state_is_restored_with_its_series_restarted() -> None:
    old = {"format": 1, "config": {"event_js_cutoff": 0.65, "benign_fraction": 0.1, "min_pairs": 100, "alpha": 0.01,
                                   "raise_after": 2, "clear_after": 3, "bins": 20, "max_keys": 5000},
           "round": 7, "counts": {"pairs": 900, "nan_dropped": 0, "refused_key_cap": 0},
           "pairs": [[["v2", "platform", "ios"], {}, {}, 900, 400]]}
    pc = PairedComparison.from_state(old, PairedConfig())
    assert len(pc) == 0 and pc.counts["pairs"] == 900 and pc.judge(now=0.0).round == 8
    with pytest.raises(ValueError, match="format"):
        PairedComparison.from_state({**old, "format": 99})
