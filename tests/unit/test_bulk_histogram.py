"""BulkHistogram exports exactly what prometheus-client's Histogram would for the same values."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from monitor.export.metrics import LATENCY_BUCKETS, BulkHistogram


def _exposition(registry: CollectorRegistry) -> list[str]:
    return sorted(line for line in generate_latest(registry).decode().splitlines()
                  if line and not line.startswith("#") and "_created" not in line)


def test_same_buckets_sum_and_count_as_observe_one_at_a_time():
    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.exponential(0.2, size=5_000),
        np.asarray(LATENCY_BUCKETS),  # exactly on every bound: "le" includes the bound
        [0.0, 1e6],  # below the first bound, above the last
    ])
    reference, bulk_registry = CollectorRegistry(), CollectorRegistry()
    one_at_a_time = Histogram("lat_seconds", "h", buckets=LATENCY_BUCKETS, registry=reference)
    bulk = BulkHistogram("lat_seconds", "h", LATENCY_BUCKETS)
    bulk_registry.register(bulk)
    for value in values:
        one_at_a_time.observe(float(value))
    for part in np.array_split(values, 7):  # several batches accumulate
        bulk.observe_many(part)
    expected, got = _exposition(reference), _exposition(bulk_registry)

    def without_sum(lines: list[str]) -> list[str]:
        return [line for line in lines if not line.startswith("lat_seconds_sum")]

    assert without_sum(got) == without_sum(expected)  # every bucket and the count, label for label
    assert any('le="+Inf"} 5020.0' in line for line in got)
    (got_sum,) = [float(line.split()[-1]) for line in got if line.startswith("lat_seconds_sum")]
    assert got_sum == pytest.approx(values.sum(), rel=1e-12)  # summed in another order
