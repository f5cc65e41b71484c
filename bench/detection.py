"""Detection bench: are harmful model updates told from benign retrains, and how fast?

Benign updates are a base-family model replaced by the same recipe at another seed;
harmful ones replace it by the context-cut family (``bench/scenarios.py``). Every
update is replayed on its own interleaving of the traffic (``serving_traffic``, its
own event seed) through the in-process pipeline with the default ``JudgeConfig``
(event-paced: ``EVENT_PACED_JUDGE``) / ``PairedConfig``: ``--before`` events of the previous version (its baselines freeze),
then ``--after`` events of the new one, judged every ``--judge-every`` events.

The same windows are then judged three ways:

(a) attnmon: a model_update cohort verdict (BH across the round, effect floor,
    hysteresis), and separately a paired ``model_caused`` verdict; the agent
    alerts on either, so "either (defaults)" is its figure. The same values also
    feed a twin judge at the pre-calibration model_update floor (0.1) and a twin
    paired comparison at the cutoff ``cutoff_from_benign`` gives (0.65), so the
    table shows what the calibration changed;
(b) Evidently 0.7's default data-drift test (``Report([DataDriftPreset()])``): per
    cohort and judged window, reference = the previous version's baseline-period
    per-event statistics of that cohort (exactly the events of the judge's frozen
    baseline), current = the new version's events of that window (exactly the
    judge's window); columns = the 7 statistics x 2 layers the judge sees (head-
    averaged); verdict = its dataset drift (share of drifted columns >= 0.5). Its
    per-column tests are computed with Evidently's own default-test selection and
    thresholds (a full Report costs ~1 s and hundreds of windows are judged); the
    equivalence is checked against full Reports on a sample and printed;
(c) naive per-head: per-head statistics of the new version vs the previous one on
    the same windows, KS p < 0.05 on any (statistic, layer, head), no multiple-testing
    control, no head matching.

An update is *detected* by a method when it fires on any cohort in any window of
the update period (a model_update window exists while the new version's own baseline
collects). Delay: events of the detecting cohort from the update to the first verdict.
Prints figures, asserts nothing.

    python bench/detection.py                # full run (trains/reuses models in var/models)
    python bench/detection.py --quick        # 2 + 2 updates, shorter streams
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

# `python bench/<name>.py` puts bench/ first on sys.path, where bench/model.py would shadow
# the `model` package; use the repository root instead (`python -m bench.<name>` needs no help).
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
sys.path.insert(0, str(_BENCH.parent))

from model.data import load_movielens  # noqa: E402
from monitor.drift.cohorts import CohortAssigner  # noqa: E402
from monitor.drift.judge import MODEL_UPDATE, WITHIN_VERSION, Judge, JudgeConfig  # noqa: E402
from monitor.drift.paired import PairedComparison, PairedConfig  # noqa: E402
from monitor.stream.pipeline import Pipeline  # noqa: E402
from monitor.attention.recompute import collect  # noqa: E402
from monitor.tools.replay import EventFactory, Scenario, serving_traffic  # noqa: E402
from bench.scenarios import (  # noqa: E402
    DEFAULT_ROOT,
    EVENT_PACED_JUDGE,
    Round,
    ScenarioRun,
    load_models,
    scenario_cohorts,
    train_family_model,
)
from monitor.attention.stats import STATISTICS, compute  # noqa: E402

log = logging.getLogger("bench.detection")


# -- instrumentation: the per-event values behind every window ---------------------------------


class RecordingPipeline(Pipeline):
    """The agent's pipeline, also keeping each folded batch's per-event statistics (and per-head ones)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[dict] = []  # {version, avg [B,S,L], heads [B,S,L,H], codes [B,D]}

    def _statistics(self, served, passes):
        avg, heads = result = super()._statistics(served, passes)  # heads: None unless configured
        if heads is None:  # per-head values are not configured: compute them here, for the naive judge
            per_head = dataclasses.replace(self.config.stats, per_head=True)
            heads = np.empty((*avg.shape, served.checkpoint.config.heads), np.float32)
            for chunk in collect(passes):  # the same passes again: a finished one returns its rows
                heads[chunk.rows] = compute(chunk.weights, chunk.lengths, chunk.item_index, served.genre_matrix, per_head)
        self.batches.append({"version": served.version, "avg": avg, "heads": heads})
        return result


