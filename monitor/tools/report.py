"""``attnmon report``: an offline drift report of per-event attention statistics.

Two sets of prediction events (a *reference* and a *current* one) go through the
same recompute -> statistics path as the agent (head-averaged rows per layer, so
the numbers are comparable across model versions: a retrain permutes heads), giving one row per
event: ``entropy_l0``, ``max_weight_l1``, ... plus cohort columns (``platform``,
``region``, ``history_length`` bucket, and the chosen dimension if it is another
context key). Then:

- ``summary.json``: per cohort value of one dimension (plus ``all``) and per
  statistic column, reference/current n, mean and standard deviation, the
  two-sample Kolmogorov-Smirnov statistic D and p-value, the Wasserstein-1
  distance (in the statistic's own units, so for reading, not for the verdict),
  and a drift flag. A column is flagged when its KS p-value, Benjamini-Hochberg
  adjusted across every (cohort, column) test of the report, is <= ``alpha``
  **and** D >= ``min_effect``; cohorts with fewer than ``min_events`` events on
  either side get no verdict. This file is the machine-checkable verdict.
- ``summary.json`` also holds ``top_items``: per cohort and layer the current
  events' top attended items (catalogue titles) with their share of the attention
  now and in the reference, and both sides' top-k share and effective number of
  items (``monitor.tools.top_items``);
- ``report.html``: one Evidently report: a header (versions, counts, the flagged
  cohorts and statistics, the top attended items of all events), then a ``DataDriftPreset`` section for all events
  (with a ``DataSummaryPreset``) and one per cohort value. Evidently's own
  per-column drift marks use KS at ``alpha`` on the raw event counts, unadjusted
  and without the effect floor (Jensen-Shannon for the categorical cohort
  columns, which show a change in the traffic mix); the header and the JSON
  carry the verdict.

Unlike the agent's judge (binned windows, docs/drift.md) this runs on raw
samples, so KS applies. But events are clustered: one user's consecutive events
share most of their history and have nearly the same statistics, and a few
heavy users supply many events. An iid KS p-value then takes 600 events for 600
independent draws and calls two random halves of one stream different (measured:
D = 0.25, p = 0.0006 for a 120-event cohort). The p-value is therefore computed
(asymptotic Kolmogorov distribution, as scipy's ``ks_2samp`` does for large
samples) at Kish's effective sample size per side, ``(sum c_u)^2 / sum c_u^2``
over the users' event counts ``c_u`` -- the size of a cluster sample whose
members within a user are fully correlated, a conservative bound that equals n
when every event has its own user. D, the effect, uses every event.

Model versions: by default each event is recomputed under the version it names.
When the current set names other versions than the reference set, the current
statistics are judged against the reference version's statistics (a model
update: the report title says so). ``version`` overrides the model for both sets
(one version id) or per set (a ``(reference, current)`` pair; ``None`` in the
pair keeps the events' own versions), e.g. the same events under the old and
the new model isolate the model's share of a change.

Bounds: each side is capped at ``max_events`` (a seeded uniform reservoir sample
beyond it), cohort values at ``max_cohorts`` per dimension (top by volume, the
rest ``other``); Evidently's plots are aggregated (binned), so the HTML grows
with the number of sections and columns, not with the number of events.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import json
import logging
import math
import os
import time
import types
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeAlias

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from monitor.drift.cohorts import CohortDimension, sanitise
from monitor.stream.events import DEFAULT_LIMITS, Event, EventLimits, InvalidEvent, Reason, decode
from monitor.attention.recompute import recompute
from monitor.attention.registry import ModelRegistry, ServedModel
from monitor.attention.stats import STATISTICS, StatsConfig, attended_items, compute
from monitor.drift.verdict import bh_adjust
from monitor.tools.top_items import Attention, markdown, top_items

log = logging.getLogger(__name__)

__all__ = [
    "ReportConfig",
    "ReportPaths",
    "StatisticsSet",
    "read_events",
    "report_title",
    "statistic_columns",
    "statistics_frame",
    "summarise",
    "write_report",
]

HTML_NAME: Final = "report.html"
SUMMARY_NAME: Final = "summary.json"
ALL: Final = "all"
OTHER: Final = "other"
UNKNOWN: Final = "unknown"
CONTEXT_COLUMNS: Final = ("platform", "region")
LENGTH_COLUMN: Final = "history_length"
SUMMARY_FORMAT: Final = 1

EventSource: TypeAlias = "str | os.PathLike[str] | Iterable[bytes | bytearray | memoryview | Event]"
VersionOverride: TypeAlias = "str | tuple[str | None, str | None] | None"


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """Report parameters (validated on construction)."""

    alpha: float = 0.01  # BH-adjusted KS p-value at or below which a column may be flagged
    min_effect: float = 0.1  # KS statistic D at or above which a column may be flagged
    min_events: int = 50  # per side; fewer -> no verdict and no Evidently section for the cohort
    max_cohorts: int = 6  # cohort values kept per dimension (top by volume), the rest "other"
    max_events: int = 50_000  # per side; more -> seeded uniform sample of this many
    length_edges: tuple[int, ...] = (10, 50, 200)  # history-length buckets, as the agent's default cohorts
    summary_preset: bool = True  # add Evidently's DataSummaryPreset to the all-events section
    max_batch: int = 64  # rows per forward pass
    seed: int = 0  # sampling beyond max_events
    top_items: int = 10  # attended items listed per cohort and layer (summary.json "top_items")
    stats: StatsConfig = StatsConfig()
    limits: EventLimits = DEFAULT_LIMITS

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha!r}")
        if not 0.0 <= self.min_effect <= 1.0:
            raise ValueError(f"min_effect must be in [0, 1], got {self.min_effect!r}")
        for name in ("min_events", "max_cohorts", "max_events", "max_batch", "top_items"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.stats.per_head:
            raise ValueError("the report compares head-averaged statistics; per_head must be False")
        CohortDimension(name=LENGTH_COLUMN, kind="history_length", edges=tuple(self.length_edges))  # validates


@dataclasses.dataclass(frozen=True)
class ReportPaths:
    html: Path
    summary_json: Path


@dataclasses.dataclass(frozen=True)
class StatisticsSet:
    """Per-event statistics of one event set, and what was left out."""

    frame: pd.DataFrame  # one row per event: event_id, model_version, cohort columns, statistic columns
    columns: tuple[str, ...]  # statistic columns, e.g. ("entropy_l0", ..., "genre_entropy_l1")
    versions: dict[str, int]  # model version -> events recomputed under it
    skipped: dict[str, int]  # reason -> events left out (a Reason value, or "nan_statistics")
    read: int  # events read (before sampling)
    sampled: bool  # True when more than max_events were read
    attention: Attention | None = None  # each event's attention per item (rows of ``frame``)


def statistic_columns(layers: int) -> tuple[str, ...]:
    """Column names of the statistics of a model with ``layers`` layers, statistic-major."""
    return tuple(f"{stat}_l{layer}" for stat in STATISTICS for layer in range(layers))


# -- input --------------------------------------------------------------------------------
def read_events(
    source: EventSource, *, max_events: int, seed: int = 0, limits: EventLimits = DEFAULT_LIMITS
) -> tuple[list[Event], Counter[str], int]:
    """Decode events from a JSONL file (one encoded event per line) or an iterable.

    Returns ``(events, skipped, read)``: at most ``max_events`` events (a seeded
    uniform reservoir sample when more were read, so memory stays bounded), the
    count of undecodable records per reason, and how many good events were read.
    """
    rng = np.random.default_rng(seed)
    kept: list[Event] = []
    skipped: Counter[str] = Counter()
    read = 0
    for item in _records(source):
        if isinstance(item, Event):
            event = item
        else:
            try:
                event = decode(item, limits)
            except InvalidEvent as err:
                skipped[err.reason.value] += 1
                continue
        if read < max_events:
            kept.append(event)
        else:  # Algorithm R: every event read so far stays with probability max_events / read
            slot = int(rng.integers(0, read + 1))
            if slot < max_events:
                kept[slot] = event
        read += 1
    return kept, skipped, read


def _records(source: EventSource) -> Iterable[bytes | bytearray | memoryview | Event]:
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as handle:
            for line in handle:
                line = line.strip()
                if line:
                    yield line
        return
    if isinstance(source, (bytes, bytearray)):
        raise TypeError("pass an iterable of encoded events (or a path), not one bytes object")
    yield from source


# -- statistics ---------------------------------------------------------------------------
def statistics_frame(
    source: EventSource,
    registry: ModelRegistry,
    *,
    version: str | None = None,
    dimension: str | None = None,
    config: ReportConfig = ReportConfig(),
) -> StatisticsSet:
    """Recompute every event's attention statistics (head-averaged, per layer) into a frame.

    ``version`` recomputes every event under that model version instead of the one
    it names. Events naming an unavailable version, or with no item known to the
    model, are skipped and counted (as the agent does); unknown items inside a
    history are dropped. ``dimension``: an extra context key to keep as a column.
    """
    events, skipped, read = read_events(source, max_events=config.max_events, seed=config.seed, limits=config.limits)
    length_dim = CohortDimension(name=LENGTH_COLUMN, kind="history_length", edges=tuple(config.length_edges))
    edges = np.asarray(length_dim.edges, dtype=np.int64)
    bucket_labels = np.asarray(length_dim.bucket_labels(), dtype=object)
    context_keys = list(CONTEXT_COLUMNS)
    if dimension and dimension not in context_keys and dimension != LENGTH_COLUMN:
        context_keys.append(dimension)

    by_version: dict[str, list[Event]] = {}
    for event in events:
        by_version.setdefault(version or event.model_version, []).append(event)

    parts: list[pd.DataFrame] = []
    attention: list[Attention] = []
    versions: dict[str, int] = {}
    layer_counts: set[int] = set()
    for name, members in sorted(by_version.items()):
        served = registry.get(name)
        if served is None:
            skipped[Reason.UNKNOWN_MODEL_VERSION.value] += len(members)
            continue
        histories, kept = _model_histories(served, members, skipped)
        if not kept:
            continue
        values, attended = _statistics(served, histories, config)  # [B, S, layers], per item
        finite = np.isfinite(values).all(axis=(1, 2))
        if not finite.all():
            skipped["nan_statistics"] += int((~finite).sum())
        lengths = np.fromiter((min(len(h), served.max_len) for h in histories), dtype=np.int64, count=len(histories))
        layers = values.shape[2]
        layer_counts.add(layers)
        columns: dict[str, Any] = {
            "event_id": [e.event_id for e in kept],
            "user_id": [e.user_id for e in kept],
            "model_version": name,
            LENGTH_COLUMN: bucket_labels[np.searchsorted(edges, lengths, side="right")],
            "n_items": lengths,
        }
        for key in context_keys:
            columns[key] = [sanitise(e.context.get(key)) or UNKNOWN for e in kept]
        for s, stat in enumerate(STATISTICS):
            for layer in range(layers):
                columns[f"{stat}_l{layer}"] = values[:, s, layer]
        part = pd.DataFrame(columns)
        offset = sum(len(p) for p in parts)
        parts.append(part[finite])
        row_of = offset + np.cumsum(finite) - 1  # event -> its row in the concatenated frame
        keep = finite[attended.row]
        attention.append(Attention(row_of[attended.row[keep]], attended.item[keep], attended.mass[keep]))
        versions[name] = int(finite.sum())
    # Versions with different layer counts share the layers they both have.
    stat_cols = statistic_columns(min(layer_counts)) if layer_counts else ()
    frame = pd.concat(parts, ignore_index=True, join="inner") if parts else pd.DataFrame()
    layers = min(layer_counts) if layer_counts else 1
    merged = Attention(*(np.concatenate([getattr(a, f) for a in attention]) for f in ("row", "item")),
                       np.concatenate([a.mass[:, :layers] for a in attention])) if attention else Attention.empty(layers)
    return StatisticsSet(frame=frame, columns=stat_cols, versions=versions, skipped=dict(skipped),
                         read=read, sampled=read > len(events), attention=merged)


def _model_histories(
    served: ServedModel, events: Sequence[Event], skipped: Counter[str]
) -> tuple[list[np.ndarray], list[Event]]:
    """Histories in the model's index space (unknown items dropped) and the events kept."""
    histories: list[np.ndarray] = []
    kept: list[Event] = []
    for event in events:
        indices = served.to_indices(np.fromiter(event.history, dtype=np.int64, count=len(event.history)))
        indices = indices[indices >= 0]
        if len(indices) == 0:
            skipped[Reason.UNKNOWN_ITEMS.value] += 1
            continue
        histories.append(indices)
        kept.append(event)
    return histories, kept


