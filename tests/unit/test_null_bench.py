"""The null bench's model-free check of the traffic: did the users themselves move within a
run, whatever the model attends to? Users are the units, so a heavy user counts once."""

from __future__ import annotations

import types

import numpy as np

from bench.null import MOVED_ALPHA, RunOutcome, population_moved, summarise

ITEMS = 200
POPULARITY = np.arange(ITEMS, 0, -1)  # item 0 the most popular, item 199 the least


def _traffic(early_items: np.ndarray, late_items: np.ndarray, users: int = 40, steps: int = 6,
             heavy_events: int = 0, seed: int = 0) -> tuple[types.SimpleNamespace, int]:
    """``users`` users active in the first half of the stream rating from ``early_items``, as
    many in the second half from ``late_items``, each ``steps`` events in one session; a heavy
    first-half user adds ``heavy_events`` more. Duck-types the factory fields the check reads."""
    rng = np.random.default_rng(seed)
    sequences, order = [], []
    for half, pool in enumerate((early_items, late_items)):
        events = []
        for _ in range(users):
            row = len(sequences)
            length = steps + 3 + (heavy_events if half == 0 and row == 0 else 0)
            sequences.append(rng.choice(pool, length))
            events.extend((row, t) for t in range(3, length))
        order.extend(events[i] for i in rng.permutation(len(events)))  # the half's users interleaved
    steps_array = np.asarray(order, dtype=np.int64)
    factory = types.SimpleNamespace(steps=steps_array, offset=0, history_limit=200,
                                    data=types.SimpleNamespace(sequences=tuple(sequences)))
    return factory, len(steps_array)


def test_users_who_read_other_items_later_are_a_moved_population() -> None:
    factory, events = _traffic(np.arange(0, 40), np.arange(120, 200))  # popular, then niche
    assert population_moved(factory, events, POPULARITY) < 1e-6


def test_one_population_throughout_does_not_count_as_moved() -> None:
    p_values = [population_moved(*_traffic(np.arange(ITEMS), np.arange(ITEMS), seed=seed), POPULARITY)
                for seed in range(40)]
    assert np.mean(np.asarray(p_values) <= MOVED_ALPHA) <= 0.05
    assert np.median(p_values) > 0.2


def test_a_heavy_user_is_one_unit_not_hundreds() -> None:
    """A first-half user with 400 events of niche items: counted by event, that user would
    move the early side; as one user among 40 it cannot."""
    rng = np.random.default_rng(3)
    factory, events = _traffic(np.arange(ITEMS), np.arange(ITEMS), heavy_events=400, seed=3)
    factory.data.sequences[0][:] = rng.choice(np.arange(190, 200), len(factory.data.sequences[0]))
    assert population_moved(factory, events, POPULARITY) > MOVED_ALPHA


def test_too_few_users_are_not_tested() -> None:
    factory, events = _traffic(np.arange(ITEMS), np.arange(ITEMS), users=3)
    assert np.isnan(population_moved(factory, events, POPULARITY))


def test_drifting_runs_and_rounds_split_by_whether_the_population_moved() -> None:
    moved_drifting = RunOutcome(rounds=20, judged_rounds=5, flagged_rounds=3, population_p=1e-9,
                                drifting={("within_version", "all", "all")})
    moved_quiet = RunOutcome(rounds=20, judged_rounds=4, population_p=1e-3)
    still_drifting = RunOutcome(rounds=20, judged_rounds=6, flagged_rounds=2, population_p=0.4,
                                drifting={("within_version", "history_length", "1-9")})
    untested = RunOutcome(rounds=20, judged_rounds=1, flagged_rounds=1)  # p NaN: counted as not moved
    summary = summarise([moved_drifting, moved_quiet, still_drifting, untested], events=6000, judge_every=250)
    assert (summary["runs_population_tested"], summary["runs_population_moved"]) == (3, 2)
    assert (summary["runs_with_drift"], summary["runs_with_drift_population_moved"],
            summary["runs_with_drift_population_not_moved"]) == (2, 1, 1)
    assert (summary["judged_rounds_population_not_moved"], summary["flagged_rounds_population_not_moved"]) == (7, 3)
