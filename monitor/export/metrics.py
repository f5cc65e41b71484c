"""Every metric attnmon exports: names, help, labels and buckets live here and only here.

Per-event attention statistics are exported as Prometheus histograms by a custom
collector that folds whole batches into numpy bucket counts: one event makes
statistics x layers x cohort-dimensions observations (7 x 2 x 4 = 56 by default), and
observing them one by one through prometheus-client would cost more than the model.
Drift verdicts already live in the judge; they are exported at scrape time by a
collector that reads the latest report rather than copying values into gauges. So are
the series the judge and the paired comparison hold against their caps
(``UsageCollector``). A retired model version's series leave the exposition
(``AgentMetrics.forget_version``).

Every metric takes ``registry`` so a test can build a fresh ``CollectorRegistry``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from monitor.stream.events import Reason
from monitor.attention.stats import STATISTICS

PREFIX = "attnmon"
# Histogram buckets for statistics in [0, 1]: equal width, matching the judge's bins.
RATIO_BUCKETS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 21))
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STAGES = ("decode", "recompute", "stats", "fold", "judge", "checkpoint", "batch")
OUTCOMES = ("processed", "dead_lettered")
STATISTIC_LABELS = ("model_version", "dimension", "cohort", "layer")
DRIFT_LABELS = ("kind", "model_version", "reference_version", "dimension", "cohort", "statistic", "layer")
COHORT_VERDICT_LABELS = ("kind", "model_version", "reference_version", "dimension", "cohort")
PAIRED_LABELS = ("model_version", "previous_version", "dimension", "cohort", "layer")
# Attention mass per item (monitor/export/item_rows.py): per (kind, cohort, layer), and per exported item.
ITEM_LABELS = ("kind", "model_version", "reference_version", "dimension", "cohort", "layer")
ITEM_SHARE_LABELS = ("kind", "model_version", "dimension", "cohort", "layer", "rank", "item", "side")
# What became of the events sampled for the paired comparison.
PAIRED_OUTCOMES = ("paired", "previous_unreadable", "previous_unavailable", "over_cap")
PAIRED_SIDES = ("new", "previous")  # which version lacks an item the other one knows


def statistic_metric(statistic: str, per_head: bool = False) -> str:
    """Histogram name of one attention statistic, e.g. attnmon_attention_entropy_ratio.

    Per-head histograms (``stats.per_head``: within-version tracking only, since a retrain
    permutes heads) are attnmon_attention_head_<statistic>_ratio with a ``head`` label.
    """
    return f"{PREFIX}_attention_{'head_' if per_head else ''}{statistic}_ratio"


STATISTIC_HELP = {
    "entropy": "Entropy of the last position's attention over the history, divided by log(history length).",
    "max_weight": "Largest attention weight of the last position over the history.",
    "topk_mass": "Attention mass on the k most attended history items.",
    "gini": "Gini coefficient of the attention weights (0 uniform, 1 all on one item).",
    "effective_span": "Fraction of the history, counted from the most recent item, that holds 90% of the attention.",
    "recent_mass": "Attention mass on the most recent items of the history.",
    "genre_entropy": "Entropy of the attention mass aggregated by item genre, divided by log(number of genres).",
}

# Names of every metric, for the test that dashboards and rules use only real ones.
FIXED_METRICS = (
    "attnmon_events_total",
    "attnmon_events_held",
    "attnmon_events_held_bytes",
    "attnmon_history_items_unknown_total",
    "attnmon_history_truncated_total",
    "attnmon_stage_duration_seconds",
    "attnmon_batch_events",
    "attnmon_event_to_metric_latency_seconds",
    "attnmon_consumer_lag_records",
    "attnmon_model_info",
    "attnmon_model_load_seconds",
    "attnmon_model_load_failures_total",
    "attnmon_model_update_timestamp_seconds",
    "attnmon_ready",
    "attnmon_last_checkpoint_timestamp_seconds",
    "attnmon_judge_runs_total",
    "attnmon_drift_score",
    "attnmon_drift_p_value",
    "attnmon_drift_threshold",
    "attnmon_drift_samples",
    "attnmon_drift_verdict",
    "attnmon_drift_cohort_verdict",
    "attnmon_drift_cohort_explained",
    "attnmon_update_paired_divergence",
    "attnmon_update_paired_pairs",
    "attnmon_update_paired_effective_users",
    "attnmon_update_paired_share_above",
    "attnmon_update_paired_verdict",
    "attnmon_update_paired_window_flagged",
    "attnmon_update_paired_agreement",
    "attnmon_update_paired_served_ratio",
    "attnmon_update_paired_events_total",
    "attnmon_update_paired_items_unknown_total",
    "attnmon_baseline_ready",
    "attnmon_forward_pool_replacements_total",
    "attnmon_kafka_skipped_offsets_total",
    "attnmon_kafka_commit_failures_total",
    "attnmon_state_unusable_total",
    "attnmon_drift_series",
    "attnmon_drift_series_limit",
    "attnmon_drift_observations_refused_total",
    "attnmon_model_version_last_seen_timestamp_seconds",
    "attnmon_model_versions_retired_total",
    "attnmon_items_narrowed",
    "attnmon_items_drift_score",
    "attnmon_items_top_share_ratio",
    "attnmon_items_effective_count",
    "attnmon_items_top_overlap_ratio",
    "attnmon_item_attention_share_ratio",
    "attnmon_item_info",
)


def all_metric_names() -> set[str]:
    """Every family name the agent exports (histograms also expose _bucket/_sum/_count)."""
    return set(FIXED_METRICS) | {statistic_metric(s, per_head) for s in STATISTICS for per_head in (False, True)}


class AttentionHistograms(Collector):
    """Bulk-folded histograms of every statistic per (version, dimension, cohort, layer[, head]).

    Label values are bounded upstream: versions are those the registry could load (the
    oldest beyond ``max_versions`` are dropped), cohorts come capped from the assigner.
    """

    def __init__(self, *, per_head: bool = False, statistics: Sequence[str] = STATISTICS, max_versions: int = 4) -> None:
        self.per_head = per_head
        self.statistics = tuple(statistics)
        self.bounds = np.asarray(RATIO_BUCKETS, dtype=np.float32)
        self.max_versions = max_versions
        self._lock = threading.Lock()
        # (version, dimension) -> (labels, heads, counts [cohorts, stats, units, buckets], sums [cohorts, stats, units])
        # where a unit is a layer (head-averaged) or a (layer, head) pair, unit = layer * heads + head.
        self._series: OrderedDict[tuple[str, str], tuple[list[str], int, np.ndarray, np.ndarray]] = OrderedDict()

    def fold(self, version: str, dimension: str, codes: np.ndarray, labels: Sequence[str], values: np.ndarray) -> None:
        """Add a batch: codes [B] cohort codes in this dimension; values [B, stats, layers]
        (or [B, stats, layers, heads] for a per-head collector)."""
        heads = values.shape[3] if self.per_head else 1
        values = values.reshape(values.shape[0], values.shape[1], -1)  # [B, stats, units]
        n_stats, n_units, n_buckets = len(self.statistics), values.shape[2], len(self.bounds)
        n_codes = len(labels)
        # Non-cumulative bucket of each value: index of the first bound >= value.
        bucket = np.searchsorted(self.bounds, values, side="left").clip(max=n_buckets - 1)
        flat = ((codes[:, None, None] * n_stats + np.arange(n_stats)[None, :, None]) * n_units
                + np.arange(n_units)[None, None, :]) * n_buckets + bucket
        counts = np.bincount(flat.ravel(), minlength=n_codes * n_stats * n_units * n_buckets)
        # Sums per (cohort, statistic, unit): a bincount adds in the order np.add.at does, at a
        # fraction of its cost (np.add.at is unbuffered, element by element).
        cells = (codes[:, None] * (n_stats * n_units) + np.arange(n_stats * n_units)[None, :]).ravel()
        sums = np.bincount(cells, weights=values.reshape(-1), minlength=n_codes * n_stats * n_units)
        sums = sums.reshape(n_codes, n_stats, n_units)
        with self._lock:
            key = (version, dimension)
            if key not in self._series:
                self._series[key] = ([], heads, np.zeros((0, n_stats, n_units, n_buckets), np.int64),
                                     np.zeros((0, n_stats, n_units)))
                self._evict_versions()
            _, _, old_counts, old_sums = self._series[key]
            grown = n_codes - old_counts.shape[0]
            if grown > 0:  # cohort labels are append-only; codes index into them
                old_counts = np.concatenate([old_counts, np.zeros((grown, *old_counts.shape[1:]), np.int64)])
                old_sums = np.concatenate([old_sums, np.zeros((grown, *old_sums.shape[1:]))])
            old_counts += counts.reshape(n_codes, n_stats, n_units, n_buckets)
            old_sums += sums
            self._series[key] = (list(labels), heads, old_counts, old_sums)

    def _evict_versions(self) -> None:
        versions = list(OrderedDict.fromkeys(v for v, _ in self._series))
        for stale in versions[: max(0, len(versions) - self.max_versions)]:
            self._drop(stale)

    def forget(self, version: str) -> None:
        """Drop a retired version's histograms: its series leave the next scrape."""
        with self._lock:
            self._drop(version)

    def _drop(self, version: str) -> None:
        for key in [k for k in self._series if k[0] == version]:
            del self._series[key]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            snapshot = [(k, list(lbl), h, c.copy(), s.copy()) for k, (lbl, h, c, s) in self._series.items()]
        bound_labels = [str(b) for b in RATIO_BUCKETS]
        label_names = STATISTIC_LABELS + (("head",) if self.per_head else ())
        for s_index, statistic in enumerate(self.statistics):
            family = HistogramMetricFamily(
                statistic_metric(statistic, self.per_head), STATISTIC_HELP.get(statistic, statistic), labels=label_names
            )
            for (version, dimension), labels, heads, counts, sums in snapshot:
                for code, cohort in enumerate(labels):
                    for unit in range(counts.shape[2]):
                        cumulative = np.cumsum(counts[code, s_index, unit])
                        total = int(cumulative[-1])
                        if total == 0:
                            continue
                        buckets = [(b, float(c)) for b, c in zip(bound_labels, cumulative, strict=True)]
                        buckets.append(("+Inf", float(total)))
                        unit_labels = [str(unit // heads)] + ([str(unit % heads)] if self.per_head else [])
                        family.add_metric([version, dimension, cohort, *unit_labels], buckets,
                                          float(sums[code, s_index, unit]))
            yield family


class BulkHistogram(Collector):
    """An unlabelled histogram folded a batch at a time with numpy.

    prometheus-client's ``Histogram.observe`` takes a lock per value; at thousands of
    events per second that loop cost a tenth of the fold worker's time.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self._lock = threading.Lock()
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # last: above every bound
        self._sum = 0.0

    def observe_many(self, values: np.ndarray) -> None:
        # A value equal to a bound belongs to that bound's bucket (le = less or equal).
        counts = np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self._counts))
        total = float(values.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            cumulative, total = np.cumsum(self._counts), self._sum
        family = HistogramMetricFamily(self.name, self.documentation)
        buckets = [(floatToGoString(b), float(c)) for b, c in zip(self.bounds, cumulative[:-1], strict=True)]
        family.add_metric([], [*buckets, ("+Inf", float(cumulative[-1]))], total)
        yield family


class DriftCollector(Collector):
    """Exports the latest drift and model-update verdicts at scrape time.

    ``source`` returns plain rows (dicts keyed by the label names plus values), so this
    module need not know the judge's types.
    """

    def __init__(self, source: Callable[[], dict[str, list[dict]]]) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        rows = self._source()
        per_key = {
            "attnmon_drift_score": ("Jensen-Shannon distance between the current window and the baseline.", "score"),
            "attnmon_drift_p_value": ("Benjamini-Hochberg adjusted p-value of the chi-square test against the baseline.", "p_adjusted"),
            "attnmon_drift_threshold": ("Minimum Jensen-Shannon distance for a drift verdict.", "threshold"),
            "attnmon_drift_samples": ("Events in the last judged window.", "samples"),
            "attnmon_drift_verdict": ("1 while the statistic is judged drifting (after hysteresis), else 0.", "drifting"),
        }
        for name, (help_text, field) in per_key.items():
            family = GaugeMetricFamily(name, help_text, labels=DRIFT_LABELS)
            for row in rows.get("keys", ()):
                family.add_metric([str(row[label]) for label in DRIFT_LABELS], float(row[field]))
            yield family
        cohort = GaugeMetricFamily(
            "attnmon_drift_cohort_verdict", "1 while any statistic of the cohort is judged drifting.",
            labels=COHORT_VERDICT_LABELS,
        )
        for row in rows.get("cohorts", ()):
            cohort.add_metric([str(row[label]) for label in COHORT_VERDICT_LABELS], float(row["drifting"]))
        yield cohort
        paired = {
            "attnmon_update_paired_divergence": ("Mean per-event Jensen-Shannon distance, in the last judged window, between the new and the previous version's attention of the layer on the same events, each version on its own window, over the union of the positions either reads.", "mean_js"),
            "attnmon_update_paired_pairs": ("Events compared pairwise between the new and the previous version since the update.", "pairs"),
            "attnmon_update_paired_effective_users": ("Effective number of users (Kish) behind the last judged window's pairs: the sample size the paired test uses.", "effective_users"),
            "attnmon_update_paired_share_above": ("Share of the last judged window's pairs whose per-event JS exceeds the paired cutoff (a benign retrain may reach the tolerated share).", "share_above"),
            "attnmon_update_paired_verdict": ("1 while the paired comparison says the model changed the layer's attention (rows moved past the tolerance, or per-event agreement below its cutoff) or, on the last layer, what it serves (its recomputed lists on the same events at least twice as concentrated as the previous version's), else 0.", "changed"),
            "attnmon_update_paired_window_flagged": ("1 when the paired comparison's last judged window of the layer was flagged (rows, agreement or, on the last layer, served lists), before hysteresis: a second flagged window in a row sets attnmon_update_paired_verdict. Absent for a row restored from a state file written before this gauge existed.", "window_flagged"),
            "attnmon_update_paired_agreement": ("Per-event agreement of the layer: rank correlation, within history-length strata, of the previous and the new version's attention statistics on the same events (median over statistics; every benign retrain measured >= 0.31). Judged on the last layer only; absent until judged.", "agreement"),
            "attnmon_update_paired_served_ratio": ("Concentration of what the new version would serve over what the previous one would, on the same events: each version's recomputed top-10 lists, the share of their slots on their own top 10 items, new over previous (benign retrains measured 0.64-1.31; 2 or more, credibly, is a model-caused change). On the last layer's series only; absent until judged.", "served_ratio"),
        }
        for name, (help_text, field) in paired.items():
            family = GaugeMetricFamily(name, help_text, labels=PAIRED_LABELS)
            for row in rows.get("paired", ()):
                if row.get(field) is not None:
                    family.add_metric([str(row[label]) for label in PAIRED_LABELS], float(row[field]))
            yield family
        explained = GaugeMetricFamily(
            "attnmon_drift_cohort_explained",
            "1 while a drifting cohort is explained by a stronger drifting cohort of another dimension (by_*).",
            labels=("kind", "model_version", "dimension", "cohort", "by_dimension", "by_cohort"),
        )
        for row in rows.get("explained", ()):
            explained.add_metric([row["kind"], row["model_version"], row["dimension"], row["cohort"],
                                  row["by_dimension"], row["by_cohort"]], 1.0)
        yield explained
        ready = GaugeMetricFamily(
            "attnmon_baseline_ready", "1 once the version's baseline for the cohort is frozen.",
            labels=("model_version", "dimension", "cohort"),
        )
        for row in rows.get("baselines", ()):
            ready.add_metric([row["model_version"], row["dimension"], row["cohort"]], float(row["ready"]))
        yield ready
        yield from _item_families(rows)


def _item_families(rows: dict[str, list[dict]]) -> Iterable[Metric]:
    """The attention mass per item (rows from ``monitor.export.item_rows``)."""
    per_cohort = {
        "attnmon_items_narrowed": ("1 while the cohort's attention is judged narrowed onto fewer items than its reference's (after hysteresis), else 0.", "narrowed"),
        "attnmon_items_drift_score": ("Jensen-Shannon distance, bias-corrected, between the window's and the reference's share of attention on the window's top items (cross-fitted between two halves of its users) and elsewhere.", "score"),
        "attnmon_items_top_overlap_ratio": ("Share of the window's top items that are among the reference's top items.", "overlap"),
    }
    item_rows = rows.get("items", ())
    for name, (help_text, field) in per_cohort.items():
        family = GaugeMetricFamily(name, help_text, labels=ITEM_LABELS)
        for row in item_rows:
            family.add_metric([str(row[label]) for label in ITEM_LABELS], float(row[field]))
        yield family
    per_side = {
        "attnmon_items_top_share_ratio": ("Share of the attention mass held by the top items (judge.item_top_k), in the last judged window and in its reference.", "top_share"),
        "attnmon_items_effective_count": ("Effective number of attended items, exp of the entropy of the attention mass per item (a lower bound once the sketch drops items), window and reference.", "effective_items"),
    }
    for name, (help_text, field) in per_side.items():
        family = GaugeMetricFamily(name, help_text, labels=(*ITEM_LABELS, "side"))
        for row in item_rows:
            labels = [str(row[label]) for label in ITEM_LABELS]
            family.add_metric([*labels, "window"], float(row[field]))
            family.add_metric([*labels, "reference"], float(row[f"reference_{field}"]))
        yield family
    shares = GaugeMetricFamily(
        "attnmon_item_attention_share_ratio",
        "Share of the cohort's attention mass on one of its top items (rank in the window), in the last judged window and in its reference.",
        labels=ITEM_SHARE_LABELS,
    )
    for row in rows.get("item_shares", ()):
        shares.add_metric([str(row[label]) for label in ITEM_SHARE_LABELS], float(row["share"]))
    yield shares
    info = GaugeMetricFamily("attnmon_item_info", "1 for each exported item, with its catalogue title (cleaned, at most 80 characters).",
                             labels=("item", "title"))
    for row in rows.get("item_titles", ()):
        info.add_metric([row["item"], row["title"]], 1.0)
    yield info


class UsageCollector(Collector):
    """Exports at scrape time how full the bounded drift state is, and when each tracked
    model version was last seen.

    ``source`` returns plain rows: ``"series"``, one per component (``judge``, ``paired``)
    with ``in_use``, ``limit`` and ``refused`` (observations refused since this process
    started); ``"versions"``, one per tracked version with ``last_seen`` (Unix seconds).
    """

    def __init__(self, source: Callable[[], dict[str, list[dict]]]) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        rows = self._source()
        in_use = GaugeMetricFamily(
            "attnmon_drift_series",
            "Series held against the series limit (judge: windows and baselines; paired: paired cohorts).",
            labels=("component",),
        )
        limit = GaugeMetricFamily(
            "attnmon_drift_series_limit", "Series limit (max_keys): a new series beyond it is refused, not judged.",
            labels=("component",),
        )
        refused = CounterMetricFamily(
            "attnmon_drift_observations_refused",
            "Observations dropped because their series is new and the series limit is reached "
            "(judge: one per event and series; paired: one per event pair).",
            labels=("component",),
        )
        for row in rows.get("series", ()):
            in_use.add_metric([row["component"]], float(row["in_use"]))
            limit.add_metric([row["component"]], float(row["limit"]))
            refused.add_metric([row["component"]], float(row["refused"]))
        yield in_use
        yield limit
        yield refused
        last_seen = GaugeMetricFamily(
            "attnmon_model_version_last_seen_timestamp_seconds",
            "When the version was last seen in the stream (or replaced there); absent that long it retires.",
            labels=("model_version",),
        )
        for row in rows.get("versions", ()):
            last_seen.add_metric([row["model_version"]], float(row["last_seen"]))
        yield last_seen


PAIRED_OUTCOMES = ("paired", "previous_unreadable", "previous_unavailable", "over_cap")  # attnmon_update_paired_events_total
PAIRED_SIDES = ("previous", "new")  # attnmon_update_paired_items_unknown_total: the version lacking the item


def _remove(metric: Counter | Gauge, *labels: str) -> None:
    """Remove one labelled series if present (older prometheus-client raises KeyError when absent)."""
    try:
        metric.remove(*labels)
    except KeyError:
        pass


class AgentMetrics:
    """The agent's ordinary metrics, pre-created so every outcome series exists at 0."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # Prometheus negotiates OpenMetrics, where every counter and histogram would also
        # export a `_created` series: one more series each, queried by nothing.
        disable_created_metrics()
        self.registry = registry
        self.events = Counter(
            "attnmon_events", "Prediction events by outcome and reason.", ("outcome", "reason"), registry=registry
        )
        self.events.labels("processed", "ok")
        for reason in Reason:
            self.events.labels("dead_lettered", reason.value)
        self.skipped_offsets = Counter(
            "attnmon_kafka_skipped_offsets",
            "Offsets passed over because their record batch could not be decoded (each range is also dead-lettered).",
            registry=registry,
        )
        self.commit_failures = Counter(
            "attnmon_kafka_commit_failures",
            "Offset commits refused because the group was rebalancing (the revocation commits instead).",
            registry=registry,
        )
        self.state_unusable = Counter(
            "attnmon_state_unusable",
            "Checkpoints that could not be restored at start-up (kept aside as state.json.unusable-*).",
            registry=registry,
        )
        self.held = Gauge(
            "attnmon_events_held", "Events waiting for their model version to appear.", registry=registry
        )
        self.held_bytes = Gauge(
            "attnmon_events_held_bytes", "Record bytes of the events waiting for their model version.",
            registry=registry,
        )
        self.unknown_items = Counter(
            "attnmon_history_items_unknown",
            "History items the model version does not know, skipped inside the span of history it reads.",
            ("model_version",), registry=registry,
        )
        self.truncated = Counter(
            "attnmon_history_truncated", "Histories with items older than the model's window (those are not read).",
            ("model_version",), registry=registry,
        )
        self.stage_seconds = Histogram(
            "attnmon_stage_duration_seconds", "Wall time per pipeline stage per batch.", ("stage",),
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        self.batch_events = Histogram(
            "attnmon_batch_events", "Events per processed batch.",
            buckets=(1, 8, 32, 64, 128, 256, 512, 1024, 2048), registry=registry,
        )
        self.latency = BulkHistogram(
            "attnmon_event_to_metric_latency_seconds", "From the event's timestamp to its statistics being observed.",
            LATENCY_BUCKETS,
        )
        registry.register(self.latency)
        self.lag = Gauge(
            "attnmon_consumer_lag_records", "Records between the consumer's position and the partition end.",
            ("topic", "partition"), registry=registry,
        )
        self.model_info = Gauge(
            "attnmon_model_info", "1 for each model version loaded in memory.", ("model_version", "label"),
            registry=registry,
        )
        self.model_load_seconds = Histogram(
            "attnmon_model_load_seconds", "Time to verify and load a model version.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=registry,
        )
        self.model_load_failures = Counter(
            "attnmon_model_load_failures", "Model versions that could not be loaded, by cause.", ("cause",),
            registry=registry,
        )
        for cause in ("missing", "invalid"):
            self.model_load_failures.labels(cause)
        self.model_update = Gauge(
            "attnmon_model_update_timestamp_seconds", "When a model version first appeared in the stream after another.",
            ("model_version", "previous_version"), registry=registry,
        )
        self.ready = Gauge("attnmon_ready", "1 when partitions are assigned and a model is loaded.", registry=registry)
        self.last_checkpoint = Gauge(
            "attnmon_last_checkpoint_timestamp_seconds", "When state and offsets were last checkpointed.",
            registry=registry,
        )
        self.judge_runs = Counter("attnmon_judge_runs", "Drift judgements run.", registry=registry)
        self.versions_retired = Counter(
            "attnmon_model_versions_retired",
            "Model versions forgotten after being absent from the stream for pipeline.retire_after_s.",
            registry=registry,
        )
        self.paired_events = Counter(
            "attnmon_update_paired_events",
            "Events sampled for the paired comparison after a model update, by outcome: paired; previous_unreadable "
            "(the previous version knows none of the history's items); previous_unavailable (it could not be loaded); "
            "over_cap (sampled, left out by pipeline.paired_max_per_batch).",
            ("model_version", "previous_version", "outcome"), registry=registry,
        )
        self.paired_items_unknown = Counter(
            "attnmon_update_paired_items_unknown",
            "History items, inside the span a paired event compares, that one version knows and the other does not "
            "(side: the version lacking the item); it reads them as weight 0.",
            ("model_version", "previous_version", "side"), registry=registry,
        )
        self.forward_pool_replaced = Counter(
            "attnmon_forward_pool_replacements", "Forward-pass process pools replaced after a child process died.",
            registry=registry,
        )
        self.attention = AttentionHistograms()
        registry.register(self.attention)
        self.attention_per_head = AttentionHistograms(per_head=True)  # stays empty unless stats.per_head
        registry.register(self.attention_per_head)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage).observe(seconds)

    def forget_version(self, version: str, previous: str | None = None) -> None:
        """Remove every series labelled with a retired ``version``: its attention histograms,
        unknown-item and truncation counters, and its update from ``previous`` if it had one
        (the update timestamp and the paired comparison's event and unknown-item counters).
        (An update *to* a newer version that names it as previous_version stays: that series
        belongs to the newer version.)"""
        self.attention.forget(version)
        self.attention_per_head.forget(version)
        _remove(self.unknown_items, version)
        _remove(self.truncated, version)
        if previous is not None:
            _remove(self.model_update, version, previous)
            for outcome in PAIRED_OUTCOMES:
                _remove(self.paired_events, version, previous, outcome)
            for side in PAIRED_SIDES:
                _remove(self.paired_items_unknown, version, previous, side)

    def start_update(self, version: str, previous: str, at: float) -> None:
        """A model update began: its timestamp, and its paired counters created at 0 (every
        outcome and side), so the dashboards and alerts read 0, not a missing series."""
        self.model_update.labels(version, previous).set(at)
        for outcome in PAIRED_OUTCOMES:
            self.paired_events.labels(version, previous, outcome)
        for side in PAIRED_SIDES:
            self.paired_items_unknown.labels(version, previous, side)


class ScaleMetrics:
    """A replica's scale-out role (``scale.mode: replica``; monitor.stream.replica). Not
    created by a single agent, so its exposition is unchanged."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.judging = Gauge("attnmon_scale_judge", "1 while this replica is the elected judge (scale.mode replica).",
                             registry=registry)
        self.closed_window = Gauge(
            "attnmon_scale_closed_window",
            "The last event-time window the elected judge has merged and judged (its start is the value x "
            "intervals.judge_s seconds); NaN on a replica that does not judge.", registry=registry)
        self.closed_window.set(float("nan"))
        self.partials_published = Counter(
            "attnmon_scale_partials_published", "Sealed partials this replica has published (partition x window).",
            registry=registry)