def _statistics(served: ServedModel, histories: list[np.ndarray],
                config: ReportConfig) -> tuple[np.ndarray, Attention]:
    """[B, S, layers] statistics in the order of ``histories``, and the attention per item
    (rows: positions in ``histories``; raw item ids)."""
    out = np.empty((len(histories), len(STATISTICS), served.checkpoint.config.layers), dtype=np.float32)
    rows, items, masses = [], [], []
    for chunk in recompute(served.checkpoint.model, histories, max_len=served.max_len, max_batch=config.max_batch):
        out[chunk.rows] = compute(chunk.weights, chunk.lengths, chunk.item_index, served.genre_matrix, config.stats)
        event, index, mass = attended_items(chunk.weights.mean(axis=2, dtype=np.float32), chunk.item_index)
        rows.append(chunk.rows[event])
        items.append(served.checkpoint.catalog.item_ids[index])
        masses.append(mass)
    if not rows:
        return out, Attention.empty(out.shape[2])
    return out, Attention(np.concatenate(rows), np.concatenate(items).astype(np.int64), np.concatenate(masses))


# -- the verdict --------------------------------------------------------------------------
def cohort_values(reference: pd.DataFrame, current: pd.DataFrame, dimension: str, max_cohorts: int) -> list[str]:
    """Cohort values kept for ``dimension``: the top ``max_cohorts`` by total volume."""
    counts: Counter[str] = Counter()
    for frame in (reference, current):
        if dimension in frame:
            counts.update(_labels(frame[dimension]).value_counts().to_dict())
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = [value for value, _ in ranked[:max_cohorts]]
    if len(ranked) > max_cohorts:
        kept.append(OTHER)
    return kept


