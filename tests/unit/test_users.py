"""monitor.drift.users: the effective number of users behind a window, in fixed memory."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.drift.users import UserSketch, hash_users


def _kish(counts: np.ndarray) -> float:
    return float(counts.sum() ** 2 / np.square(counts).sum())


def test_hashes_are_stable_and_distinct():
    assert hash_users(["a", "b", "a"]).tolist()[0] == hash_users(["a"]).tolist()[0]
    assert len(set(hash_users([f"u{i}" for i in range(10_000)]).tolist())) == 10_000
    # Fixed value: a process with another PYTHONHASHSEED, or a replica, must agree.
    assert int(hash_users(["user-42"])[0]) == int.from_bytes(
        __import__("hashlib").blake2b(b"user-42", digest_size=8).digest(), "little")


@pytest.mark.parametrize("seed", range(5))
def test_effective_users_match_kish_on_random_clustered_streams(seed):
    rng = np.random.default_rng(seed)
    users = rng.integers(20, 3_000)
    counts = rng.geometric(rng.uniform(0.02, 0.9), size=users)  # heavy and light users
    stream = np.repeat(np.arange(users), counts)
    rng.shuffle(stream)
    sketch = UserSketch()
    for chunk in np.array_split(stream, 7):
        sketch.add(hash_users(f"user-{u}" for u in chunk))
    assert sketch.events == counts.sum()
    assert sketch.effective_users() == pytest.approx(_kish(counts), rel=0.15)


def test_merge_equals_one_sketch_of_both_streams():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 200, 1_000), rng.integers(100, 300, 700)  # users 100-199 in both
    left, right, both = UserSketch(), UserSketch(), UserSketch()
    left.add(hash_users(map(str, a)))
    right.add(hash_users(map(str, b)))
    both.add(hash_users(map(str, np.concatenate([a, b]))))
    left.merge(right)
    assert left.to_state() == both.to_state()


def test_state_round_trip_and_bad_state_refused():
    sketch = UserSketch(width=64, depth=3)
    sketch.add(hash_users(["x"] * 5 + ["y"]))
    again = UserSketch.from_state(sketch.to_state())
    assert again.effective_users() == sketch.effective_users() and again.events == 6
    state = sketch.to_state()
    state["counters"] = state["counters"][:2]
    with pytest.raises(ValueError, match="shape"):
        UserSketch.from_state(state)
    with pytest.raises(ValueError):
        UserSketch(width=100)


def test_memory_is_bounded_whatever_the_number_of_users():
    sketch = UserSketch()
    sketch.add(hash_users(f"user-{i}" for i in range(200_000)))
    assert sketch._counters.nbytes == 512 * 5 * 8
    assert sketch.effective_users() == pytest.approx(200_000, rel=0.15)
