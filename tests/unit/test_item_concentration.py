"""Attention mass per item, judged: a narrowed stream fires, a stationary heavy-user stream does
not, and the item sketches and verdicts survive a checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monitor.drift.concentration import figures, watched
from monitor.drift.items import Attended
from monitor.drift.judge import Judge, JudgeConfig

CATALOGUE = np.arange(1000, 4000)  # raw item ids
POPULARITY = 1.0 / np.arange(1, CATALOGUE.size + 1) ** 0.8
POPULARITY /= POPULARITY.sum()
PROMOTED = np.array([3333, 1234, 2222])
LAYERS = 2
CONFIG = JudgeConfig(reference_seconds=0.0, reference_events=2000, reference_users=30, min_samples=200,
                     min_users=20)


class Traffic:
    """Events of light users (one event each, attention Dirichlet over a history of 20-50 items,
    heavier on the recent ones) and heavy users (a session: many events of one history, whose
    attention sits on a few of its items in every event)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.next_user = 0

    def _user(self) -> int:
        self.next_user += 1
        return self.next_user

    def history(self) -> np.ndarray:
        return self.rng.choice(CATALOGUE, int(self.rng.integers(20, 51)), p=POPULARITY)

    def batch(self, light: int, heavy: int, per_heavy: int, promoted: float = 0.0, weight: float = 0.6) -> tuple:
        """(users [B], attended); ``promoted``: share of events putting ``weight`` of their
        attention on the promoted items (a promotion every user's recent history holds)."""
        histories, users, session = [], [], []
        for _ in range(light):
            histories.append(self.history())
            users.append(self._user())
            session.append(None)
        for _ in range(heavy):
            user, history = self._user(), self.history()
            weights = self.rng.dirichlet(np.full(history.size, 0.1), LAYERS).T
            histories += [history] * per_heavy
            users += [user] * per_heavy
            session += [weights] * per_heavy
        events, items, masses = [], [], []
        for b, history in enumerate(histories):
            weights = session[b]
            if weights is None:
                weights = self.rng.dirichlet(np.linspace(0.2, 2.0, history.size), LAYERS).T  # [n, layers]
            if self.rng.random() < promoted:
                history = np.concatenate([history, PROMOTED])
                weights = np.concatenate([(1 - weight) * weights,
                                          np.full((PROMOTED.size, LAYERS), weight / PROMOTED.size)])
            events.append(np.full(history.size, b))
            items.append(history)
            masses.append(weights.astype(np.float32))
        attended = Attended.of_raw(np.concatenate(events), np.concatenate(items), np.concatenate(masses))
        return np.array(users, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15), attended


def feed(judge: Judge, traffic: Traffic, now: float, **kwargs) -> None:
    users, attended = traffic.batch(**kwargs)
    n = users.size
    values = traffic.rng.beta(5, 2, (n, 1, LAYERS))  # one statistic, stationary
    judge.observe_batch("v1", "all", np.zeros(n, dtype=np.int64), ("all",), values, users,
                        judge.stratum_of(np.full(n, 60)), now, statistics=("entropy",), attended=attended)


def run(seed: int, rounds: int, promoted_from: int | None = None, promoted: float = 0.5, weight: float = 0.6) -> list:
    traffic = Traffic(seed)
    judge = Judge(CONFIG)
    for t in range(5):  # the baseline: 2,500 events, light and heavy users
        feed(judge, traffic, float(t), light=300, heavy=10, per_heavy=40)
    reports = []
    for t in range(rounds):
        share = promoted if promoted_from is not None and t >= promoted_from else 0.0
        feed(judge, traffic, 10.0 + t, light=300, heavy=10, per_heavy=40, promoted=share, weight=weight)
        reports.append(judge.judge(10.0 + t))
    return reports


def test_a_narrowed_stream_is_judged_narrowed_and_names_the_items() -> None:
    reports = run(seed=1, rounds=6, promoted_from=2)
    items = [r.items for r in reports]
    assert all(len(i) == LAYERS for i in items)  # every round judges both layers
    assert not any(i.flagged for i in items[0] + items[1])  # before the promotion
    assert all(i.flagged and i.drifting for i in items[3])  # two flagged windows: narrowed
    last = items[-1][0]
    assert {item for item, _, _ in last.top[:3]} == set(PROMOTED.tolist())
    assert all(share > 0.08 and before < 0.01 for _, share, before in last.top[:3])
    assert last.top_share > last.reference_top_share + 0.2 and last.overlap < 0.8
    assert last.effective_items < last.reference_effective_items


