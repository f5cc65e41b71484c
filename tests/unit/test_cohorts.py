"""monitor.drift.cohorts: buckets, unknown/other, admission, bounded cardinality, state."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from monitor.drift.cohorts import ALL, OTHER, UNKNOWN, CohortAssigner, CohortDimension, sanitise

LENGTH = CohortDimension("history_length", kind="history_length", edges=(10, 50, 200))


def _labels(assigner: CohortAssigner, contexts: list[dict], lengths: list[int] | None = None) -> list[tuple]:
    codes = assigner.assign(contexts, np.array(lengths or [1] * len(contexts)))
    table = assigner.labels()
    return [tuple(table[d][c] for d, c in zip(assigner.dimensions, row)) for row in codes]


def test_bucket_edges() -> None:
    assigner = CohortAssigner([LENGTH])
    assert assigner.dimensions == (ALL, "history_length")
    assert assigner.labels()["history_length"] == ("1-9", "10-49", "50-199", "200+")
    lengths = [1, 9, 10, 49, 50, 199, 200, 5000]
    got = [row[1] for row in _labels(assigner, [{}] * len(lengths), lengths)]
    assert got == ["1-9", "1-9", "10-49", "10-49", "50-199", "50-199", "200+", "200+"]


def test_all_dimension_and_code_layout() -> None:
    assigner = CohortAssigner([CohortDimension("platform", allowlist=("ios", "android")), LENGTH])
    codes = assigner.assign([{"platform": "ios"}, {}], np.array([3, 300]))
    assert codes.dtype == np.int32 and codes.shape == (2, 3)
    assert codes[:, 0].tolist() == [0, 0] and assigner.label(0, 0) == ALL
    assert assigner.labels()["platform"] == (UNKNOWN, OTHER, "ios", "android")
    assert codes[:, 1].tolist() == [2, 0]
    assert assigner.label(2, int(codes[1, 2])) == "200+"


def test_unknown_and_missing() -> None:
    assigner = CohortAssigner([CohortDimension("platform", min_count=1), CohortDimension("region", field="geo")])
    contexts = [{}, {"platform": None}, {"platform": ""}, {"platform": "unknown"}, {"geo": "eu", "region": "x"}]
    got = _labels(assigner, contexts)
    assert [row[1] for row in got] == [UNKNOWN] * 4 + [UNKNOWN]
    assert got[4][2] == OTHER  # "geo" read (not "region"); first sighting of "eu" is not admitted yet
    assert assigner.labels()["platform"] == (UNKNOWN, OTHER)  # missing values admit nothing


def test_pinned_allowlist() -> None:
    assigner = CohortAssigner([CohortDimension("platform", allowlist=("ios", "android", "web"))])
    contexts = [{"platform": v} for v in ["ios", "web", "tv", "tv", "tv", "tv", "tv", "tv", "other", "ios "]]
    got = [row[1] for row in _labels(assigner, contexts)]
    assert got == ["ios", "web"] + [OTHER] * 6 + [OTHER, OTHER]  # "ios " sanitises to "ios_"
    assert assigner.labels()["platform"] == (UNKNOWN, OTHER, "ios", "android", "web")
    assert assigner.state()["dimensions"] == {}  # pinned dimensions have no state


def test_volume_admission_min_count() -> None:
    assigner = CohortAssigner([CohortDimension("platform", min_count=3)])
    got = [row[1] for row in _labels(assigner, [{"platform": "ios"}] * 5)]
    assert got == [OTHER, OTHER, "ios", "ios", "ios"]


def test_sanitise() -> None:
    assert sanitise("eu-west.1:a_b") == "eu-west.1:a_b"
    assert sanitise('ios"} evil{x="') == "ios___evil_x__"
    assert sanitise("x" * 100, max_len=8) == "x" * 8
    assert sanitise(True) == "true" and sanitise(3) == "3" and sanitise(None) == ""
    assigner = CohortAssigner([CohortDimension("build", min_count=1, max_label_len=6)])
    assert _labels(assigner, [{"build": 1234567}, {"build": "123456!!"}])[1][1] == "123456"


def test_flood_of_distinct_values_is_bounded() -> None:
    cap = 10
    dim = CohortDimension("region", max_values=cap, min_count=5, sketch_factor=4)
    assigner = CohortAssigner([dim])
    contexts = [{"region": f"noise-{i}"} for i in range(100_000)]
    peak_sketch = 0
    for start in range(0, len(contexts), 1000):
        codes = assigner.assign(contexts[start : start + 1000], np.ones(1000, dtype=np.int64))
        assert codes[:, 1].max() <= cap + 1
        cohort = assigner._context[0][1]
        peak_sketch = max(peak_sketch, len(cohort.sketch.counts) if cohort.sketch else 0)
        assert len(cohort.fast) <= 4 * cap + 16
    assert peak_sketch <= 4 * cap
    assert assigner.labels()["region"] == (UNKNOWN, OTHER)  # one-off values are never admitted
    state_size = len(json.dumps(assigner.state()))
    assert state_size < 4 * cap * (dim.max_label_len + 16)
    assert sys.getsizeof(assigner._context[0][1].sketch.counts) < 10_000


def test_heavy_values_after_noise_are_admitted_and_cap_holds() -> None:
    cap = 3  # sketch capacity 4 * 3 = 12: values above 1/13 of the traffic are found
    assigner = CohortAssigner([CohortDimension("region", max_values=cap, min_count=5)])
    noise = [{"region": f"noise-{i}"} for i in range(20_000)]
    assigner.assign(noise, np.ones(len(noise), dtype=np.int64))
    assert assigner.labels()["region"] == (UNKNOWN, OTHER)
    # Then five heavy values, each 10 % of the traffic, still mixed with 50 % noise.
    heavy = [f"heavy-{k}" for k in range(5)]
    stream = [{"region": heavy[(i // 2) % 5]} if i % 2 == 0 else {"region": f"late-{i}"} for i in range(4000)]
    for start in range(0, len(stream), 256):
        batch = stream[start : start + 256]
        assigner.assign(batch, np.ones(len(batch), dtype=np.int64))
    labels = assigner.labels()["region"]
    assert len(labels) == cap + 2
    assert set(labels[2:]) <= set(heavy)  # only heavy values, and exactly cap of them
    # Admitted labels stay for good: a later flood of other heavy values changes nothing.
    late = [{"region": "newcomer"}] * 100
    assert set(row[1] for row in _labels(assigner, late)) == {OTHER}
    assert assigner.labels()["region"] == labels


def test_codes_are_stable_and_append_only() -> None:
    assigner = CohortAssigner([CohortDimension("platform", min_count=1)])
    first = assigner.assign([{"platform": "ios"}], np.array([1]))
    assigner.assign([{"platform": "web"}, {"platform": "tv"}], np.array([1, 1]))
    assert assigner.assign([{"platform": "ios"}], np.array([1]))[0, 1] == first[0, 1]
    assert assigner.labels()["platform"] == (UNKNOWN, OTHER, "ios", "web", "tv")


def test_state_round_trip() -> None:
    dims = [CohortDimension("platform", min_count=2, max_values=3), CohortDimension("region", min_count=2), LENGTH]
    assigner = CohortAssigner(dims)
    contexts = [{"platform": p, "region": r} for p, r in [("ios", "eu"), ("ios", "us"), ("web", "eu"), ("tv", "ap")]]
    assigner.assign(contexts, np.array([1, 2, 3, 4]))
    state = json.loads(json.dumps(assigner.state()))  # survives JSON
    restored = CohortAssigner.from_state(dims, state)
    assert restored.labels() == assigner.labels()
    assert restored.state() == assigner.state()
    # the sketch was restored too: one more "web" admits it, as it would have before the restart
    for a in (assigner, restored):
        assert _labels(a, [{"platform": "web"}])[0][1] == "web"


def test_from_state_tolerates_config_changes() -> None:
    old = [CohortDimension("platform", min_count=1, max_values=4), CohortDimension("gone", min_count=1)]
    assigner = CohortAssigner(old)
    assigner.assign([{"platform": p, "gone": "x"} for p in ["a", "b", "c", "d"]], np.ones(4, dtype=np.int64))
    new = [CohortDimension("platform", min_count=1, max_values=2), CohortDimension("fresh")]
    restored = CohortAssigner.from_state(new, assigner.state())
    assert restored.labels()["platform"] == (UNKNOWN, OTHER, "a", "b")  # lowered cap keeps the oldest
    assert restored.labels()["fresh"] == (UNKNOWN, OTHER)
    with pytest.raises(ValueError):
        CohortAssigner.from_state(new, {"version": 99})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "all"},
        {"name": "Bad Name"},
        {"name": "x", "max_values": 0},
        {"name": "x", "min_count": 0},
        {"name": "x", "kind": "weird"},
        {"name": "x", "kind": "history_length"},
        {"name": "x", "kind": "history_length", "edges": (10, 10)},
        {"name": "x", "kind": "history_length", "edges": (1, 10)},
        {"name": "x", "edges": (10,)},
        {"name": "x", "allowlist": ("a", "a")},
        {"name": "x", "allowlist": ("bad value",)},
        {"name": "x", "allowlist": ("other",)},
        {"name": "x", "allowlist": tuple("abc"), "max_values": 2},
    ],
)
def test_dimension_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        CohortDimension(**kwargs)


def test_assigner_validation() -> None:
    with pytest.raises(ValueError):
        CohortAssigner([CohortDimension("x"), CohortDimension("x")])
    assigner = CohortAssigner([LENGTH])
    with pytest.raises(ValueError):
        assigner.assign([{}], np.array([1, 2]))
    with pytest.raises(ValueError):
        assigner.assign([{}], np.array([0]))
    assert assigner.assign([], np.zeros(0, dtype=np.int64)).shape == (0, 2)


def test_junk_values_do_not_crash() -> None:
    assigner = CohortAssigner([CohortDimension("platform", min_count=1)])
    got = _labels(assigner, [{"platform": ["list"]}, {"platform": {"a": 1}}, {"platform": 1.5}])
    assert [row[1] for row in got] == [UNKNOWN, UNKNOWN, "1.5"]