def _cohort_column(frame: pd.DataFrame, dimension: str, kept: Sequence[str]) -> pd.Series:
    if dimension not in frame:
        return pd.Series(UNKNOWN, index=frame.index)
    values = _labels(frame[dimension])
    return values.where(values.isin(kept), OTHER)


def _labels(column: pd.Series) -> pd.Series:
    """Cohort labels as text; an event's own value "all" must not collide with the all-events section."""
    return column.astype(str).replace({ALL: f"_{ALL}"})


def summarise(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str],
    *,
    dimension: str = "platform",
    config: ReportConfig = ReportConfig(),
) -> dict[str, Any]:
    """Per cohort (``all`` first) and statistic column: moments, KS, Wasserstein, flag.

    Pure (frames in, JSON-ready dict out): the verdict of :func:`write_report`.
    """
    values = cohort_values(reference, current, dimension, config.max_cohorts)
    ref_cohort = _cohort_column(reference, dimension, values)
    cur_cohort = _cohort_column(current, dimension, values)
    sections: list[tuple[str, np.ndarray, np.ndarray]] = [
        (ALL, np.ones(len(reference), dtype=bool), np.ones(len(current), dtype=bool))
    ]
    sections += [(v, (ref_cohort == v).to_numpy(), (cur_cohort == v).to_numpy()) for v in values]

    cohorts: dict[str, dict[str, Any]] = {}
    tests: list[tuple[str, str, float]] = []  # (cohort, column, p)
    for name, ref_mask, cur_mask in sections:
        n_ref, n_cur = int(ref_mask.sum()), int(cur_mask.sum())
        sufficient = n_ref >= config.min_events and n_cur >= config.min_events
        eff_ref, eff_cur = _effective_size(reference, ref_mask), _effective_size(current, cur_mask)
        per_column: dict[str, dict[str, Any]] = {}
        for column in columns:
            a = reference[column].to_numpy(dtype=np.float64)[ref_mask] if n_ref else np.empty(0)
            b = current[column].to_numpy(dtype=np.float64)[cur_mask] if n_cur else np.empty(0)
            entry: dict[str, Any] = {
                "reference_mean": _num(a.mean()) if n_ref else None,
                "current_mean": _num(b.mean()) if n_cur else None,
                "reference_std": _num(a.std()) if n_ref else None,
                "current_std": _num(b.std()) if n_cur else None,
                "ks_statistic": None, "ks_pvalue": None, "p_adjusted": None, "wasserstein": None,
                "drift": None,
            }
            if sufficient:
                d = float(scipy_stats.ks_2samp(a, b).statistic)
                p = _ks_pvalue(d, eff_ref, eff_cur)
                entry["ks_statistic"] = _num(d)
                entry["ks_pvalue"] = _num(p)
                entry["wasserstein"] = _num(scipy_stats.wasserstein_distance(a, b))
                tests.append((name, column, p))
            per_column[column] = entry
        cohorts[name] = {"n_reference": n_ref, "n_current": n_cur,
                         "n_effective_reference": _num(eff_ref), "n_effective_current": _num(eff_cur),
                         "sufficient": sufficient, "drifting": None, "statistics": per_column}

    adjusted = bh_adjust(np.asarray([p for _, _, p in tests]))
    for (name, column, _), p_adj in zip(tests, adjusted, strict=True):
        entry = cohorts[name]["statistics"][column]
        entry["p_adjusted"] = _num(p_adj)
        entry["drift"] = bool(p_adj <= config.alpha and entry["ks_statistic"] >= config.min_effect)
    drifting: list[dict[str, Any]] = []
    for name, cohort in cohorts.items():
        if cohort["sufficient"]:
            flagged = [c for c, e in cohort["statistics"].items() if e["drift"]]
            cohort["drifting"] = bool(flagged)
            drifting += [{"cohort": name, "statistic": c, "ks_statistic": cohort["statistics"][c]["ks_statistic"],
                          "p_adjusted": cohort["statistics"][c]["p_adjusted"]} for c in flagged]
    drifting.sort(key=lambda d: (-d["ks_statistic"], d["cohort"], d["statistic"]))
    return {
        "dimension": dimension,
        "rule": {"test": "two-sample Kolmogorov-Smirnov at Kish's effective sizes (users as clusters)",
                 "correction": "Benjamini-Hochberg over all tests",
                 "alpha": config.alpha, "min_effect_ks": config.min_effect, "min_events": config.min_events,
                 "tests": len(tests)},
        "drifting": any(c["drifting"] for c in cohorts.values()),
        "drifting_series": drifting,
        "cohort_values": values,
        "cohorts": cohorts,
    }


