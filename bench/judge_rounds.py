"""The elected judge's cost per round as the series grow (docs/architecture.md, "Scale-out").

A round (``monitor.drift.rounds``) merges every partition's partial of a window, folds each
cohort's merged sample into the judge, judges, and writes the judge's state to the state
topic. This times those steps in one process on synthetic partials (4 partitions, random
statistics, two model versions serving side by side), at ``--scales`` times today's
series: the e2e deployment's 2 versions x 11 cohorts (all; platform 3; region 4;
history_length 3) x 7 statistics x 2 layers = 308 series. Scaling adds region values.

    python bench/judge_rounds.py [--scales 1 10 100] [--rounds 6]

Prints a table; the last line is one JSON object. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402

from monitor.drift.judge import Judge, JudgeConfig  # noqa: E402
from monitor.drift.partial import Partial, PartialSink  # noqa: E402
from monitor.drift.rounds import Rounds  # noqa: E402

PARTITIONS = 4
STATS = ("entropy", "max_weight", "topk_mass", "gini", "effective_span", "recent_mass", "genre_entropy")
LAYERS = 2
VERSIONS = ("v1", "v2")
BASE_COHORTS = 11  # all + platform 3 + region 4 + history_length 3
EVENTS_PER_COHORT = 60  # per partition and window: 240 per merged window, above min_samples
CONFIG = JudgeConfig(reference_events=400, reference_users=5.0, reference_seconds=0.0, min_samples=200,
                     min_users=5.0, update_min_effect=None, max_keys=10_000_000)


def partials(scale: int, seed: int = 0) -> list[Partial]:
    """One window's partial per partition, every cohort with EVENTS_PER_COHORT events."""
    rng = np.random.default_rng(seed)
    regions = BASE_COHORTS * scale - 7
    dims = {"platform": 3, "region": regions, "history_length": 3}
    sink = PartialSink(CONFIG)
    out = []
    for p in range(PARTITIONS):
        partial = sink.begin(p, 0, 0)
        sink.target = partial
        for version in VERSIONS:
            for dim, values in dims.items():
                n = values * EVENTS_PER_COHORT
                codes = np.repeat(np.arange(values), EVENTS_PER_COHORT)
                labels = tuple(f"{dim[0]}{i}" for i in range(values))
                kw = dict(values=rng.beta(2.0, 5.0, (n, len(STATS), LAYERS)),
                          users=rng.integers(0, 2**63, n).astype(np.uint64),
                          strata=sink.stratum_of(rng.integers(1, 300, n)), statistics=STATS)
                sink.observe_batch(version, dim, codes, labels, **kw)
                if dim == "platform":  # "all" once per event
                    sink.observe_batch(version, "all", np.zeros(n, int), ("all",), **kw)
        partial.see("v1", 0)
        partial.see("v2", 0)
        out.append(sink.take(p))
    return out


def at_window(partial: Partial, window: int) -> Partial:
    return Partial(partial.partition, window, partial.start, partial.end, partial.series, partial.samples,
                   partial.first_seen, partial.late)


def measure(scale: int, rounds_n: int) -> dict:
    base = partials(scale)
    judge, rounds = Judge(CONFIG), Rounds(PARTITIONS, 10.0)
    per_round, state_s, state_bytes, judged = [], [], [], []
    for window in range(rounds_n):
        for partial in base:
            rounds.offer(at_window(partial, window))
            rounds.mark(partial.partition, window, idle=False)
        started = time.perf_counter()
        reports = rounds.advance(judge)
        per_round.append(time.perf_counter() - started)
        judged.append(sum(r.judged for r in reports))
        started = time.perf_counter()
        state = json.dumps({"judge": judge.to_state(), "rounds": rounds.to_state()}).encode()
        state_s.append(time.perf_counter() - started)
        state_bytes.append(len(state))
    steady = slice(2, None)  # the first rounds fill the baselines
    return {"scale": scale, "series": len(judge), "judged_per_round": max(judged),
            "round_s": round(statistics.median(per_round[steady]), 4),
            "state_s": round(statistics.median(state_s[steady]), 4),
            "state_mib": round(state_bytes[-1] / 2**20, 2),
            "partial_mib": round(len(base[0].to_bytes()) / 2**20, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    rows = [measure(s, args.rounds) for s in args.scales]
    print(f"{'scale':>5} {'series':>8} {'judged':>8} {'round s':>9} {'state s':>9} {'state MiB':>10} "
          f"{'partial MiB':>12}")
    for r in rows:
        print(f"{r['scale']:>4}x {r['series']:>8,} {r['judged_per_round']:>8,} {r['round_s']:>9.3f} "
              f"{r['state_s']:>9.3f} {r['state_mib']:>10.2f} {r['partial_mib']:>12.2f}")
    print(json.dumps({"partitions": PARTITIONS, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
