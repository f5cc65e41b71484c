"""``attnmon demo``: the whole agent on an embedded default, no external services.

Events are made in-process from MovieLens timelines (``replay.EventFactory``), fed
through ``MemorySource`` to the very same ``Agent`` the daemon runs, with /metrics
served, and a live summary printed every few seconds.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TextIO

from prometheus_client import CollectorRegistry

from model import checkpoint
from model.data import load_movielens
from monitor.drift.judge import JudgeConfig
from monitor.stream.agent import Agent
from monitor.export.http import MetricsServer
from monitor.stream.memory import MemorySink, MemorySource
from monitor.export.metrics import statistic_metric
from monitor.tools.replay import EventFactory, Scenario, serving_traffic
from monitor.settings import HttpSettings, IntervalSettings, ModelSettings, Settings, StateSettings

log = logging.getLogger(__name__)

DEMO_TRAIN_BUDGET_S = 90.0


def ensure_model(root: Path, out: TextIO) -> str:
    """The newest published version under root; trains a quick one when there is none."""
    versions = checkpoint.list_versions(root)
    if versions:
        return versions[-1].name
    from model.recipe import train_sasrec
    from model.train import TrainConfig

    out.write(f"no model under {root}: training a quick demo model ({DEMO_TRAIN_BUDGET_S:.0f}s budget; "
              "`attnmon train` makes the full one)\n")
    published = train_sasrec(root, train_config=TrainConfig(time_budget_s=DEMO_TRAIN_BUDGET_S),
                             label="demo-quick",
                             on_epoch=lambda e, loss, ndcg: out.write(f"  epoch {e} loss {loss:.3f}\n"))
    out.write(f"published {published.version}: test NDCG@10 {published.test.ndcg10:.4f}\n")
    return published.version


def _summary(agent: Agent, sink: MemorySink, source: MemorySource, started: float, out: TextIO) -> None:
    reg = agent.registry
    processed = reg.get_sample_value("attnmon_events_total", {"outcome": "processed", "reason": "ok"}) or 0
    elapsed = time.monotonic() - started
    lag = sum(source.lag().values())
    dead = ", ".join(f"{r}={n}" for r, n in sorted(sink.by_reason.items())) or "none"
    out.write(f"[{elapsed:6.1f}s] processed {processed:,.0f} ({processed / max(elapsed, 1e-9):,.0f}/s)  "
              f"lag {lag:,}  dead-lettered: {dead}\n")
    labels = agent.pipeline.assigner.labels().get("platform", ())
    versions = agent.models.loaded_versions()
    # One collection for every cell: the agent folds meanwhile, and a _sum and a _count read
    # in two collections could come from different batches (or one be missing).
    shown = {statistic_metric(stat) for stat in ("entropy", "max_weight", "recent_mass")}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for m in reg.collect() if m.name in shown for s in m.samples}
    for version in versions[-1:]:
        for cohort in labels:
            cells = []
            for stat in ("entropy", "max_weight", "recent_mass"):
                name = statistic_metric(stat)
                key = tuple(sorted({"model_version": version, "dimension": "platform", "cohort": cohort,
                                    "layer": "1"}.items()))
                total, count = samples.get((name + "_sum", key)), samples.get((name + "_count", key))
                if total is not None and count:
                    cells.append(f"{stat} {total / count:.3f}")
            if cells:
                out.write(f"    {version} platform={cohort:<8} " + "  ".join(cells) + "\n")
    report = agent.pipeline.last_report
    if report is not None:
        drifting = [c for c in report.cohorts if c.drifting]
        out.write(f"    judge round {report.round}: {report.judged} series judged, {report.collecting} baselines "
                  f"collecting, {len(drifting)} cohort(s) drifting"
                  + "".join(f"\n      DRIFT {c.kind} {c.model_version} {c.dimension}={c.cohort}" for c in drifting)
                  + "\n")
    out.flush()


def run_demo(*, events: int, rate: float | None, checkpoints: Path, port: int, state_dir: Path | None = None,
             scenario: Scenario | None = None, out: TextIO = sys.stdout, summary_every_s: float = 3.0) -> int:
    """Replay ``events`` through the agent; 0 when it ran to the end, 1 when the agent failed.

    ``state_dir`` None (the default) runs on fresh state in a temporary directory, so every
    run replays its events; a directory keeps the state, and a later run resumes from it.
    """
    if state_dir is None:
        with tempfile.TemporaryDirectory(prefix="attnmon-demo-state-") as fresh:
            return run_demo(events=events, rate=rate, checkpoints=checkpoints, port=port, state_dir=Path(fresh),
                            scenario=scenario, out=out, summary_every_s=summary_every_s)
    version = ensure_model(checkpoints, out)
    data = load_movielens()
    scenario = scenario or Scenario(versions=((0, version),))
    models = {v: checkpoint.load(checkpoints / v).model for _, v in scenario.versions}
    # Stationary, interleaved traffic: MovieLens in its own time order is bursty (a 2,000-event
    # slice holds ~40 users, and histories lengthen through the replay), so a stable model's
    # attention would drift against a baseline taken from the first events.
    factory = EventFactory(serving_traffic(data), models, scenario, seed=0)
    intervals = IntervalSettings(judge_s=2.0, checkpoint_s=10.0, lag_s=1.0)
    settings = Settings(
        models=ModelSettings(root=checkpoints),
        state=StateSettings(directory=state_dir),
        http=HttpSettings(port=port),
        intervals=intervals,
        # A demo lasts seconds, not the day a production reference spans: references collect
        # for three judge intervals (the least a model update needs is raise_after = 2).
        judge=JudgeConfig(reference_seconds=3 * intervals.judge_s),
    )
    sink = MemorySink()
    holder: dict[str, MemorySource] = {}

    def make_source(on_assigned, on_revoked) -> MemorySource:
        holder["source"] = MemorySource(factory.events(events), events, on_assigned, on_revoked, rate_per_s=rate)
        return holder["source"]

    agent = Agent(settings, make_source, sink, CollectorRegistry())
    server = MetricsServer(settings.http.host, settings.http.port, agent.registry, agent.healthy, agent.ready)
    out.write(f"serving http://{settings.http.host}:{server.port}/metrics ; replaying {events:,} events "
              f"({'as fast as possible' if rate is None else f'{rate:,.0f}/s'})\n")
    failure: list[BaseException] = []

    def run_agent() -> None:
        try:
            agent.run()
        except BaseException as error:  # noqa: BLE001 -- reported below, with a non-zero exit
            failure.append(error)

    worker = threading.Thread(target=run_agent, name="attnmon-agent")
    started = time.monotonic()
    worker.start()
    source = holder["source"]
    try:
        while worker.is_alive():
            worker.join(timeout=summary_every_s)
            if not worker.is_alive():
                break
            _summary(agent, sink, source, started, out)
            if source.exhausted:
                agent.stop()  # the agent drains the batch in flight before it stops
    except KeyboardInterrupt:
        agent.stop()
    worker.join()
    server.close()
    if failure:
        error = failure[0]
        out.write(f"the agent stopped on an error: {type(error).__name__}: {error}\n")
        log.error("the agent stopped on an error", exc_info=error)
        return 1
    _summary(agent, sink, source, started, out)
    return 0