class RecordingAssigner(CohortAssigner):
    """Hands each batch's cohort codes to the pipeline's record (assign follows _statistics in Pipeline._finish)."""

    pipeline: RecordingPipeline

    def assign(self, contexts, lengths):
        codes = super().assign(contexts, lengths)
        self.pipeline.batches[-1]["codes"] = codes
        return codes


class RecordingPaired(PairedComparison):
    """Keeps the per-event paired JS of the "all" cohort, and feeds a twin comparison the same pairs."""

    def __init__(self, config: PairedConfig | None = None, twin: PairedComparison | None = None) -> None:
        super().__init__(config)
        self.twin = twin
        self.all_js: list[np.ndarray] = []

    def observe(self, key, js, overlap, users=None):
        if key.dimension == "all":
            self.all_js.append(np.asarray(js, dtype=np.float64).copy())
        if self.twin is not None:
            self.twin.observe(key, js, overlap, users)
        return super().observe(key, js, overlap, users)


class TwinJudge(Judge):
    """The pipeline's judge, also feeding a second judge (another config) the very same values."""

    def __init__(self, config: JudgeConfig | None, twin: Judge) -> None:
        super().__init__(config)
        self.twin = twin

    def observe_batch(self, *args, **kwargs):
        self.twin.observe_batch(*args, **kwargs)
        return super().observe_batch(*args, **kwargs)

    def start_update(self, new_version, previous_version, at):
        self.twin.start_update(new_version, previous_version, at)
        return super().start_update(new_version, previous_version, at)


# Judged beside the defaults on the same values (docs/drift.md, "Calibration on real retrains"):
# the judge as it was before calibration (model_update at the within-version floor 0.1), and the
# paired comparison at the cutoff cutoff_from_benign gives on a benign retrain (0.65, default 0.5).
TWIN_JUDGE = dataclasses.replace(EVENT_PACED_JUDGE, update_min_effect=None)
TWIN_PAIRED = PairedConfig(event_js_cutoff=0.65)


def instrumented_run(root: Path, *, judge_config: JudgeConfig | None = None, paired_config: PairedConfig | None = None,
                     twin_judge: JudgeConfig = TWIN_JUDGE, twin_paired: PairedConfig = TWIN_PAIRED,
                     seed: int = 0) -> ScenarioRun:
    assigner = RecordingAssigner(scenario_cohorts())
    run = ScenarioRun(root, pipeline_class=RecordingPipeline, assigner=assigner,
                      judge=TwinJudge(judge_config or EVENT_PACED_JUDGE, Judge(twin_judge)),
                      paired=RecordingPaired(paired_config, PairedComparison(twin_paired)), seed=seed)
    assigner.pipeline = run.pipeline  # type: ignore[assignment]
    return run


def twin_round(run: ScenarioRun, round_: Round) -> Round:
    """The twin judges' verdicts on the same windows, judged at the same moment."""
    now = round_.report.now
    return Round(round_.events, run.pipeline.judge.twin.judge(now), run.pipeline.paired.twin.judge(now))


@dataclasses.dataclass
class Trace:
    """A replayed update: rounds, per-round record positions, per-cohort event values."""

    previous: str
    new: str
    rounds: list[Round]
    twin_rounds: list[Round]  # the same rounds judged with TWIN_JUDGE / TWIN_PAIRED
    marks: list[int]  # len(pipeline.batches) at each round
    run: ScenarioRun


def replay_update(root: Path, data, previous: str, new: str, *, before: int, after: int, judge_every: int,
                  seed: int, models: dict | None = None) -> Trace:
    run = instrumented_run(root, seed=seed)
    scenario = Scenario(versions=((0, previous), (before, new)))
    factory = EventFactory(serving_traffic(data, seed), models or load_models(root, [previous, new]), scenario,
                           seed=seed, batch=250)
    marks: list[int] = []
    twins: list[Round] = []

    def on_round(round_: Round) -> None:
        marks.append(len(run.pipeline.batches))
        twins.append(twin_round(run, round_))

    rounds = run.run(factory, before + after, judge_every=judge_every, on_round=on_round)
    return Trace(previous, new, rounds, twins, marks, run)


# -- the three judges on the same windows -------------------------------------------------------


