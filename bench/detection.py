"""Detection bench: which model updates does attnmon flag, per family of update, and how fast?

Every update replaces a ``base`` model (``bench/scenarios.py``) by a model of one update
family (``UPDATE_FAMILIES``): benign ones (a re-seed of the same recipe, a narrower model
of the same quality) and harmful ones (a context cut, a vocabulary misaligned with the
served catalogue, a job stopped after one epoch, a retrain on campaign-flooded logs).
All of them are trained, none hand-edited. Each update is replayed on its own traffic
seed through the in-process pipeline with the default ``JudgeConfig`` / ``PairedConfig``:
``--before`` events of the previous version (its baselines freeze), then ``--after``
events of the new one, judged every ``--judge-every`` events. Update *i* of every family
uses traffic seed 1000 + *i*, so families are compared on the same streams.

Traffic (``--traffic``): ``serving`` (default), MovieLens timelines interleaved into
stationary serving traffic (``monitor.tools.replay.serving_traffic``); ``time_order``,
MovieLens in its own bursty time order, each update starting at a seed-drawn point.

The same windows are judged four ways:

(a) attnmon, through its reports only: the model_update cohort verdict
    (``JudgeReport.cohorts``), the paired verdict (``PairedReport.model_caused``),
    the model_update item-narrowing verdict ("narrowed": ``JudgeReport.items``, the alert
    ``AttentionNarrowedToFewItems``), the served-recommendation verdict ("served": the
    items' ``served`` rows, the alert ``RecommendationsNarrowedToFewItems``), and "either":
    any of the four, what the agent alerts on;
(b) Evidently 0.7's default data-drift test (``Report([DataDriftPreset()])``): per
    cohort and judged window, reference = the previous version's last
    ``reference_events`` events of that cohort before the switch (its recent traffic,
    as the judge's update reference), current = the new version's events of that window; columns = the 7 statistics x layers (head-averaged); verdict = its
    dataset drift (share of drifted columns >= 0.5). Its per-column tests are computed
    with Evidently's own default-test selection and thresholds (a full Report costs
    ~1 s and hundreds of windows are judged); the equivalence is checked against full
    Reports on a sample and printed;
(c) naive per-head: per-head statistics of the new version vs the previous one on the
    same windows, KS p < 0.05 on any (statistic, layer, head), no multiple-testing
    control, no head matching.

The windows are those the judge reports as model_update results (cohort and round);
the per-event statistics for (b) and (c) are recomputed by the bench from the events it
sent (``bench/event_tape.py``). An update is *detected* by a method when it fires on
any cohort in any window of the update period. Delay: stream events from the update to
the first verdict (and seconds at 1,000 events/s), and events of the detecting cohort.
Prints figures, asserts nothing; the last line is one JSON object of the headline figures.

    python -m bench.detection                 # full run (trains missing models into --root first)
    python -m bench.detection --quick         # 2 updates per family, shorter streams
    python -m bench.detection --traffic time_order
    python -m bench.detection --families reseed item_burst item_burst_reseed   # the item rows

Traffic families (``TRAFFIC_FAMILIES``, kind "traffic"): no harmful model, the traffic narrows.
From the switch point one cohort's users all watch the same three titles
(``bench.scenarios.item_burst``), on one base model (``item_burst``) or while a re-seed
update is in flight (``item_burst_reseed``). Their rows: ``cohort`` = the burst cohort's
attention-mass-per-item verdict (narrowed; ``AttentionNarrowedToFewItems``), ``paired`` =
the paired comparison confirming a model-caused change (must not: the model did not cause
it), ``either`` = ``cohort``; ``narrowed`` (the update method), Evidently and the naive test
are not run ("-"). Every row also
counts ``items_flagged``: runs in which any item verdict of the judged version was raised
(a benign update must not raise one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

# `python bench/<name>.py` puts bench/ first on sys.path, where bench/model.py would shadow
# the `model` package; use the repository root instead (`python -m bench.<name>` needs no help).
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
sys.path.insert(0, str(_BENCH.parent))

from bench.event_tape import Tape, TapedFactory, VersionValues, measure_versions  # noqa: E402
from bench.scenarios import (  # noqa: E402
    BENIGN,
    DEFAULT_BURST,
    DEFAULT_ROOT,
    EVENT_PACED_JUDGE,
    HARMFUL,
    UPDATE_FAMILIES,
    Round,
    ScenarioModel,
    ScenarioRun,
    UpdateFamily,
    VIRAL_ITEMS,
    scenario_cohorts,
    train_family_model,
)
from model import checkpoint  # noqa: E402
from model.data import Interactions, load_movielens  # noqa: E402
from model.recipe import evaluate_version  # noqa: E402
from monitor.attention.registry import ServedModel  # noqa: E402
from monitor.attention.stats import STATISTICS  # noqa: E402
from monitor.drift.judge import MODEL_UPDATE, WITHIN_VERSION, Judge, JudgeConfig  # noqa: E402
from monitor.drift.paired import PairedComparison, PairedConfig  # noqa: E402
from monitor.stream.config import PipelineConfig  # noqa: E402
from monitor.tools.replay import EventFactory, ItemBurst, Scenario, serving_traffic, timeline_steps  # noqa: E402

log = logging.getLogger("bench.detection")

EVENTS_PER_SECOND = 1_000  # the rate delays are converted at
TRAFFIC_SEED_BASE = 1000  # update i of every family replays traffic seed TRAFFIC_SEED_BASE + i
TRAFFICS = ("serving", "time_order")
TRAFFIC = "traffic"  # the kind of a traffic family's row


@dataclasses.dataclass(frozen=True)
class TrafficFamily:
    """A traffic change on a base model (``reseed``: while a re-seed update is in flight)."""

    name: str
    reseed: bool
    simulates: str
    kind: str = TRAFFIC
    recipe: str = "base"


TRAFFIC_FAMILIES: tuple[TrafficFamily, ...] = (
    TrafficFamily("item_burst", False, "one cohort's users all watch the same 3 titles (traffic, one model)"),
    TrafficFamily("item_burst_reseed", True, "the same burst from the moment a re-seed update starts"),
)


# -- twin judges (used by bench/calibration.py): a second config fed the very same values ------------


class RecordingPaired(PairedComparison):
    """Keeps the per-event paired JS of the "all" cohort, and feeds a twin comparison the same pairs."""

    def __init__(self, config: PairedConfig | None = None, twin: PairedComparison | None = None) -> None:
        super().__init__(config)
        self.twin = twin
        self.all_js: list[np.ndarray] = []

    def observe(self, key, js, *args, **kwargs):
        if key.dimension == "all":
            self.all_js.append(np.asarray(js, dtype=np.float64).copy())
        if self.twin is not None:
            self.twin.observe(key, js, *args, **kwargs)
        return super().observe(key, js, *args, **kwargs)


class TwinJudge(Judge):
    """The pipeline's judge, also feeding a second judge (another config) the very same values."""

    def __init__(self, config: JudgeConfig | None, twin: Judge) -> None:
        super().__init__(config)
        self.twin = twin

    def observe_batch(self, *args, **kwargs):
        self.twin.observe_batch(*args, **kwargs)
        return super().observe_batch(*args, **kwargs)

    def start_update(self, *args, **kwargs):
        self.twin.start_update(*args, **kwargs)
        return super().start_update(*args, **kwargs)


