"""Paired comparison on real updates: per-event distances, the cutoff, and how often updates are confirmed.

Replays model updates of the scenario models (``bench/scenarios.py``) through the
in-process pipeline -- ``--before`` events of the previous version, then ``--after``
events of the new one, judged every ``--judge-every`` events -- and records every pair
the pipeline folds (per-event JS per layer, each version on its own window, over the
union of positions; ``monitor/stream/updates.py``). The same pairs feed one
``PairedComparison`` per candidate cutoff, so a replay answers for every cutoff at once:
is the update *confirmed* (a ``model_caused`` verdict on any cohort and layer)?

Calibration and measurement are kept apart: the cutoff is calibrated on the *calibration*
updates -- every pair of the first ``--calibration-models`` base seeds, on traffic seed
``--calibration-seed`` -- as the largest, over pairs, of ``cutoff_from_benign`` of the pair
(itself the largest over layers); the rates are measured on every ordered pair of base
seeds (benign re-seeds, each on ``--traffic-seeds`` other interleavings; pairs with a base
seed outside the calibration set are reported apart: they test a re-seed the calibration
never saw) and on base -> context-cut pairs (harmful), each replay on its own traffic seed.
Figures for docs/drift.md, "Paired comparison"; asserts nothing.

    python -m bench.paired --root var/models [--traffic-seeds 3] [--cutoffs 0.65 0.7 0.75 0.8]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.scenarios import DEFAULT_ROOT, ScenarioRun, find_published, load_models
from model.data import load_movielens
from monitor.drift.paired import PairCohort, PairedComparison, PairedConfig, PairedReport, cutoff_from_benign
from monitor.tools.replay import EventFactory, Scenario, serving_traffic


class FanoutPaired(PairedComparison):
    """The pipeline's paired comparison, also feeding one twin per candidate cutoff and
    keeping the per-event JS [P, layers] of cohort ``all``."""

    def __init__(self, config: PairedConfig, cutoffs: Sequence[float]) -> None:
        super().__init__(config)
        self.twins = {c: PairedComparison(dataclasses.replace(config, event_js_cutoff=c)) for c in cutoffs}
        self.all_js: list[np.ndarray] = []
        self.reports: dict[float, list[PairedReport]] = {c: [] for c in cutoffs}

    def observe(self, cohort: PairCohort, js, overlap, users=None) -> str:
        if cohort.dimension == "all":
            self.all_js.append(np.asarray(js, dtype=np.float64).copy())
        for twin in self.twins.values():
            twin.observe(cohort, js, overlap, users)
        return super().observe(cohort, js, overlap, users)

    def judge(self, now: float) -> PairedReport:
        for cutoff, twin in self.twins.items():
            self.reports[cutoff].append(twin.judge(now))
        return super().judge(now)


@dataclasses.dataclass
class Replay:
    kind: str  # "calibration", "benign" or "harmful"
    previous: str
    new: str
    seed: int
    js: np.ndarray  # [pairs of cohort all, layers]
    confirmed_after: dict[float, int | None]  # cutoff -> events since the update at the first verdict
    windows: dict[float, tuple[int, int]]  # cutoff -> (series windows judged, flagged)
    effective_users: list[float]  # per judged window of cohort all
    pairs: list[int]


def replay(root: Path, data, models: dict, previous: str, new: str, *, kind: str, seed: int, before: int,
           after: int, judge_every: int, cutoffs: Sequence[float], config: PairedConfig) -> Replay:
    paired = FanoutPaired(config, cutoffs)
    run = ScenarioRun(root, paired=paired, seed=seed)
    factory = EventFactory(serving_traffic(data, seed), {v: models[v] for v in (previous, new)},
                           Scenario(versions=((0, previous), (before, new))), seed=seed, batch=250)
    rounds = run.run(factory, before + after, judge_every=judge_every)
    confirmed: dict[float, int | None] = {}
    windows: dict[float, tuple[int, int]] = {}
    for cutoff, reports in paired.reports.items():
        first = next((r.events - before for r, rep in zip(rounds, reports, strict=True) if rep.model_caused), None)
        confirmed[cutoff] = first
        judged = [res for rep in reports for res in rep.results]
        windows[cutoff] = (len(judged), sum(res.flagged for res in judged))
    mine = [res for r in rounds for res in r.paired.results if res.key.dimension == "all" and res.key.layer == 0]
    js = np.concatenate(paired.all_js) if paired.all_js else np.zeros((0, 2))
    return Replay(kind, previous, new, seed, js, confirmed, windows,
                  [res.effective_users for res in mine], [res.pairs for res in mine])


def _quantiles(js: np.ndarray) -> str:
    return " | ".join(
        f"layer {layer}: median {np.median(js[:, layer]):.3f} p90 {np.quantile(js[:, layer], 0.9):.3f} "
        f"p95 {np.quantile(js[:, layer], 0.95):.3f}" for layer in range(js.shape[1]))


def per_pair_cutoff(js: np.ndarray) -> float:
    """``cutoff_from_benign`` of one benign update's pairs: the largest over its layers."""
    return cutoff_from_benign(js)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--before", type=int, default=1_000, help="events of the previous version")
    parser.add_argument("--after", type=int, default=6_000, help="events of the new version")
    parser.add_argument("--judge-every", type=int, default=500)
    parser.add_argument("--calibration-seed", type=int, default=7, help="traffic of the calibration replays")
    parser.add_argument("--calibration-models", type=int, default=3,
                        help="base seeds whose pairs calibrate the cutoff (the others are held out)")
    parser.add_argument("--traffic-seeds", type=int, default=1, help="replays of each benign pair, each on its own traffic")
    parser.add_argument("--harmful-updates", type=int, default=10)
    parser.add_argument("--cutoffs", type=float, nargs="*", default=[0.65, 0.7, 0.75, 0.8])
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    data = load_movielens()
    n_items = data.catalog.n_items
    family = {f: [v for s in range(10) if (v := find_published(args.root, f, s, n_items=n_items))]
              for f in ("base", "harmful")}
    base, harmful = family["base"], family["harmful"]
    print(f"models under {args.root}: {len(base)} base seeds, {len(harmful)} context-cut seeds", flush=True)
    if len(base) < 2 or not harmful:
        print("need at least two base seeds and one harmful seed (python -m bench.scenarios)")
        return 1
    models = load_models(args.root, base + harmful)
    config = PairedConfig()
    cutoffs = sorted(set(args.cutoffs) | {config.event_js_cutoff})
    calibrating = base[: args.calibration_models]
    plan = [("calibration", p, n, args.calibration_seed) for p, n in itertools.combinations(calibrating, 2)]
    benign = [pair for pair in itertools.permutations(base, 2) for _ in range(args.traffic_seeds)]
    plan += [("benign", p, n, 1000 + i) for i, (p, n) in enumerate(benign)]
    bad = [(base[i % len(base)], harmful[(i + i // len(base)) % len(harmful)]) for i in range(args.harmful_updates)]
    plan += [("harmful", p, n, 2000 + i) for i, (p, n) in enumerate(bad)]
    replays: list[Replay] = []
    for kind, previous, new, seed in plan:
        t0 = time.perf_counter()
        r = replay(args.root, data, models, previous, new, kind=kind, seed=seed, before=args.before,
                   after=args.after, judge_every=args.judge_every, cutoffs=cutoffs, config=config)
        replays.append(r)
        print(f"  {kind:<11} {previous[-6:]} -> {new[-6:]} seed {seed}: {r.js.shape[0]} pairs (all); "
              f"{_quantiles(r.js)}; own cutoff {per_pair_cutoff(r.js):.3f}; confirmed after "
              + " ".join(f"{c}:{r.confirmed_after[c] if r.confirmed_after[c] is not None else '-'}" for c in cutoffs)
              + f"; n_eff/pairs per window (all, layer 0) {np.median(r.effective_users):.0f}/{np.median(r.pairs):.0f}"
              f" [{time.perf_counter() - t0:.0f}s]", flush=True)

    calibration = [r for r in replays if r.kind == "calibration"]
    own = [per_pair_cutoff(r.js) for r in calibration]
    print(f"\ncalibration: {len(calibration)} benign re-seed pairs of {len(calibrating)} base seeds, traffic seed "
          f"{args.calibration_seed}; cutoff_from_benign per pair (largest layer) "
          + ", ".join(f"{r.previous[-6:]}/{r.new[-6:]} {c:.3f}" for r, c in zip(calibration, own))
          + f"; the largest: {max(own):.3f} (default event_js_cutoff {config.event_js_cutoff})")
    held_out = set(base) - set(calibrating)
    groups = {"benign": [r for r in replays if r.kind == "benign"],
              "benign, calibration models": [r for r in replays if r.kind == "benign" and not {r.previous, r.new} & held_out],
              "benign, a held-out model": [r for r in replays if r.kind == "benign" and {r.previous, r.new} & held_out],
              "harmful": [r for r in replays if r.kind == "harmful"]}
    for name in ("benign", "harmful"):
        js = np.concatenate([r.js for r in groups[name]])
        print(f"{name} ({js.shape[0]} pairs): {_quantiles(js)}")
        print("  share above cutoff, per layer (pooled; largest replay): " + "; ".join(
            f"{c}: " + " / ".join(f"{(js[:, layer] > c).mean():.3f}" for layer in range(js.shape[1]))
            + " (" + " / ".join(f"{max((r.js[:, layer] > c).mean() for r in groups[name]):.3f}"
                                for layer in range(js.shape[1])) + ")"
            for c in cutoffs))
    print(f"\n{'cutoff':>7} {'updates':<28} {'confirmed':>14} {'windows flagged':>18} {'median events to verdict':>25}")
    for c in cutoffs:
        for name, rows in groups.items():
            if not rows:
                continue
            hits = sum(r.confirmed_after[c] is not None for r in rows)
            judged = sum(r.windows[c][0] for r in rows)
            flagged = sum(r.windows[c][1] for r in rows)
            delays = [r.confirmed_after[c] for r in rows if r.confirmed_after[c] is not None]
            print(f"{c:>7} {name:<28} {hits:>5}/{len(rows):<3} {hits / len(rows):>4.0%} "
                  f"{flagged:>6}/{judged:<5} {flagged / max(judged, 1):>5.1%} "
                  f"{(f'{np.median(delays):.0f}' if delays else '-'):>25}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