def _cohort_values(trace: Trace, version: str, upto: int | None = None) -> dict[tuple[str, str], dict]:
    """(dimension, cohort) -> {"avg": [n,S,L], "heads": [n,S,L,H]} of a version's events, in order."""
    pipeline = trace.run.pipeline
    labels = pipeline.assigner.labels()
    dims = pipeline.assigner.dimensions
    parts: dict[tuple[str, str], dict[str, list]] = {}
    for batch in pipeline.batches[:upto]:
        if batch["version"] != version:
            continue
        for column, dimension in enumerate(dims):
            codes = batch["codes"][:, column]
            for code in np.unique(codes):
                rows = codes == code
                entry = parts.setdefault((dimension, labels[dimension][code]), {"avg": [], "heads": []})
                entry["avg"].append(batch["avg"][rows])
                entry["heads"].append(batch["heads"][rows])
    return {k: {n: np.concatenate(v[n]) for n in ("avg", "heads")} for k, v in parts.items()}


def _counts_per_round(trace: Trace, version: str) -> list[dict[tuple[str, str], int]]:
    """Per round: (dimension, cohort) -> events of ``version`` folded so far."""
    pipeline = trace.run.pipeline
    labels = pipeline.assigner.labels()
    dims = pipeline.assigner.dimensions
    running: dict[tuple[str, str], int] = defaultdict(int)
    out, done = [], 0
    for mark in trace.marks:
        for batch in pipeline.batches[done:mark]:
            if batch["version"] != version:
                continue
            for column, dimension in enumerate(dims):
                codes, counts = np.unique(batch["codes"][:, column], return_counts=True)
                for code, n in zip(codes.tolist(), counts.tolist()):
                    running[(dimension, labels[dimension][code])] += n
        done = mark
        out.append(dict(running))
    return out


def judged_windows(trace: Trace, reference_events: int) -> list[dict]:
    """Every model_update window the judge judged: round, cohort, reference and current values."""
    new_values = _cohort_values(trace, trace.new)
    old_values = _cohort_values(trace, trace.previous)
    boundary: dict[tuple[str, str], int] = {}
    out = []
    for index, (round_, counts) in enumerate(zip(trace.rounds, _counts_per_round(trace, trace.new), strict=True)):
        for result in round_.report.results:
            if result.kind != MODEL_UPDATE or result.key.statistic != STATISTICS[0] or result.key.layer != 0:
                continue
            cohort = (result.key.dimension, result.key.cohort)
            start, stop = boundary.get(cohort, 0), counts[cohort]
            boundary[cohort] = stop
            if stop - start != result.samples:
                raise RuntimeError(f"window reconstruction is off for {cohort}: {stop - start} vs {result.samples}")
            ref = {n: old_values[cohort][n][:reference_events] for n in ("avg", "heads")}
            cur = {n: new_values[cohort][n][start:stop] for n in ("avg", "heads")}
            out.append({"round": index, "cohort": cohort, "events_since_update": stop, "ref": ref, "cur": cur})
    return out


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
    """KS p < alpha on any (statistic, layer, head) of [n, S, L, H] per-head values; no correction."""
    _, s, layers, heads = ref.shape
    for i in range(s):
        for layer in range(layers):
            for h in range(heads):
                if scipy_stats.ks_2samp(ref[:, i, layer, h], cur[:, i, layer, h]).pvalue < alpha:
                    return True
    return False


@dataclasses.dataclass
class Outcome:
    kind: str  # "benign" / "harmful"
    previous: str
    new: str
    seed: int
    delays: dict[str, int | None]  # method -> events of the detecting cohort at first verdict (None: never)
    detail: dict


def _attnmon_delays(rounds: list[Round], counts: list[dict], new: str) -> tuple[int | None, int | None]:
    """First-verdict delays (events of the detecting cohort) of model_update cohort and paired verdicts."""
    cohort = paired = None
    for round_, count in zip(rounds, counts, strict=True):
        hits = [count[(v.dimension, v.cohort)] for v in round_.report.cohorts
                if v.kind == MODEL_UPDATE and v.drifting and v.model_version == new]
        if hits and cohort is None:
            cohort = min(hits)
        hits = [count[(k.dimension, k.cohort)] for k in round_.paired.model_caused if k.new_version == new]
        if hits and paired is None:
            paired = min(hits)
    return cohort, paired


def _first(*delays: int | None) -> int | None:
    return min((d for d in delays if d is not None), default=None)