# The judge as it was before calibration (model_update at the within-version floor 0.1), and the
# paired comparison at the cutoff cutoff_from_benign gives on a benign retrain (0.65, the default now).
TWIN_JUDGE = dataclasses.replace(EVENT_PACED_JUDGE, update_min_effect=None)
TWIN_PAIRED = PairedConfig(event_js_cutoff=0.65)


def instrumented_run(root: Path, *, judge_config: JudgeConfig | None = None, paired_config: PairedConfig | None = None,
                     twin_judge: JudgeConfig = TWIN_JUDGE, twin_paired: PairedConfig = TWIN_PAIRED,
                     seed: int = 0) -> ScenarioRun:
    """A scenario run whose judge and paired comparison also feed twins (``twin_round`` judges them)."""
    return ScenarioRun(root, judge=TwinJudge(judge_config or EVENT_PACED_JUDGE, Judge(twin_judge)),
                       paired=RecordingPaired(paired_config, PairedComparison(twin_paired)), seed=seed)


def twin_round(run: ScenarioRun, round_: Round) -> Round:
    """The twin judges' verdicts on the same windows, judged at the same moment."""
    now = round_.report.now
    return Round(round_.events, run.pipeline.judge.twin.judge(now), run.pipeline.paired.twin.judge(now))


# -- models --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FamilyModels:
    """The trained models of one recipe, with their test figures as the job reported them and as served."""

    recipe: str
    models: list[ScenarioModel]
    served_test: list[dict]  # the published checkpoint on the real test split (evaluate_version)

    @property
    def versions(self) -> list[str]:
        return [m.version for m in self.models]

    def mean(self, figure: str, served: bool = False) -> float:
        tests = self.served_test if served else [m.test for m in self.models]
        return float(np.mean([t[figure] for t in tests]))