@pytest.mark.parametrize("seed", range(6))
def test_a_stationary_heavy_user_stream_is_not_judged_narrowed(seed: int) -> None:
    reports = run(seed=100 + seed, rounds=12)
    items = [i for r in reports for i in r.items]
    assert len(items) == 12 * LAYERS
    assert not any(i.drifting for i in items)
    assert sum(i.flagged for i in items) <= 1
    # A window's own top items are its heavy users' session items: its top-10 share sits
    # above the reference's (more users, more spread) in most windows with nothing changed.
    # The test measures each half of the users on the other half's top items instead.
    assert np.mean([i.top_share > i.reference_top_share for i in items]) > 0.5


def test_item_sketches_and_verdicts_survive_a_checkpoint() -> None:
    traffic = Traffic(7)
    judge = Judge(CONFIG)
    for t in range(5):
        feed(judge, traffic, float(t), light=300, heavy=10, per_heavy=40)
    for t in range(2):
        feed(judge, traffic, 10.0 + t, light=300, heavy=10, per_heavy=40, promoted=0.5)
        judge.judge(10.0 + t)
    feed(judge, traffic, 20.0, light=300, heavy=10, per_heavy=40, promoted=0.5)  # an open window
    state = json.loads(json.dumps(judge.to_state()))
    restored = Judge.from_state(state)
    assert json.loads(json.dumps(restored.to_state())) == state
    before, after = judge.judge(21.0).items, restored.judge(21.0).items
    assert [(i.flagged, i.drifting, i.top) for i in before] == [(i.flagged, i.drifting, i.top) for i in after]
    assert all(i.drifting for i in after)


def test_old_states_without_item_mass_still_load() -> None:
    traffic = Traffic(8)
    judge = Judge(CONFIG)
    feed(judge, traffic, 0.0, light=300, heavy=10, per_heavy=40)
    state = judge.to_state()

    def strip(node):  # the state as the judge before item mass wrote it
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in ("items", "items_within", "items_update")}
        return [strip(v) for v in node] if isinstance(node, list) else node

    old = strip(state)
    assert old != state
    restored = Judge.from_state(json.loads(json.dumps(old)))
    assert strip(restored.to_state()) == old


def test_figures_of_a_uniform_and_a_concentrated_stream() -> None:
    from monitor.drift.items import ItemSketch

    uniform = ItemSketch(capacity=1000)
    uniform.add(np.arange(100), np.ones(100))
    f = figures(uniform, 10)
    assert f.top_share == pytest.approx(0.1) and f.effective_items == pytest.approx(100)
    small = ItemSketch(capacity=10)  # the sketch holds 10 of 100: the effective number is a lower bound
    small.add(np.arange(100), np.ones(100))
    assert 1 <= figures(small, 10).effective_items <= 100


def test_a_mild_narrowing_of_every_event_is_raised_and_the_watch_follows_the_windows() -> None:
    # Every event puts 12 % of its attention on the promoted items (a viral title in every
    # history, as in the item_burst scenario). The watched items of a window are the previous
    # window's: the first promoted window is judged on pre-promotion items by that test.
    reports = run(seed=3, rounds=6, promoted_from=1, promoted=1.0, weight=0.12)
    items = [r.items for r in reports]
    assert not any(i.flagged for i in items[0])
    first = items[1]  # the first promoted window watches the items of a window before it
    assert not any(i.drifting for i in first)
    assert all(i.flagged for i in items[2]) and all(i.drifting for i in items[3])
    assert set(PROMOTED.tolist()) <= {item for item, _, _ in items[-1][0].top}


def test_the_watched_test_holds_its_false_alarm_rate_on_clustered_groups() -> None:
    # 4,000 null windows of 16 user groups: each group's share varies around the reference's
    # (heavy users make a few groups far off), unequal group sizes; the reference is measured.
    rng = np.random.default_rng(5)
    k = 4000
    events = rng.integers(5, 60, (k, 16)).astype(float)
    share = rng.uniform(0.005, 0.2, (k, 1))
    heavy = rng.random((k, 16)) < 0.1
    group_share = np.clip(share * (1 + np.where(heavy, rng.exponential(2.0, (k, 16)), 0) - 0.2 * heavy), 0, 1)
    group_share *= share / (group_share * events).sum(axis=1, keepdims=True) * events.sum(axis=1, keepdims=True)
    mass = rng.normal(group_share * events, np.sqrt(events * group_share * 0.05))
    reference_events = np.full(k, 2000.0)
    reference = np.clip(rng.normal(share, np.sqrt(share * (1 - share) / 2000.0)), 1e-4, 1)
    out = watched(mass, events, np.repeat(reference, 2, axis=1), reference_events, np.full(k, 1.0))
    assert np.mean(out.p_value <= 0.01) <= 0.02
    assert np.mean(out.p_value <= 0.05) <= 0.07