def judge_update(trace: Trace, kind: str, seed: int, reference_events: int) -> Outcome:
    counts = _counts_per_round(trace, trace.new)
    cohort, paired = _attnmon_delays(trace.rounds, counts, trace.new)
    cohort_old, paired_benign = _attnmon_delays(trace.twin_rounds, counts, trace.new)
    delays: dict[str, int | None] = {
        METHODS[0]: cohort, METHODS[1]: paired, METHODS[2]: _first(cohort, paired),
        METHODS[3]: cohort_old, METHODS[4]: paired_benign, METHODS[5]: _first(cohort, paired_benign),
    }
    within_raised: set = set()
    max_score: dict[str, float] = {}
    flagged_cohorts: set = set()
    paired_frac: list[float] = []
    for round_ in trace.rounds:
        for r in round_.report.results:
            if r.kind == MODEL_UPDATE:
                max_score[r.key.statistic] = max(max_score.get(r.key.statistic, 0.0), r.score)
        flagged_cohorts |= {(v.dimension, v.cohort) for v in round_.report.cohorts
                            if v.kind == MODEL_UPDATE and v.drifting and v.model_version == trace.new}
        within_raised |= {(v.model_version[-6:], v.dimension, v.cohort) for v in round_.report.cohorts
                          if v.kind == WITHIN_VERSION and v.drifting}
        paired_frac += [r.fraction_above for r in round_.paired.results if r.key.dimension == "all"]

    windows = judged_windows(trace, reference_events)
    fired: dict[str, dict[int, list[int]]] = {"evidently": defaultdict(list), "naive per-head": defaultdict(list)}
    evidently_columns = []
    for w in windows:  # in round order
        drift, columns = evidently_drift(w["ref"]["avg"], w["cur"]["avg"])
        evidently_columns.append(columns)
        if drift:
            fired["evidently"][w["round"]].append(w["events_since_update"])
        if naive_per_head(w["ref"]["heads"], w["cur"]["heads"]):
            fired["naive per-head"][w["round"]].append(w["events_since_update"])
    for method, rounds in fired.items():  # like attnmon's: the detecting cohort's events, first round that fires
        delays[method] = min(rounds[min(rounds)]) if rounds else None
    detail = {
        "windows": len(windows),
        "max_score": max_score,
        "flagged_cohorts": sorted(flagged_cohorts),
        "within_raised": sorted(within_raised),
        "paired_fraction_all": paired_frac,
        "evidently_columns_max": max(evidently_columns, default=0),
        "windows_sample": windows[:1] + [w for w in windows if w["cohort"] == ("platform", "android")][:1],
        "paired_js": np.concatenate(trace.run.pipeline.paired.all_js) if trace.run.pipeline.paired.all_js else np.zeros(0),
    }
    return Outcome(kind, trace.previous, trace.new, seed, delays, detail)


# -- the bench ----------------------------------------------------------------------------------------


METHODS = (
    "attnmon cohort (update floor 0.65)",  # the defaults
    "attnmon paired (cutoff 0.5)",
    "attnmon either (defaults)",  # what the agent alerts on
    "attnmon cohort (old floor 0.1)",
    "attnmon paired (cutoff 0.65)",  # cutoff_from_benign
    "attnmon either (floor .65, cut .65)",
    "evidently",
    "naive per-head",
)


SHORT = dict(zip(METHODS, ("cohort", "paired", "either", "cohort@.1", "paired@.65", "either@.65", "evidently", "naive")))


