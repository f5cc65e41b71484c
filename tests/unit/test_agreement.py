"""monitor.drift.agreement: per-event rank agreement of two versions, within history-length
strata, a bounded uniform reservoir, and a standard error counted in users."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from monitor.drift.agreement import AgreementSample, agreement, below_cutoff_p, effective_users
from monitor.drift.paired import PairCohort, PairedComparison, PairedConfig, PairKey

EDGES = (10, 50, 200)


def _sample(old: np.ndarray, new: np.ndarray, lengths: np.ndarray, users: np.ndarray,
            capacity: int | None = None) -> AgreementSample:
    sample = AgreementSample(capacity or len(old), old.shape[1], seed=0)
    sample.add(old, new, lengths, users)
    return sample


def test_a_monotone_recalibration_agrees_and_independent_statistics_do_not() -> None:
    """A benign retrain may be sharper or flatter everywhere (a monotone map of every value):
    the order of events is kept, agreement ~1. Independent per-event values: ~0."""
    rng = np.random.default_rng(0)
    old = rng.random((600, 3))
    users = np.arange(600, dtype=np.uint64)
    lengths = rng.integers(10, 300, 600)
    sharper = _sample(old, old**3, lengths, users)
    unrelated = _sample(old, rng.random((600, 3)), lengths, users)
    a, b = agreement(sharper, EDGES), agreement(unrelated, EDGES)
    assert a.value == pytest.approx(1.0, abs=1e-3)
    assert abs(b.value) < 0.1 and 0.0 < b.standard_error < 0.1
    assert below_cutoff_p(b.value, b.standard_error, 0.3) < 1e-3
    assert below_cutoff_p(a.value, a.standard_error, 0.3) > 0.5


def test_agreement_is_taken_within_history_length_strata() -> None:
    """History length drives both versions' statistics alike; pooled over lengths two
    unrelated models would look in agreement. Within strata they do not."""
    rng = np.random.default_rng(1)
    lengths = rng.choice([20, 100, 300], 900)
    level = np.searchsorted(EDGES, lengths, side="right") / 4.0  # [900] per-stratum level shared by both
    old = (level + 0.05 * rng.random(900))[:, None]
    new = (level + 0.05 * rng.random(900))[:, None]
    pooled = stats.spearmanr(old[:, 0], new[:, 0]).statistic
    within = agreement(_sample(old, new, lengths, np.arange(900, dtype=np.uint64)), EDGES)
    assert pooled > 0.8
    assert abs(within.value) < 0.15


def test_histories_shorter_than_the_first_edge_are_left_out() -> None:
    rng = np.random.default_rng(2)
    old = rng.random((200, 1))
    lengths = np.where(np.arange(200) < 100, 3, 60)
    new = np.where(lengths[:, None] < 10, old, rng.random((200, 1)))  # short ones agree perfectly
    result = agreement(_sample(old, new, lengths, np.arange(200, dtype=np.uint64)), EDGES)
    assert result.used == 100
    assert abs(result.value) < 0.3


def test_the_standard_error_counts_users_not_events() -> None:
    """30 users with 20 identical events each carry 30 users' evidence, not 600 events'."""
    rng = np.random.default_rng(3)
    per_user_old, per_user_new = rng.random((30, 2)), rng.random((30, 2))
    users = np.repeat(np.arange(30, dtype=np.uint64) * 7919, 20)
    clustered = _sample(np.repeat(per_user_old, 20, axis=0), np.repeat(per_user_new, 20, axis=0),
                        np.full(600, 40), users)
    distinct_old, distinct_new = rng.random((600, 2)), rng.random((600, 2))
    independent = _sample(distinct_old, distinct_new, np.full(600, 40), np.arange(600, dtype=np.uint64))
    assert agreement(clustered, EDGES).standard_error > 2.5 * agreement(independent, EDGES).standard_error
    assert effective_users(users) == pytest.approx(30.0)


def test_the_reservoir_is_bounded_and_uniform_over_the_stream() -> None:
    sample = AgreementSample(capacity=200, series=1, seed=4)
    for start in range(0, 5000, 50):  # 100 batches; the value is the pair's position in the stream
        position = np.arange(start, start + 50)
        sample.add((position / 5000.0)[:, None], (position / 5000.0)[:, None], np.full(50, 30),
                   position.astype(np.uint64))
    assert len(sample) == 200 and sample.seen == 5000
    kept = sample.users.astype(np.int64)
    assert len(set(kept.tolist())) == 200
    # uniform: each fifth of the stream holds about a fifth of the reservoir
    per_fifth = np.bincount(kept // 1000, minlength=5)
    assert per_fifth.min() >= 20, per_fifth


def test_state_round_trip_keeps_every_pair() -> None:
    rng = np.random.default_rng(5)
    sample = _sample(rng.random((50, 4)), rng.random((50, 4)), rng.integers(1, 400, 50),
                     rng.integers(0, 2**63, 50).astype(np.uint64), capacity=64)
    restored = AgreementSample.from_state(json.loads(json.dumps(sample.to_state())))
    for name in ("old", "new", "lengths", "users"):
        np.testing.assert_array_equal(getattr(restored, name), getattr(sample, name))
    assert (restored.seen, restored.capacity) == (sample.seen, sample.capacity)
    assert agreement(restored, EDGES) == agreement(sample, EDGES)


# --- in the paired comparison ---------------------------------------------------------------

COHORT = PairCohort("v2", "platform", "ios")


def _feed(pc: PairedComparison, rng: np.random.Generator, *, agree: bool, rounds: int) -> list:
    """Pairs whose rows moved like a benign retrain's (JS ~ Beta(2, 8): the rows test stays quiet);
    the per-event statistics [P, 7, 2] keep their order (agree) or not."""
    reports = []
    for t in range(rounds):
        js = rng.beta(2, 8, (150, 2))
        old = rng.random((150, 7, 2))
        new = np.sqrt(old) if agree else rng.random((150, 7, 2))
        users = (np.arange(150) + 150 * t).astype(np.uint64)
        pc.observe(COHORT, js, 1.0 - js, users)
        pc.observe_statistics(COHORT, old, new, np.full(150, 60), users)
        reports.append(pc.judge(now=float(t)))
    return reports


def test_a_model_that_reads_events_differently_is_confirmed_on_the_last_layer_only() -> None:
    reports = _feed(PairedComparison(), np.random.default_rng(6), agree=False, rounds=4)
    last = reports[-1]
    by_layer = {r.key.layer: r for r in last.results}
    assert by_layer[0].agreement is None and not by_layer[0].agreement_flagged  # first layer: not judged
    assert by_layer[1].agreement is not None and by_layer[1].agreement < 0.1
    assert by_layer[1].agreement_flagged and not by_layer[1].rows_flagged
    assert last.model_caused == (PairKey("v2", "platform", "ios", 1),)
    # the first round holds 150 pairs, under agreement_min_pairs: nothing judged yet
    assert all(r.agreement is None for r in reports[0].results)


def test_a_recalibrated_model_is_not_confirmed() -> None:
    reports = _feed(PairedComparison(), np.random.default_rng(7), agree=True, rounds=6)
    assert not any(r.flagged for report in reports for r in report.results)
    assert reports[-1].results[1].agreement == pytest.approx(1.0, abs=1e-3)


def test_format_2_state_resumes_with_an_empty_agreement_sample() -> None:
    pc = PairedComparison()
    _feed(pc, np.random.default_rng(8), agree=False, rounds=2)
    state = json.loads(json.dumps(pc.to_state()))
    assert state["cohorts"][0][5]["seen"] == 300
    state["format"] = 2
    state["cohorts"] = [entry[:5] for entry in state["cohorts"]]
    restored = PairedComparison.from_state(state)
    assert restored._cohorts[COHORT].agreement is None
    assert PairedComparison.from_state(json.loads(json.dumps(pc.to_state())))._cohorts[COHORT].agreement.seen == 300


def test_agreement_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="agreement_cutoff"):
        PairedConfig(agreement_cutoff=1.5)
    with pytest.raises(ValueError, match="agreement_min_pairs"):
        PairedConfig(agreement_capacity=100, agreement_min_pairs=200)
    with pytest.raises(ValueError, match="agreement_strata_edges"):
        PairedConfig(agreement_strata_edges=(50, 10))