def _effective_size(frame: pd.DataFrame, mask: np.ndarray) -> float:
    """Kish's effective sample size of the masked events, users as clusters (n without user ids)."""
    n = int(mask.sum())
    if n == 0 or "user_id" not in frame:
        return float(n)
    counts = frame["user_id"][mask].value_counts().to_numpy(dtype=np.float64)
    return float(counts.sum() ** 2 / (counts**2).sum())


def _ks_pvalue(d: float, n: float, m: float) -> float:
    """Two-sided two-sample KS p-value of statistic d at (effective) sizes n and m."""
    en = round(n * m / (n + m)) if n > 0 and m > 0 else 0
    if en < 1:
        return 1.0
    return float(min(1.0, scipy_stats.kstwo.sf(d, en)))


def _num(value: float) -> float | None:
    """A JSON-safe float (None for NaN / inf), rounded to 6 significant digits."""
    value = float(value)
    if not math.isfinite(value):
        return None
    return float(f"{value:.6g}")


# -- the report ---------------------------------------------------------------------------
def write_report(
    reference_events: EventSource,
    current_events: EventSource,
    registry_root: Path | ModelRegistry,
    out_dir: Path,
    *,
    dimension: str = "platform",
    version: VersionOverride = None,
    config: ReportConfig = ReportConfig(),
) -> ReportPaths:
    """Write ``report.html`` (Evidently) and ``summary.json`` (the verdict) under ``out_dir``.

    ``dimension`` is a context key (``platform``, ``region``, ...) or
    ``history_length``. ``version``: see the module docstring.
    """
    started = time.perf_counter()
    registry = registry_root if isinstance(registry_root, ModelRegistry) else ModelRegistry(Path(registry_root))
    ref_version, cur_version = version if isinstance(version, tuple) else (version, version)
    reference = statistics_frame(reference_events, registry, version=ref_version, dimension=dimension, config=config)
    current = statistics_frame(current_events, registry, version=cur_version, dimension=dimension, config=config)
    for side, stats_set in (("reference", reference), ("current", current)):
        if stats_set.frame.empty:
            raise ValueError(f"no usable {side} events (read {stats_set.read}, skipped {stats_set.skipped})")
    columns = tuple(c for c in reference.columns if c in set(current.columns))
    unmatched = sorted(set(reference.columns) ^ set(current.columns))
    summary = summarise(reference.frame, current.frame, columns, dimension=dimension, config=config)
    summary["top_items"] = _top_items(reference, current, summary["cohort_values"], dimension, registry, config)
    recomputed = time.perf_counter() - started

    title = report_title(reference.versions, current.versions)
    summary = {
        "format": SUMMARY_FORMAT,
        "title": title,
        "cross_version": set(reference.versions) != set(current.versions),
        "reference": _side(reference),
        "current": _side(current),
        "columns": list(columns),
        "unmatched_columns": unmatched,
        **summary,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = ReportPaths(html=out_dir / HTML_NAME, summary_json=out_dir / SUMMARY_NAME)
    html_text = _render_html(reference.frame, current.frame, columns, summary, config)
    _write_atomic(paths.html, html_text)
    summary["timing_s"] = {"statistics": round(recomputed, 3), "total": round(time.perf_counter() - started, 3)}
    summary["html_bytes"] = len(html_text.encode())
    _write_atomic(paths.summary_json, json.dumps(summary, indent=1) + "\n")
    log.info("report: %s (%.1f MB), %s; drifting: %s", paths.html, summary["html_bytes"] / 1e6,
             paths.summary_json, summary["drifting"])
    return paths


def _top_items(reference: StatisticsSet, current: StatisticsSet, values: Sequence[str], dimension: str,
               registry: ModelRegistry, config: ReportConfig) -> dict[str, Any]:
    """Per cohort (``all`` first) and layer: the top attended items before and now (``top_items``)."""
    ref_cohort = _cohort_column(reference.frame, dimension, values).to_numpy()
    cur_cohort = _cohort_column(current.frame, dimension, values).to_numpy()
    sections = [(ALL, np.ones(len(ref_cohort), dtype=bool), np.ones(len(cur_cohort), dtype=bool))]
    sections += [(v, ref_cohort == v, cur_cohort == v) for v in values]
    catalogues = [served.checkpoint.catalog for v in (*current.versions, *reference.versions)
                  if (served := registry.get(v)) is not None]

    def title(item: int) -> str | None:
        for catalog in catalogues:
            at = np.flatnonzero(catalog.item_ids == item)
            if at.size:
                return catalog.titles[int(at[0])]
        return None

    assert reference.attention is not None and current.attention is not None
    return top_items(sections, reference.attention, current.attention, title, top_n=config.top_items)


def report_title(reference: Mapping[str, int], current: Mapping[str, int]) -> str:
    ref, cur = ", ".join(sorted(reference)), ", ".join(sorted(current))
    if set(reference) == set(current):
        return f"Attention drift: current vs reference events, model {ref}"
    return (f"Attention drift after a model change: current events under {cur} "
            f"judged against the reference statistics of {ref}")


def _side(stats_set: StatisticsSet) -> dict[str, Any]:
    return {"events": len(stats_set.frame), "read": stats_set.read, "sampled": stats_set.sampled,
            "versions": stats_set.versions, "skipped": stats_set.skipped}


def _write_atomic(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


def _render_html(
    reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str], summary: Mapping[str, Any],
    config: ReportConfig,
) -> str:
    """One Evidently dashboard: header, all-events section, one section per cohort value."""
    ev = _evidently()
    dimension = summary["dimension"]
    values = summary["cohort_values"]
    cohort_cols = [c for c in (*CONTEXT_COLUMNS, LENGTH_COLUMN, dimension)
                   if c in reference and c in current and c != "model_version"]
    cohort_cols = list(dict.fromkeys(cohort_cols))

    widgets = [ev.text_widget(title="", text=_header_markdown(summary))]
    flagged = summary["drifting_series"]
    if flagged:
        widgets.append(ev.table_data(
            title="Flagged (cohort, statistic): BH-adjusted KS p <= alpha and D >= min_effect",
            column_names=["cohort", "statistic", "KS D", "p adjusted", "reference mean", "current mean"],
            data=[[f"{dimension}={d['cohort']}" if d["cohort"] != ALL else ALL, d["statistic"],
                   f"{d['ks_statistic']:.3f}", f"{d['p_adjusted']:.2g}",
                   _fmt(summary["cohorts"][d["cohort"]]["statistics"][d["statistic"]]["reference_mean"]),
                   _fmt(summary["cohorts"][d["cohort"]]["statistics"][d["statistic"]]["current_mean"])]
                  for d in flagged[:50]],
        ))

    ref_cohort = _cohort_column(reference, dimension, values)
    cur_cohort = _cohort_column(current, dimension, values)
    for name in [ALL, *values]:
        cohort = summary["cohorts"][name]
        label = "all events" if name == ALL else f"{dimension} = {name}"
        state = ("DRIFTING" if cohort["drifting"] else "no drift") if cohort["sufficient"] else "insufficient events"
        heading = (f"## {label}: {state}\n\nreference {cohort['n_reference']} events, "
                   f"current {cohort['n_current']} events")
        if not cohort["sufficient"]:
            widgets.append(ev.text_widget(title="", text=heading + f" (fewer than {config.min_events} on a side: "
                                                   "no verdict, no plots)"))
            continue
        drifted = [c for c, e in cohort["statistics"].items() if e["drift"]]
        heading += f"; flagged: {', '.join(drifted) if drifted else 'none'}"
        widgets.append(ev.text_widget(title="", text=heading))
        if name == ALL:
            ref_part, cur_part = reference, current
            categorical = cohort_cols
        else:
            ref_part, cur_part = reference[(ref_cohort == name).to_numpy()], current[(cur_cohort == name).to_numpy()]
            categorical = [c for c in cohort_cols if c != dimension]
        keep = [*columns, *categorical]
        definition = ev.DataDefinition(numerical_columns=list(columns), categorical_columns=categorical)
        metrics: list[Any] = [ev.DriftPreset(columns=keep, num_method="ks", num_threshold=config.alpha,
                                                cat_method="jensenshannon")]
        if name == ALL and config.summary_preset:
            metrics.append(ev.DataSummaryPreset(columns=keep))
        snapshot = ev.Report(metrics).run(
            ev.Dataset.from_pandas(cur_part[keep].reset_index(drop=True), data_definition=definition),
            ev.Dataset.from_pandas(ref_part[keep].reset_index(drop=True), data_definition=definition),
        )
        # Flat top-level widgets: the renderer moves their plots into one shared map,
        # whereas nesting them in a group would embed every plot twice.
        widgets.extend(snapshot.to_snapshot_model().widgets)
    for widget in widgets:
        _compact(widget)
    page = ev.render_widgets(widgets)
    return page.replace("<head>", f"<head>\n    <title>{html.escape(summary['title'])}</title>", 1)


@functools.cache
def _evidently() -> types.SimpleNamespace:
    """Evidently's pieces, imported on first use (the import takes seconds).

    Its import pulls in its web UI's framework, which raises deprecation warnings
    about itself; they say nothing about this code, so they are silenced here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from evidently import DataDefinition, Dataset, Report
        from evidently.core.metric_types import render_widgets
        from evidently.legacy.renderers.html_widgets import table_data, text_widget
        from evidently.metrics import ValueDrift
        from evidently.presets import DataDriftPreset, DataSummaryPreset

    class DriftPreset(DataDriftPreset):
        """DataDriftPreset without its per-column ValueDrift metrics.

        The preset renders only its dataset-drift counters and drift table (from
        Evidently's legacy metrics) and drops the ValueDrift widgets, yet still
        computes and plots every ValueDrift: half of its run time. The page is
        the same without them.
        """

        def generate_metrics(self, context: Any) -> Any:
            return [m for m in super().generate_metrics(context) if not isinstance(m, ValueDrift)]

    return types.SimpleNamespace(
        DataDefinition=DataDefinition, Dataset=Dataset, Report=Report, render_widgets=render_widgets,
        table_data=table_data, text_widget=text_widget, DriftPreset=DriftPreset,
        DataSummaryPreset=DataSummaryPreset,
    )


def _compact(widget: Any) -> None:
    """Round the floats a widget embeds (plot data, tables) to 4 significant digits, in place.

    Evidently serialises full float64 reprs; a plot needs no 17-digit coordinates, and
    rounding cuts the embedded data by about a third.
    """
    widget.params = _round(widget.params)
    for graph in widget.additionalGraphs:
        if hasattr(graph, "additionalGraphs"):  # a nested BaseWidgetInfo
            _compact(graph)
        elif hasattr(graph, "params"):  # AdditionalGraphInfo
            graph.params = _round(graph.params)
        elif hasattr(graph, "data"):  # PlotlyGraphInfo
            graph.data, graph.layout = _round(graph.data), _round(graph.layout)
    for child in widget.widgets:
        _compact(child)


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else value
    if isinstance(value, list):
        return [_round(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_round(v) for v in value)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


def _header_markdown(summary: Mapping[str, Any]) -> str:
    rule = summary["rule"]
    ref, cur = summary["reference"], summary["current"]
    lines = [
        f"# {summary['title']}",
        "",
        f"Head-averaged attention statistics per layer (comparable across model versions), cohorts by "
        f"**{summary['dimension']}**: {', '.join(summary['cohort_values'])}.",
        "",
        f"- reference: {ref['events']} events under {_versions(ref['versions'])}"
        + (f" (a uniform sample of {ref['read']})" if ref["sampled"] else "") + _skipped(ref["skipped"]),
        f"- current: {cur['events']} events under {_versions(cur['versions'])}"
        + (f" (a uniform sample of {cur['read']})" if cur["sampled"] else "") + _skipped(cur["skipped"]),
        f"- verdict: a column drifts when its {rule['test']} p-value, {rule['correction']} "
        f"({rule['tests']} tests), is <= {rule['alpha']} and KS D >= {rule['min_effect_ks']}; "
        f"cohorts need >= {rule['min_events']} events per side. Evidently's per-column marks below use KS "
        f"at the event counts (no clustering, no adjustment, no effect floor; Jensen-Shannon for the cohort "
        f"columns), so they mark more: summary.json holds the verdict.",
        f"- **{'DRIFT' if summary['drifting'] else 'no drift'}**: "
        + (", ".join(f"{d['cohort']}/{d['statistic']}" for d in summary["drifting_series"][:12])
           + (" ..." if len(summary["drifting_series"]) > 12 else "") if summary["drifting"] else "nothing flagged"),
    ]
    lines += markdown(summary.get("top_items", {}), ALL)
    if summary["unmatched_columns"]:
        lines.append(f"- columns in one set only (layer counts differ), not compared: "
                     f"{', '.join(summary['unmatched_columns'])}")
    return "\n".join(lines)


def _versions(versions: Mapping[str, int]) -> str:
    return ", ".join(f"{v} ({n})" for v, n in sorted(versions.items())) or "no model"


def _skipped(skipped: Mapping[str, int]) -> str:
    if not skipped:
        return ""
    return "; skipped: " + ", ".join(f"{reason} {n}" for reason, n in sorted(skipped.items()))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
