"""The served-recommendations bench's side of the item test: served slots as mass, users
split in halves, Kish's design effect from the users' event counts."""

from __future__ import annotations

import numpy as np
import pytest

from bench.served import side
from monitor.drift.concentration import compare, cross_share


def _event(user: str, items: list[int]) -> dict:
    return {"user_id": user, "recommended": [{"item": i, "score": 1.0} for i in items]}


def test_each_event_brings_one_unit_of_mass_spread_over_its_slots() -> None:
    served, _ = side([_event("a", [1, 2, 3, 4]), _event("b", [1, 5]), _event("c", [])])
    assert served.whole.mass_total() == pytest.approx(2.0)  # the event without slots brings none
    assert dict(served.whole.top(1)) == {1: pytest.approx(0.75)}
    assert served.halves[0].mass_total() + served.halves[1].mass_total() == pytest.approx(2.0)


def test_design_effect_is_kish_over_the_users_event_counts() -> None:
    events = [_event("heavy", [1])] * 8 + [_event(f"u{i}", [2]) for i in range(2)]
    _, design = side(events)
    counts = np.array([8, 1, 1])
    assert design == pytest.approx(len(counts) * (counts**2).sum() / counts.sum() ** 2)  # 2.2
    _, even = side([_event(f"u{i}", [1]) for i in range(10)])
    assert even == pytest.approx(1.0)


def test_a_flood_of_few_served_items_is_more_concentrated_than_the_reference() -> None:
    rng = np.random.default_rng(0)
    spread = [_event(f"u{i % 200}", rng.choice(1000, 10, replace=False).tolist()) for i in range(2000)]
    flooded = [_event(f"u{i % 200}", [1, 2, 3] + rng.choice(np.arange(10, 1000), 7, replace=False).tolist())
               for i in range(500)]
    (reference, r_design), (window, w_design) = side(spread), side(flooded)
    out = compare([window], [reference], np.array([w_design]), np.array([r_design]), top_k=10)
    assert out.narrowed[0] and out.p_value[0] < 1e-6
    assert cross_share(window, 10)[0] > 3 * cross_share(reference, 10)[0]