def pairs(base: list[str], harmful: list[str], count: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``count`` ordered benign pairs among base seeds and ``count`` base -> harmful pairs."""
    n = len(base)
    benign = [(base[i], base[(i + step) % n]) for step in range(1, n) for i in range(n)][:count]
    bad = [(base[i % n], harmful[(i + i // n) % len(harmful)]) for i in range(count)]
    return benign, bad


def table(outcomes: list[Outcome]) -> str:
    lines = [f"{'method':<36} {'TPR':>12} {'FPR':>12} {'median delay (events/cohort)':>30}"]
    for method in METHODS:
        harmful = [o for o in outcomes if o.kind == "harmful"]
        benign = [o for o in outcomes if o.kind == "benign"]
        tp = sum(o.delays[method] is not None for o in harmful)
        fp = sum(o.delays[method] is not None for o in benign)
        delays = [o.delays[method] for o in harmful if o.delays[method] is not None]
        delay = f"{np.median(delays):.0f}" if delays else "-"
        lines.append(f"{method:<36} {tp:>3}/{len(harmful):<3} {100 * tp / max(1, len(harmful)):>4.0f}% "
                     f"{fp:>3}/{len(benign):<3} {100 * fp / max(1, len(benign)):>4.0f}% {delay:>30}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="scenario model root (cache)")
    parser.add_argument("--base-seeds", type=int, default=5)
    parser.add_argument("--harmful-seeds", type=int, default=3)
    parser.add_argument("--updates", type=int, default=10, help="benign and harmful updates each")
    parser.add_argument("--before", type=int, default=12_000, help="events of the previous version")
    parser.add_argument("--after", type=int, default=6_000, help="events of the new version")
    parser.add_argument("--judge-every", type=int, default=500, help="events between judge rounds")
    parser.add_argument("--check-evidently", type=int, default=12, help="windows re-judged by a full Evidently Report")
    parser.add_argument("--quick", action="store_true", help="2 + 2 updates, 2 base seeds, shorter streams")
    args = parser.parse_args(argv)
    if args.quick:
        args.base_seeds, args.harmful_seeds, args.updates, args.before, args.after = 2, 1, 2, 8_000, 3_000
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore")

    data = load_movielens()
    started = time.perf_counter()
    print(f"scenario models under {args.root} (trained once, then reused):")
    models = {}
    for family, count in (("base", args.base_seeds), ("harmful", args.harmful_seeds)):
        for seed in range(count):
            t0 = time.perf_counter()
            m = train_family_model(args.root, family, seed, data=data)
            models[(family, seed)] = m
            print(f"  {m.label:<22} {m.version}  {'reused' if m.reused else 'trained'} "
                  f"({m.train_seconds:.0f}s when trained, {m.epochs} epochs, best {m.best_epoch}; "
                  f"this run {time.perf_counter() - t0:.0f}s)  test HR@10 {m.test['hr10']:.4f} NDCG@10 {m.test['ndcg10']:.4f}",
                  flush=True)
    training_s = time.perf_counter() - started

    base = [models[("base", s)].version for s in range(args.base_seeds)]
    bad = [models[("harmful", s)].version for s in range(args.harmful_seeds)]
    benign_pairs, harmful_pairs = pairs(base, bad, args.updates)
    loaded = load_models(args.root, base + bad)
    judge_config = JudgeConfig()
    outcomes: list[Outcome] = []
    started = time.perf_counter()
    for index, (kind, (previous, new)) in enumerate([("benign", p) for p in benign_pairs] + [("harmful", p) for p in harmful_pairs]):
        seed = 1000 + index
        t0 = time.perf_counter()
        trace = replay_update(args.root, data, previous, new, before=args.before, after=args.after,
                              judge_every=args.judge_every, seed=seed, models={v: loaded[v] for v in (previous, new)})
        outcome = judge_update(trace, kind, seed, judge_config.reference_events)
        outcomes.append(outcome)
        d = outcome.detail
        print(f"  {kind:<7} {previous[-6:]} -> {new[-6:]} seed {seed}: "
              + " ".join(f"{SHORT[m]}={outcome.delays[m] if outcome.delays[m] is not None else '-'}" for m in METHODS)
              + f"; windows {d['windows']}, max update score "
              + " ".join(f"{s[:6]}={v:.2f}" for s, v in sorted(d["max_score"].items()))
              + f", cohorts drifting {len(d['flagged_cohorts'])}, within-version raised {len(d['within_raised'])}"
              + f", paired share>cut (all) max {max(d['paired_fraction_all'], default=float('nan')):.2f}"
              + f" [{time.perf_counter() - t0:.0f}s]", flush=True)
    replay_s = time.perf_counter() - started

    checked = agree = 0
    t0 = time.perf_counter()
    for outcome in outcomes:
        for w in outcome.detail["windows_sample"]:
            if checked >= args.check_evidently:
                break
            fast, full = evidently_drift(w["ref"]["avg"], w["cur"]["avg"]), evidently_report_drift(w["ref"]["avg"], w["cur"]["avg"])
            checked += 1
            agree += fast == full
    check_s = time.perf_counter() - t0

    print()
    print(f"{len(harmful_pairs)} harmful and {len(benign_pairs)} benign updates; {args.before} events before, "
          f"{args.after} after each update, judged every {args.judge_every}; default JudgeConfig / PairedConfig")
    print(table(outcomes))
    raised = [o for o in outcomes if o.detail["within_raised"]]
    print(f"within_version verdicts (no traffic drift injected) raised in {len(raised)}/{len(outcomes)} runs, "
          f"{sum(len(o.detail['within_raised']) for o in outcomes)} cohort-versions in all")
    print(f"Evidently fast path vs full Report([DataDriftPreset()]): {agree}/{checked} windows identical "
          f"(verdict and drifted-column count) [{check_s:.0f}s]")
    print(f"time: models {training_s:.0f}s, replay + judging {replay_s:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
