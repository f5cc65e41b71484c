"""The pipeline's settings: batch sizes, forward processes, the hold buffer, pairing, retirement.

Kept apart from ``monitor.stream.pipeline`` so that loading settings imports neither torch
nor the pipeline.
"""

from __future__ import annotations

import dataclasses

from monitor.attention.stats import StatsConfig
from monitor.stream.events import DEFAULT_LIMITS, EventLimits

# Alerts treat a version with no events for 5 minutes as no longer serving
# (model_version:attnmon_attention_events:serving); retirement must not come sooner.
MIN_RETIRE_AFTER_S = 300.0


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    # Rows per forward pass. 64 rather than 128: in the forward process, 128-row chunks
    # outgrow the core's 1 MiB L2 (the agent ran 12.5k/11.2k events/s against 14.4k/12.9k).
    max_batch: int = 64
    # Child processes that run the forward passes (monitor/attention/forward.py): 1 leaves the other
    # core of 2 to polling and folding. 0 runs them in this process on forward_threads.
    forward_processes: int = 1
    forward_threads: int = 2  # with forward_processes 0: passes in parallel, one intra-op thread each
    unknown_version_grace_s: float = 30.0  # how long an event may wait for its model version
    max_held: int = 10_000  # events waiting at most; beyond it they are dead-lettered at once
    # and record bytes they may hold (they are checkpointed too): 10,000 events of ~1 KiB fit
    max_held_bytes: int = 16 * 1024 * 1024
    paired_fraction: float = 0.2  # share of a new version's events also run through the previous version
    paired_max_per_batch: int = 64  # cap on those per batch, so an update cannot halve throughput
    # ... of which at most this many (the lowest event hashes) also get each version's served list
    # recomputed: a pass to the item scores, about 1.5 attention passes (bench/update_cost.py).
    paired_lists_max_per_batch: int = 16
    max_versions_remembered: int = 32  # stream order of versions kept for update detection
    # A version absent from the stream this long (processing time, while other versions' events
    # flow) is forgotten: judge, paired comparison, update bookkeeping and its exported series.
    # A day: covers the daily traffic cycle (a version serving one region's daytime is not
    # dropped overnight) and keeps a rollback within a day judged against its own baselines,
    # while the judge's series cap (~50 versions at full cohort cardinality) holds every version
    # served in a day. At least 5 minutes: alerts already count a version without events for
    # 5 minutes as no longer serving; retiring sooner would forget a version they still watch.
    retire_after_s: float = 86_400.0
    # Top attended items exported per (kind, cohort, layer), each with its share in the window and
    # in the reference (attnmon_item_attention_share_ratio) and its title (attnmon_item_info): at
    # most judge.item_top_k are known, and at most 20 are allowed (docs/drift.md, "Exported").
    items_exported: int = 5
    stats: StatsConfig = StatsConfig()
    limits: EventLimits = DEFAULT_LIMITS

    def __post_init__(self) -> None:
        if (self.max_batch < 1 or self.forward_threads < 1 or self.max_held < 0 or self.paired_max_per_batch < 0
                or self.paired_lists_max_per_batch < 0):
            raise ValueError("max_batch and forward_threads must be >= 1; max_held, paired_max_per_batch and "
                             "paired_lists_max_per_batch >= 0")
        if self.max_held_bytes < 0:
            raise ValueError("max_held_bytes must be >= 0")
        if self.forward_processes < 0:
            raise ValueError("forward_processes must be >= 0")
        if not 0.0 <= self.paired_fraction <= 1.0:
            raise ValueError("paired_fraction must be in [0, 1]")
        if self.unknown_version_grace_s < 0:
            raise ValueError("unknown_version_grace_s must be >= 0")
        if not 0 <= self.items_exported <= 20:
            raise ValueError("items_exported must be in [0, 20]")
        if not self.retire_after_s >= MIN_RETIRE_AFTER_S:  # also refuses NaN; inf: never retire
            raise ValueError(f"retire_after_s must be >= {MIN_RETIRE_AFTER_S:.0f} (seconds)")
