"""Calibration of the judge on real retrains: benign update, harmful update, cohort shift.

Replays the three scenarios (``bench/scenarios.py``) through the in-process pipeline
with the default ``JudgeConfig`` / ``PairedConfig`` and prints what the judge saw:
effect sizes per statistic, flagged windows, verdicts per kind and cohort, the paired
per-event distances (and the cutoff ``cutoff_from_benign`` would pick), plus the benign
update replayed in MovieLens' own (bursty) time order for contrast. Figures for
``docs/drift.md``, "Calibration on real retrains"; asserts nothing.

    python bench/calibration.py [--root var/models] [--seed 7]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

# `python bench/<name>.py` puts bench/ first on sys.path, where bench/model.py would shadow
# the `model` package; use the repository root instead (`python -m bench.<name>` needs no help).
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
sys.path.insert(0, str(_BENCH.parent))

from bench.detection import TWIN_PAIRED, RecordingPaired, instrumented_run, twin_round  # noqa: E402
from model.data import load_movielens  # noqa: E402
from monitor.drift.judge import MODEL_UPDATE, WITHIN_VERSION, JudgeConfig  # noqa: E402
from monitor.drift.paired import PairedConfig, cutoff_from_benign  # noqa: E402
from monitor.tools.replay import EventFactory, serving_traffic  # noqa: E402
from bench.scenarios import DEFAULT_ROOT, build_scenario, load_models, train_scenario_models  # noqa: E402
from monitor.attention.stats import STATISTICS  # noqa: E402


def summarise(name: str, rounds, paired: RecordingPaired, at: int) -> np.ndarray:
    print(f"\n== {name}: {rounds[-1].events} events, change at event {at}, {len(rounds)} rounds")
    for kind in (MODEL_UPDATE, WITHIN_VERSION):
        results = [r for rd in rounds for r in rd.report.results if r.kind == kind and rd.events > at]
        if not results:
            continue
        by_stat = defaultdict(list)
        for r in results:
            by_stat[r.key.statistic].append(r.score)
        flagged = sum(r.flagged for r in results)
        print(f"  {kind}: {len(results)} windows judged after the change, {flagged} flagged; "
              "corrected JS per statistic, median / max over cohorts, layers and windows:")
        print("    " + "  ".join(f"{s}={np.median(by_stat[s]):.3f}/{max(by_stat[s]):.3f}" for s in STATISTICS if s in by_stat))
        drifting = sorted({(v.dimension, v.cohort) for rd in rounds for v in rd.report.cohorts
                           if v.kind == kind and v.drifting})
        print(f"    cohorts ever drifting ({kind}): {drifting if drifting else 'none'}")
        if kind == WITHIN_VERSION:
            per_cohort = defaultdict(float)
            for r in results:
                per_cohort[(r.key.dimension, r.key.cohort)] = max(per_cohort[(r.key.dimension, r.key.cohort)], r.score)
            print("    max score per cohort: " + ", ".join(f"{d}={c}:{v:.2f}" for (d, c), v in sorted(per_cohort.items())))
    results = [r for rd in rounds for r in rd.paired.results]
    if results:
        caused = sorted({(k.dimension, k.cohort) for rd in rounds for k in rd.paired.model_caused})
        frac = defaultdict(list)
        for r in results:
            frac[(r.key.dimension, r.key.cohort)].append(r.fraction_above)
        print(f"  paired: {len(results)} windows, {sum(r.flagged for r in results)} flagged; share of events with "
              f"JS > {results[0].cutoff} (tolerance {results[0].benign_fraction}) max per cohort: "
              + ", ".join(f"{c}:{max(v):.2f}" for (_, c), v in sorted(frac.items())))
        print(f"    cohorts ever model_caused: {caused if caused else 'none'}")
    js = np.concatenate(paired.all_js) if paired.all_js else np.zeros(0)
    if js.size:
        q = np.quantile(js, [0.5, 0.9, 0.95, 0.99])
        print(f"  per-event paired JS (cohort all, {js.size} pairs): median {q[0]:.3f}, p90 {q[1]:.3f}, "
              f"p95 {q[2]:.3f}, p99 {q[3]:.3f}, mean {js.mean():.3f}")
    return js


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--seed", type=int, default=7, help="traffic interleaving and event seed")
    parser.add_argument("--at", type=int, default=12_000, help="event where the update / shift starts")
    parser.add_argument("--after", type=int, default=6_000)
    parser.add_argument("--judge-every", type=int, default=500)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    data = load_movielens()
    t0 = time.perf_counter()
    versions = train_scenario_models(args.root, data=data)
    print(f"scenario models: {versions} [{time.perf_counter() - t0:.0f}s]")
    models = load_models(args.root, versions.values())
    benign_js = None
    for name, traffic in (("benign_update", "serving"), ("harmful_update", "serving"), ("cohort_shift", "serving"),
                          ("benign_update", "movielens time order")):
        t0 = time.perf_counter()
        scenario = build_scenario(name, versions, at=args.at)
        run = instrumented_run(args.root, seed=args.seed)
        source = serving_traffic(data, args.seed) if traffic == "serving" else data
        factory = EventFactory(source, {v: models[v] for _, v in scenario.versions}, scenario, seed=args.seed, batch=250)
        twins = []
        rounds = run.run(factory, args.at + args.after, judge_every=args.judge_every,
                         on_round=lambda r: twins.append(twin_round(run, r)))
        js = summarise(f"{name} ({traffic} traffic) [{time.perf_counter() - t0:.0f}s]", rounds,
                       run.pipeline.paired, args.at)
        cohorts = sorted({(v.dimension, v.cohort) for r in twins for v in r.report.cohorts
                          if v.kind == MODEL_UPDATE and v.drifting})
        within = sorted({(v.dimension, v.cohort) for r in twins for v in r.report.cohorts
                         if v.kind == WITHIN_VERSION and v.drifting})
        caused = sorted({(k.dimension, k.cohort) for r in twins for k in r.paired.model_caused})
        print(f"  with model_update at the within-version floor ({JudgeConfig().min_effect}, the pre-calibration "
              f"default): model_update drifting {cohorts or 'none'}; within_version drifting {within or 'none'}; "
              f"with paired cutoff {TWIN_PAIRED.event_js_cutoff}: model_caused {caused or 'none'}")
        if name == "benign_update" and traffic == "serving":
            benign_js = js
    if benign_js is not None and benign_js.size:
        print(f"\ncutoff_from_benign(benign per-event JS per layer, 0.1) = {cutoff_from_benign(benign_js, 0.1):.3f} "
              f"(default event_js_cutoff {PairedConfig().event_js_cutoff})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