def prepare_models(root: Path, data: Interactions, counts: dict[str, int]) -> dict[str, FamilyModels]:
    """Train (or reuse) ``counts[recipe]`` models per recipe, seeds 0.., and evaluate them as served."""
    out = {}
    for recipe, count in counts.items():
        models, served = [], []
        for seed in range(count):
            t0 = time.perf_counter()
            m = train_family_model(root, recipe, seed, data=data)
            served.append(evaluate_version(root / m.version, data).as_dict())
            models.append(m)
            print(f"  {m.label:<32} {m.version}  {'reused ' if m.reused else 'trained'} "
                  f"({m.train_seconds:.0f}s when trained, {m.epochs} epochs, best {m.best_epoch}; "
                  f"this run {time.perf_counter() - t0:.0f}s)  job test HR@10 {m.test['hr10']:.4f} "
                  f"NDCG@10 {m.test['ndcg10']:.4f}; served HR@10 {served[-1]['hr10']:.4f} "
                  f"NDCG@10 {served[-1]['ndcg10']:.4f}", flush=True)
        out[recipe] = FamilyModels(recipe, models, served)
    return out


def update_pairs(base: Sequence[str], new: Sequence[str], count: int, *, reseed: bool) -> list[tuple[str, str]]:
    """``count`` (previous, new) updates cycling through the models.

    A re-seed pairs distinct base models (ordered pairs); any other family pairs every
    base model with every new model before repeating a combination.
    """
    if reseed:
        combos = [(base[i], base[(i + step) % len(base)]) for step in range(1, len(base)) for i in range(len(base))]
    else:
        nb, nn = len(base), len(new)
        combos = [(base[i % nb], new[(i + i // nb) % nn]) for i in range(nb * nn)]
    if not combos:
        raise ValueError("need at least two base models for re-seed updates, one model otherwise")
    return [combos[i % len(combos)] for i in range(count)]


# -- one update, replayed ------------------------------------------------------------------------


@dataclasses.dataclass
class Replay:
    """A replayed update: attnmon's rounds, the tape position at each round, and what was sent."""

    previous: str
    new: str
    before: int
    rounds: list[Round]
    marks: list[int]
    tape: Tape


def traffic_source(data: Interactions, traffic: str, seed: int, events: int) -> tuple[Interactions, int]:
    """(timelines, first event index) of one update's stream."""
    if traffic == "serving":
        return serving_traffic(data, seed), 0
    if traffic == "time_order":  # the data's own order, from a seed-drawn point
        total = len(timeline_steps(data))
        return data, int(np.random.default_rng(seed).integers(0, max(1, total - events)))
    raise ValueError(f"unknown traffic {traffic!r}; known: {TRAFFICS}")


def replay_update(root: Path, data: Interactions, served: dict[str, ServedModel], previous: str, new: str, *,
                  before: int, after: int, judge_every: int, seed: int, traffic: str = "serving") -> Replay:
    source, offset = traffic_source(data, traffic, seed, before + after)
    scenario = Scenario(versions=((0, previous), (offset + before, new)))
    models = {v: served[v].checkpoint.model for v in (previous, new)}
    tape = Tape()
    factory = TapedFactory(EventFactory(source, models, scenario, seed=seed, batch=250, offset=offset), tape)
    run = ScenarioRun(root, seed=seed)
    marks: list[int] = []
    rounds = run.run(factory, before + after, judge_every=judge_every,  # type: ignore[arg-type]
                     on_round=lambda _: marks.append(len(tape)))
    return Replay(previous, new, before, rounds, marks, tape)


# -- the methods on the same windows ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Detection:
    events: int  # stream events since the update at the first verdict
    cohort_events: int  # events of the detecting cohort since the update


def _cohort_events(values: VersionValues, cohort: tuple[str, str], mark: int) -> int:
    """Events of ``cohort`` in ``values`` sent before tape position ``mark``."""
    return int(np.searchsorted(values.positions[values.members(*cohort)], mark))


def _first(values: VersionValues, since: int, mark: int, cohorts: list[tuple[str, str]]) -> Detection:
    return Detection(since, min(_cohort_events(values, c, mark) for c in cohorts))


def attnmon_detections(replay: Replay, new_values: VersionValues) -> dict[str, Detection | None]:
    """First model_update cohort verdict, paired model-caused verdict, model_update item
    verdict (attention) and served-recommendation verdict naming the new version; "either"
    is the earliest of them."""
    cohort = paired = narrowed = served = None
    for round_, mark in zip(replay.rounds, replay.marks, strict=True):
        since = round_.events - replay.before
        hits = [(v.dimension, v.cohort) for v in round_.report.cohorts
                if v.kind == MODEL_UPDATE and v.drifting and v.model_version == replay.new]
        if hits and cohort is None:
            cohort = _first(new_values, since, mark, hits)
        hits = [(k.dimension, k.cohort) for k in round_.paired.model_caused if k.new_version == replay.new]
        if hits and paired is None:
            paired = _first(new_values, since, mark, hits)
        raised = [i for i in round_.report.items
                  if i.kind == MODEL_UPDATE and i.drifting and i.key.model_version == replay.new]
        hits = sorted({(i.key.dimension, i.key.cohort) for i in raised if i.source == "attention"})
        if hits and narrowed is None:
            narrowed = _first(new_values, since, mark, hits)
        hits = sorted({(i.key.dimension, i.key.cohort) for i in raised if i.source == "served"})
        if hits and served is None:
            served = _first(new_values, since, mark, hits)
    return {"cohort": cohort, "paired": paired, "narrowed": narrowed, "served": served,
            "either": _earliest(cohort, paired, narrowed, served)}


def _earliest(*found: Detection | None) -> Detection | None:
    return min((d for d in found if d is not None), key=lambda d: (d.events, d.cohort_events), default=None)


@dataclasses.dataclass(frozen=True)
class Window:
    """One model_update window the judge reported: its round and cohort, and both versions' values."""

    round: int
    since: int  # stream events since the update at this round
    cohort: tuple[str, str]
    cohort_events: int  # new-version events of the cohort so far
    reference: VersionValues
    current: VersionValues


def _take(values: VersionValues, rows: np.ndarray) -> VersionValues:
    return VersionValues(values.positions[rows], values.averaged[rows], values.per_head[rows],
                         {d: labels[rows] for d, labels in values.cohorts.items()})


def judged_windows(replay: Replay, old: VersionValues, new: VersionValues,
                   reference_events: int) -> tuple[list[Window], int]:
    """Every model_update window the judge reported for the new version, and how many of them
    held another event count than the bench's own count of the same window (reported, not fatal:
    the judge may weigh or stratify its windows)."""
    since_judged: dict[tuple[str, str], int] = {}  # cohort -> tape position of its last judged window's end
    windows, mismatched = [], 0
    for index, (round_, mark) in enumerate(zip(replay.rounds, replay.marks, strict=True)):
        for result in round_.report.results:
            key = result.key
            if (result.kind != MODEL_UPDATE or key.model_version != replay.new or key.statistic != STATISTICS[0]
                    or getattr(key, "layer", 0) != 0):
                continue
            cohort = (key.dimension, key.cohort)
            members = new.members(*cohort)
            positions = new.positions[members]
            rows = members[(positions >= since_judged.get(cohort, 0)) & (positions < mark)]
            since_judged[cohort] = mark
            mismatched += len(rows) != result.samples
            # The judge's update reference is the previous version's recent traffic, frozen at the
            # switch: the other methods get that too (its last events of the cohort).
            reference = old.members(*cohort)[-reference_events:]
            if len(rows) == 0 or len(reference) == 0:  # the bench cannot rebuild this window: not compared
                continue
            windows.append(Window(index, round_.events - replay.before, cohort, _cohort_events(new, cohort, mark),
                                  _take(old, reference), _take(new, rows)))
    return windows, mismatched


def _columns(values: np.ndarray) -> dict[str, np.ndarray]:
    """[n, S, L] -> {"<statistic>_l<layer>": [n]}."""
    return {f"{s}_l{layer}": values[:, i, layer].astype(np.float64)
            for i, s in enumerate(STATISTICS) for layer in range(values.shape[2])}


def evidently_drift(ref: np.ndarray, cur: np.ndarray) -> tuple[bool, int]:
    """Evidently's default per-column tests and dataset-drift rule on [n, S, L] values: (drift, drifted columns)."""
    import pandas as pd
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    ref_cols, cur_cols = _columns(ref), _columns(cur)
    drifted = 0
    for name in ref_cols:
        r, c = pd.Series(ref_cols[name]), pd.Series(cur_cols[name])
        test = get_stattest(r, c, ColumnType.Numerical, None)
        drifted += bool(test(r, c, ColumnType.Numerical, None).drifted)
    return drifted / len(ref_cols) >= 0.5, drifted  # DataDriftPreset(drift_share=0.5)


def evidently_report_drift(ref: np.ndarray, cur: np.ndarray) -> tuple[bool, int]:
    """The same verdict from a full ``Report([DataDriftPreset()])`` (slow; used to check the fast path)."""
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    snapshot = Report([DataDriftPreset()]).run(current_data=pd.DataFrame(_columns(cur)),
                                               reference_data=pd.DataFrame(_columns(ref)))
    for metric in snapshot.dict()["metrics"]:
        if metric["metric_name"].startswith("DriftedColumnsCount"):
            count, share = metric["value"]["count"], metric["value"]["share"]
            return bool(share >= metric["config"]["drift_share"]), int(count)
    raise RuntimeError("no DriftedColumnsCount in the Evidently report")


def naive_per_head(ref: np.ndarray, cur: np.ndarray, alpha: float = 0.05) -> bool:
    """KS p < alpha on any (statistic, layer, head) of [n, S, L, H] per-head values; no correction.

    Versions with different head counts are compared on the heads both have.
    """
    _, s, layers, heads = ref.shape
    for i in range(s):
        for layer in range(min(layers, cur.shape[2])):
            for h in range(min(heads, cur.shape[3])):
                if scipy_stats.ks_2samp(ref[:, i, layer, h], cur[:, i, layer, h]).pvalue < alpha:
                    return True
    return False


def window_detections(windows: list[Window]) -> tuple[dict[str, Detection | None], int]:
    """First window (in round order) where Evidently / the naive test fire, and Evidently's most drifted columns."""
    fired: dict[str, list[Window]] = {"evidently": [], "naive": []}
    most_columns = 0
    for w in windows:
        layers = min(w.reference.averaged.shape[2], w.current.averaged.shape[2])
        drift, columns = evidently_drift(w.reference.averaged[..., :layers], w.current.averaged[..., :layers])
        most_columns = max(most_columns, columns)
        if drift:
            fired["evidently"].append(w)
        if naive_per_head(w.reference.per_head, w.current.per_head):
            fired["naive"].append(w)
    out: dict[str, Detection | None] = {}
    for method, hits in fired.items():
        first_round = min((w.round for w in hits), default=None)
        hits = [w for w in hits if w.round == first_round]
        out[method] = (Detection(hits[0].since, min(w.cohort_events for w in hits)) if hits else None)
    return out, most_columns


METHODS = ("cohort", "paired", "narrowed", "served", "either", "evidently", "naive")
METHOD_NAMES = {
    "cohort": "attnmon model_update cohort verdict",
    "paired": "attnmon paired model-caused verdict",
    "narrowed": "attnmon model_update item-narrowing verdict (AttentionNarrowedToFewItems)",
    "served": "attnmon model_update served-recommendation verdict (RecommendationsNarrowedToFewItems)",
    "either": "attnmon any of the four (what the agent alerts on)",
    "evidently": "Evidently DataDriftPreset per cohort window",
    "naive": "naive per-head KS p<.05, uncorrected",
}


@dataclasses.dataclass
class Outcome:
    family: str
    kind: str
    previous: str
    new: str
    seed: int
    detections: dict[str, Detection | None]
    detail: dict


def judge_update(family: UpdateFamily, replay: Replay, served: dict[str, ServedModel], seed: int,
                 reference_events: int) -> Outcome:
    values = measure_versions(replay.tape, served, scenario_cohorts(), PipelineConfig().stats)
    old, new = values[replay.previous], values[replay.new]
    detections = attnmon_detections(replay, new)
    windows, mismatched = judged_windows(replay, old, new, reference_events)
    others, evidently_columns = window_detections(windows)
    detections.update(others)
    max_score: dict[str, float] = {}
    within_raised: set = set()
    items_raised: set = set()
    paired_share: list[float] = []
    agreements: list[float] = []
    served_all: list[float] = []  # the "all" cohort's paired served-list ratio, round by round
    served_any: list[float] = []
    for round_ in replay.rounds:
        for r in round_.report.results:
            if r.kind == MODEL_UPDATE and r.key.model_version == replay.new:
                max_score[r.key.statistic] = max(max_score.get(r.key.statistic, 0.0), r.score)
        within_raised |= {(v.model_version[-6:], v.dimension, v.cohort) for v in round_.report.cohorts
                          if v.kind == WITHIN_VERSION and v.drifting}
        items_raised |= {(i.kind, i.key.dimension, i.key.cohort, i.layer) for i in round_.report.items
                         if i.drifting and i.key.model_version == replay.new}
        paired_share += [r.fraction_above for r in round_.paired.results if r.key.dimension == "all"]
        agreements += [r.agreement for r in round_.paired.results if r.agreement is not None]
        served_all += [r.served_ratio for r in round_.paired.results
                       if r.served_ratio is not None and r.key.dimension == "all"]
        served_any += [r.served_ratio for r in round_.paired.results if r.served_ratio is not None]
    detail = {
        "windows": len(windows),
        "windows_count_mismatch": mismatched,
        "max_score": max_score,
        "within_raised": sorted(within_raised),
        "items_raised": sorted(items_raised),
        "paired_share_all_max": max(paired_share, default=float("nan")),
        # lowest per-event agreement any cohort showed (monitor.drift.agreement; NaN: never judged)
        "paired_agreement_min": min(agreements, default=float("nan")),
        # what each version would serve on the same events (monitor.drift.served_pairs): the new lists'
        # concentration over the previous lists', cohort "all" at the last round, and the largest of any cohort
        "paired_served_ratio_all": served_all[-1] if served_all else float("nan"),
        "paired_served_ratio_max": max(served_any, default=float("nan")),
        "evidently_columns_max": evidently_columns,
        "windows_sample": windows[:1] + [w for w in windows if w.cohort == ("platform", "android")][:1],
    }
    return Outcome(family.name, family.kind, replay.previous, replay.new, seed, detections, detail)


# -- a traffic change ----------------------------------------------------------------------------------


def replay_traffic(root: Path, data: Interactions, served: dict[str, ServedModel], family: TrafficFamily,
                   previous: str, new: str, *, before: int, after: int, judge_every: int, seed: int) -> Outcome:
    """One item burst from event ``before`` on (and the re-seed update there, for a reseed family):
    attnmon's first item verdict for the burst cohort and first paired model-caused verdict."""
    burst = ItemBurst(DEFAULT_BURST["field"], DEFAULT_BURST["value"], VIRAL_ITEMS, before, DEFAULT_BURST["share"])
    versions = ((0, previous), (before, new)) if family.reseed else ((0, previous),)
    models = {v: served[v].checkpoint.model for _, v in versions}
    factory = EventFactory(serving_traffic(data, seed), models, Scenario(versions, burst=burst), seed=seed,
                           batch=250, recommend=False)
    run = ScenarioRun(root, seed=seed)
    judged = new if family.reseed else previous
    cohort = paired = None
    cohort_events = 0  # the burst cohort's events judged since the burst
    items_raised: set = set()
    kinds: set = set()
    for round_ in run.run(factory, before + after, judge_every=judge_every):
        since = round_.events - before
        mine = [i for i in round_.report.items if (i.key.dimension, i.key.cohort) == (burst.field, burst.value)
                and i.key.model_version == judged]
        cohort_events += sum(i.samples for i in mine if i.layer == 0) if since > 0 else 0
        items_raised |= {(i.kind, i.key.dimension, i.key.cohort, i.layer) for i in round_.report.items
                         if i.drifting and i.key.model_version == judged}
        if since > 0 and cohort is None and any(i.drifting for i in mine):
            cohort = Detection(since, cohort_events)
            kinds |= {i.kind for i in mine if i.drifting}
        if family.reseed and paired is None and any(k.new_version == new for k in round_.paired.model_caused):
            paired = Detection(max(since, 0), cohort_events)
    run.pipeline.close()
    detail = {"items_raised": sorted(items_raised), "verdict_kinds": sorted(kinds), "within_raised": [],
              "windows": 0, "windows_count_mismatch": 0, "max_score": {}, "paired_share_all_max": float("nan"),
              "evidently_columns_max": 0, "windows_sample": []}
    return Outcome(family.name, family.kind, previous, new, seed, {"cohort": cohort, "paired": paired,
                                                                    "either": cohort}, detail)


# -- the report -------------------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def family_figures(family: UpdateFamily | TrafficFamily, outcomes: list[Outcome], models: FamilyModels) -> dict:
    """The headline figures of one family (the JSON line's entry)."""
    n = len(outcomes)
    figures: dict = {"kind": family.kind, "updates": n, "models": len(models.models), "recipe": family.recipe,
                     "simulates": family.simulates,
                     "items_flagged": sum(bool(o.detail["items_raised"]) for o in outcomes)}
    for method in METHODS:
        if any(method not in o.detections for o in outcomes):  # not run for this family
            figures[f"{method}_flagged"] = figures[f"{method}_rate"] = figures[f"{method}_median_delay_events"] = None
            continue
        hits = [o.detections[method] for o in outcomes if o.detections[method] is not None]
        figures[f"{method}_flagged"] = len(hits)
        figures[f"{method}_rate"] = round(len(hits) / n, 3) if n else None
        delay = _median([d.events for d in hits])
        figures[f"{method}_median_delay_events"] = delay
    either = [o.detections["either"] for o in outcomes if o.detections["either"] is not None]
    delay = _median([d.events for d in either])
    figures["median_delay_events"] = delay
    figures["median_delay_s"] = None if delay is None else round(delay / EVENTS_PER_SECOND, 2)
    figures["median_delay_cohort_events"] = _median([d.cohort_events for d in either])
    ratios = [o.detail["paired_served_ratio_all"] for o in outcomes if np.isfinite(o.detail.get("paired_served_ratio_all", np.nan))]
    figures["paired_served_ratio_all"] = [round(min(ratios), 2), round(max(ratios), 2)] if ratios else None
    for served in (False, True):
        for figure in ("hr10", "ndcg10"):
            figures[("served_" if served else "") + figure] = round(models.mean(figure, served), 4)
    return figures


def table(figures: dict[str, dict]) -> str:
    """One row per family: flagged share per method (TPR for harmful, FPR for benign) and the delay."""
    head = (f"{'family':<17} {'kind':<8} {'upd':>3}  " + "  ".join(f"{m:>11}" for m in METHODS)
            + f"  {'delay events':>12} {'s@1k/s':>7} {'cohort ev':>9}  {'items':>6}")
    lines = [head, "-" * len(head)]
    for name, f in figures.items():
        cells = "  ".join(f"{'-':>11}" if f[f"{m}_flagged"] is None else
                          f"{f[f'{m}_flagged']:>3}/{f['updates']:<2} {100 * (f[f'{m}_rate'] or 0):>4.0f}%"
                          for m in METHODS)
        delay = "-" if f["median_delay_events"] is None else f"{f['median_delay_events']:.0f}"
        seconds = "-" if f["median_delay_s"] is None else f"{f['median_delay_s']:.1f}"
        cohort = "-" if f["median_delay_cohort_events"] is None else f"{f['median_delay_cohort_events']:.0f}"
        lines.append(f"{name:<17} {f['kind']:<8} {f['updates']:>3}  {cells}  {delay:>12} {seconds:>7} {cohort:>9}"
                     f"  {f['items_flagged']:>3}/{f['updates']:<2}")
    return "\n".join(lines)


def totals(figures: dict[str, dict]) -> dict[str, dict]:
    """Pooled rates per kind: TPR over the harmful families, FPR over the benign ones, and the
    traffic families' item verdict (TPR) and paired confirmation (which must stay 0)."""
    out = {}
    for kind in (HARMFUL, BENIGN, TRAFFIC):
        rows = [f for f in figures.values() if f["kind"] == kind]
        updates = sum(f["updates"] for f in rows)
        out[kind] = {"updates": updates, **{
            m: round(sum(f[f"{m}_flagged"] for f in rows) / updates, 3)
            if updates and all(f[f"{m}_flagged"] is not None for f in rows) else None for m in METHODS}}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="scenario model root (cache)")
    parser.add_argument("--base-models", type=int, default=3, help="base models (seeds 0..n-1), the previous versions")
    parser.add_argument("--models", type=int, default=3, help="trained models per update family (seeds 0..n-1)")
    parser.add_argument("--updates", type=int, default=10, help="updates per family")
    parser.add_argument("--families", nargs="+", default=[f.name for f in UPDATE_FAMILIES + TRAFFIC_FAMILIES],
                        choices=[f.name for f in UPDATE_FAMILIES + TRAFFIC_FAMILIES])
    parser.add_argument("--traffic", choices=TRAFFICS, default="serving")
    parser.add_argument("--before", type=int, default=12_000, help="events of the previous version")
    parser.add_argument("--after", type=int, default=6_000, help="events of the new version")
    parser.add_argument("--judge-every", type=int, default=500, help="events between judge rounds")
    parser.add_argument("--check-evidently", type=int, default=12, help="windows re-judged by a full Evidently Report")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 updates per family, 2 base models, 1 model per family, shorter streams")
    args = parser.parse_args(argv)
    if args.quick:
        args.base_models, args.models, args.updates, args.before, args.after = 2, 1, 2, 8_000, 3_000
        args.check_evidently = min(args.check_evidently, 4)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore")
    families: list[UpdateFamily | TrafficFamily] = [f for f in UPDATE_FAMILIES + TRAFFIC_FAMILIES
                                                    if f.name in args.families]

    data = load_movielens()
    started = time.perf_counter()
    print(f"scenario models under {args.root} (trained once, then reused); test split, full ranking:")
    counts = {"base": args.base_models}
    for f in families:
        counts.setdefault(f.recipe, args.models)
    models = prepare_models(args.root, data, counts)
    training_s = time.perf_counter() - started
    served = {v: ServedModel.from_checkpoint(checkpoint.load(args.root / v))
              for fm in models.values() for v in fm.versions}

    reference_events = JudgeConfig().reference_events
    base = models["base"].versions
    outcomes: dict[str, list[Outcome]] = defaultdict(list)
    started = time.perf_counter()
    for family in families:
        updates = update_pairs(base, models[family.recipe].versions, args.updates, reseed=family.recipe == "base")
        for index, (previous, new) in enumerate(updates):
            seed = TRAFFIC_SEED_BASE + index
            t0 = time.perf_counter()
            if isinstance(family, TrafficFamily):
                outcome = replay_traffic(args.root, data, served, family, previous, new, before=args.before,
                                         after=args.after, judge_every=args.judge_every, seed=seed)
                outcomes[family.name].append(outcome)
                print(f"  {family.name:<16} {previous[-6:]}" + (f" -> {new[-6:]}" if family.reseed else "")
                      + f" seed {seed}: " + " ".join(
                          f"{m}={d.events if d else '-'}" for m, d in outcome.detections.items())
                      + f"; item verdicts {outcome.detail['items_raised']} [{time.perf_counter() - t0:.0f}s]",
                      flush=True)
                continue
            replay = replay_update(args.root, data, served, previous, new, before=args.before, after=args.after,
                                   judge_every=args.judge_every, seed=seed, traffic=args.traffic)
            outcome = judge_update(family, replay, served, seed, reference_events)
            outcomes[family.name].append(outcome)
            d = outcome.detail
            print(f"  {family.name:<16} {previous[-6:]} -> {new[-6:]} seed {seed}: "
                  + " ".join(f"{m}={outcome.detections[m].events if outcome.detections[m] else '-'}" for m in METHODS)
                  + f"; windows {d['windows']} (count mismatches {d['windows_count_mismatch']}), max update score "
                  + " ".join(f"{s[:6]}={v:.2f}" for s, v in sorted(d["max_score"].items()))
                  + f", within-version raised {len(d['within_raised'])}, item verdicts {d['items_raised']}"
                  + f", paired share>cut (all) max {d['paired_share_all_max']:.2f}"
                  + f", agreement min {d['paired_agreement_min']:.2f}"
                  + f", served ratio (all) {d['paired_served_ratio_all']:.2f} (max {d['paired_served_ratio_max']:.2f})"
                  + f" [{time.perf_counter() - t0:.0f}s]", flush=True)
    replay_s = time.perf_counter() - started

    checked = agree = 0
    t0 = time.perf_counter()
    for w in (w for family in outcomes.values() for o in family for w in o.detail["windows_sample"]):
        if checked >= args.check_evidently:
            break
        ref, cur = w.reference.averaged, w.current.averaged
        checked += 1
        agree += evidently_drift(ref, cur) == evidently_report_drift(ref, cur)
    check_s = time.perf_counter() - t0

    figures = {f.name: family_figures(f, outcomes[f.name], models[f.recipe]) for f in families}
    print()
    print(f"Traffic {args.traffic}; {args.before} events before and {args.after} after each update, judged every "
          f"{args.judge_every}; default JudgeConfig / PairedConfig; base models {args.base_models}, "
          f"{args.models} per family. Flagged share: TPR for harmful families, FPR for benign ones. Delay: median "
          f"stream events from the update to attnmon's first verdict (either), seconds at {EVENTS_PER_SECOND:,} "
          f"events/s, and events of the detecting cohort.")
    print(table(figures))
    pooled = totals(figures)
    for kind, row in pooled.items():
        print(f"pooled {kind} ({row['updates']} updates): " + ", ".join(
            f"{m} {100 * row[m]:.0f}%" for m in METHODS if row[m] is not None))
    print("methods: " + "; ".join(f"{m} = {METHOD_NAMES[m]}" for m in METHODS))
    print("models (mean over a family's models; job = as its training job reported, served = the published "
          "checkpoint on the real test split):")
    for name, fm in models.items():
        print(f"  {name:<17} {len(fm.models)} models  job HR@10 {fm.mean('hr10'):.4f} NDCG@10 {fm.mean('ndcg10'):.4f}"
              f"  served HR@10 {fm.mean('hr10', True):.4f} NDCG@10 {fm.mean('ndcg10', True):.4f}"
              f"  (served NDCG@10 per model: {', '.join(format(t['ndcg10'], '.4f') for t in fm.served_test)})")
    all_outcomes = [o for family in outcomes.values() for o in family]
    raised = [o for o in all_outcomes if o.detail["within_raised"]]
    mismatched = sum(o.detail["windows_count_mismatch"] for o in all_outcomes)
    print(f"within_version verdicts (no traffic drift injected) raised in {len(raised)}/{len(all_outcomes)} runs; "
          f"windows whose judge count differed from the bench's: {mismatched}")
    print(f"Evidently fast path vs full Report([DataDriftPreset()]): {agree}/{checked} windows identical "
          f"(verdict and drifted-column count) [{check_s:.0f}s]")
    print(f"time: models {training_s:.0f}s, replay + judging {replay_s:.0f}s")
    print(json.dumps({
        "families": figures,
        "pooled": pooled,
        "traffic": args.traffic,
        "before": args.before, "after": args.after, "judge_every": args.judge_every,
        "quick": args.quick,
        "evidently_check": {"identical": agree, "checked": checked},
        "seconds": {"models": round(training_s), "replay": round(replay_s)},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
