"""``attnmon demo``: the whole agent on an embedded default, telling a release story.

No external services: events are made in-process from MovieLens timelines
(``replay.EventFactory``) and fed through ``MemorySource`` to the very same ``Agent`` the
daemon runs, which serves /metrics and the live page at / (``monitor.export.page``).

The story (``story_phases``), each phase ``phase_events`` events of stationary traffic:

1. stable traffic on a base model: baselines collect and freeze, nothing drifts;
2. a benign update: the same recipe retrained at another seed;
3. a harmful update: the recipe with a context cut to the 3 most recent items.

(A fourth phase, a model captured by a narrow set of items, joins the story once the
agent tracks which items its models attend to: see ``story_phases``.)

The terminal shows each verdict as the judge reaches it: the cohort, the statistics
that moved with their score, threshold and p-value, the paired comparison, and the
alert that would fire with its Alertmanager route (``monitor.tools.alerting``, read from
the shipped files). The model-update alert's severity follows the paired comparison
(critical while it confirms, flags a window or has not judged, warning once it judged without
confirming or flagging), so the narration also tells when a later paired verdict hands a cohort from one to the
other. Without ``events`` it keeps serving, at ``idle_rate`` once the story is told,
until Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from prometheus_client import CollectorRegistry

from model import checkpoint
from model.data import load_movielens
from monitor.drift.judge import MODEL_UPDATE, JudgeConfig, JudgeReport
from monitor.export.http import MetricsServer
from monitor.stream.agent import Agent
from monitor.stream.memory import MemorySink, MemorySource
from monitor.settings import HttpSettings, IntervalSettings, ModelSettings, Settings, StateSettings
from monitor.tools.alerting import (ALERTS_DIR, PAIRED, PAIRED_CONFIRMS, PAIRED_NONE, PAIRED_UNCONFIRMED,
                                    AlertCatalogue)
from monitor.tools.replay import EventFactory, Scenario, serving_traffic

log = logging.getLogger(__name__)

PHASE_EVENTS = 20_000  # long enough for most cohorts' references (2,000 events, 30 users) to freeze
IDLE_RATE = 200.0  # events per second once the story is told (the page stays live, the CPU rests)


@dataclasses.dataclass(frozen=True)
class Phase:
    start: int  # first event of the phase
    role: str  # demo_models role of the version serving it
    version: str
    title: str
    description: str


def story_phases(versions: Mapping[str, str], phase_events: int = PHASE_EVENTS) -> tuple[Phase, ...]:
    """The story's phases over role -> version (``demo_models.ensure_demo_models``)."""
    phases = (
        Phase(0, "base", versions["base"], "stable traffic",
              "the base model serves; baselines collect and freeze; nothing should drift"),
        Phase(phase_events, "reseed", versions["reseed"], "benign update",
              "the same recipe retrained at another seed replaces it: attention moves a little; the paired "
              "comparison should not confirm a model-caused change"),
        Phase(2 * phase_events, "context_cut", versions["context_cut"], "harmful update",
              "a context cut to the 3 most recent items replaces it: attention collapses onto the last items, "
              "the judge and the paired comparison should page"),
    )
    # Hook: the narrow-item capture (a model whose attention a narrow set of items captures)
    # is the fourth phase. The agent tracks the top attended items (the page shows them), but
    # their judgement does not yet fire on a trained capture; add its Phase here when it does.
    return phases


class Narrator:
    """Prints the story: phase changes, verdict changes with their alert and route, status."""

    def __init__(self, agent: Agent, source: MemorySource, sink: MemorySink, phases: tuple[Phase, ...],
                 catalogue: AlertCatalogue | None, out: TextIO, started: float) -> None:
        self._agent, self._source, self._sink, self._phases = agent, source, sink, phases
        self._catalogue, self._out, self._started = catalogue, out, started
        self._announced = -1
        self._seen = 0
        self.labels = {p.version: f"{p.role}" for p in phases}
        self.drifting_by_phase: dict[str, int] = {}  # the most cohorts drifting at once, per phase
        self.paged: list[str] = []  # the alerts that would page, as announced
        # (version, dimension, cohort) of drifting model-update cohorts -> the paired state told
        self._update_drifting: dict[tuple[str, str, str], int] = {}
        self._served_raised: set[tuple[str, str, str, str]] = set()  # (kind, version, dimension, cohort)
        self.served_by_phase: dict[str, int] = {}  # served-list verdicts raised, per phase

    def _stamp(self) -> str:
        return f"[{time.monotonic() - self._started:6.1f}s]"

    def _name(self, version: str) -> str:
        role = self.labels.get(version)
        return f"{version} ({role})" if role else version

    def phase(self) -> Phase:
        position = self._source.position
        return [p for p in self._phases if p.start <= position][-1]

    def tell(self, *, status: bool = True) -> None:
        out = self._out
        current = self._phases.index(self.phase())
        while self._announced < current:
            self._announced += 1
            p = self._phases[self._announced]
            out.write(f"{self._stamp()} == phase {self._announced + 1}/{len(self._phases)}: {p.title} from event "
                      f"{p.start:,}: {self._name(p.version)} serves. {p.description}\n")
        for change in self._agent.pipeline.live.changes(self._seen):
            self._seen = change["seq"]
            self._change(change)
        self._paired_judged()
        if status:
            self._status()
        out.flush()

    def _status(self) -> None:
        reg = self._agent.registry
        processed = reg.get_sample_value("attnmon_events_total", {"outcome": "processed", "reason": "ok"}) or 0
        elapsed = time.monotonic() - self._started
        dead = ", ".join(f"{r}={n}" for r, n in sorted(self._sink.by_reason.items())) or "none"
        report = self._agent.pipeline.last_report
        line = (f"{self._stamp()} processed {processed:,.0f} ({processed / max(elapsed, 1e-9):,.0f}/s)  "
                f"dead-lettered: {dead}")
        if report is not None:
            drifting = [c for c in report.cohorts if c.drifting and c.active]
            title = self.phase().title
            self.drifting_by_phase[title] = max(self.drifting_by_phase.get(title, 0), len(drifting))
            line += (f"  | judge round {report.round}: {report.judged} series judged, {report.collecting} baselines "
                     f"collecting, {len(drifting)} cohort(s) drifting")
            self._served(report, title)
            updated = [c for c in report.cohorts if c.kind == MODEL_UPDATE and c.model_version == self.phase().version]
            if updated:
                line += (f"; the update to {self.phase().role}: {sum(c.drifting for c in updated)} of {len(updated)} "
                         "judged cohort(s) drifted from the previous version")
        self._out.write(line + "\n")

    def _served(self, report: JudgeReport, title: str) -> None:
        """Narrate served-list verdicts (RecommendationsNarrowedToFewItems) as they are raised."""
        for r in report.items:
            if r.source != "served":
                continue
            key = (r.kind, r.key.model_version, r.key.dimension, r.key.cohort)
            if not r.drifting:
                self._served_raised.discard(key)  # cleared: a later raise is told again
                continue
            if key in self._served_raised:
                continue
            self._served_raised.add(key)
            self.served_by_phase[title] = self.served_by_phase.get(title, 0) + 1
            self._out.write(f"{self._stamp()} SERVED lists narrowed ({r.kind}): {r.key.dimension}={r.key.cohort} of "
                            f"{self._name(r.key.model_version)}: top items {r.reference_top_share:.0%} of the slots "
                            f"before, {r.top_share:.0%} now ({r.ratio:.1f}x, floor {r.threshold:g}x)\n")

    def _paired_lines(self, verb: str, cohort: str, version: str, previous: str, layers: list[dict]) -> None:
        out = self._out
        out.write(f"{self._stamp()} PAIRED {verb}: {cohort}, {self._name(version)} vs {self._name(previous)} "
                  "on the same events\n")
        for layer in layers:
            out.write(f"           layer {layer['layer']}: {layer['share_above']:.0%} of rows moved past JS "
                      f"{layer['cutoff']:.2f} (a benign retrain: <= {layer['benign_fraction']:.0%}); "
                      f"{layer['pairs']} pairs, {layer['effective_users']:.0f} effective users, "
                      f"p adj. {layer['p_adjusted']:.2g}{_agreement_note(layer)}\n")

    def _paired_judged(self) -> None:
        """A drifting update cohort whose paired state moved without a confirmation in the change
        log (which records only confirmations and their end): a first judged window that does not
        confirm, or a last window flagged (or no longer flagged) before any confirmation."""
        if not self._update_drifting:
            return
        for v in self._agent.pipeline.live.snapshot().get("verdicts", []):
            key = (v["model_version"], v["dimension"], v["cohort"])
            paired = v.get("paired")
            if v["kind"] != MODEL_UPDATE or key not in self._update_drifting or paired is None:
                continue
            value = _paired_value(paired)
            if value == self._update_drifting[key] or paired["status"] == "confirms":
                continue  # unchanged, or a confirmation: the change log tells it
            verb = ("flags a model-caused change in its last window, not yet confirmed" if value == PAIRED_CONFIRMS
                    else "judged, does not confirm a model-caused change")
            self._paired_lines(verb, f"{v['dimension']}={v['cohort']}", v["model_version"], v["reference_version"],
                               paired["layers"])
            self._pending_note(paired)
            self._update_paired(key, value)

    def _pending_note(self, paired: dict) -> None:
        """Not confirmed yet, but a layer's last window was flagged: the next flagged one confirms."""
        if paired["status"] != "confirms" and any(r.get("flagged") for r in paired["layers"]):
            self._out.write("           (a layer's last paired window was flagged: a second flagged window in a row "
                            "confirms; the alert is critical meanwhile, as for a confirmation)\n")

    def _update_paired(self, key: tuple[str, str, str], value: int) -> None:
        """The paired state of a drifting update cohort changed: say which alert it now fires."""
        told, self._update_drifting[key] = self._update_drifting[key], value
        if self._catalogue is None:
            return
        before, page = self._catalogue.page_for(MODEL_UPDATE, told), self._catalogue.page_for(MODEL_UPDATE, value)
        if page is None:
            return
        if page == before:
            if value == PAIRED_CONFIRMS:
                self._out.write(f"           confirms the {page.alert} page above (its value 2: paired confirms)\n")
            return
        ends = f"{before.alert} ({before.severity}) ends; " if before is not None else ""
        self._out.write(f"           its value is now {value}: {ends}would fire: {page.describe()}\n")
        if page.severity == "critical":
            self.paged.append(f"{page.alert} {key[1]}={key[2]} {key[0]}")

    def _change(self, c: dict) -> None:
        out = self._out
        cohort = f"{c['dimension']}={c['cohort']}"
        if c["what"] == "paired":
            verb = "CONFIRMS a model-caused change" if c["model_caused"] else "no longer confirms a change"
            self._paired_lines(verb, cohort, c["model_version"], c["previous_version"], c["layers"])
            key = (c["model_version"], c["dimension"], c["cohort"])
            if key in self._update_drifting:
                self._update_paired(key, PAIRED_CONFIRMS if c["model_caused"] else PAIRED_UNCONFIRMED)
                return
            if c["model_caused"]:
                self._page(PAIRED, cohort, c["model_version"])
            return
        key = (c["model_version"], c["dimension"], c["cohort"])
        value = _paired_value(c.get("paired"))
        if c["kind"] == MODEL_UPDATE:
            if c["drifting"]:
                self._update_drifting[key] = value
            else:
                self._update_drifting.pop(key, None)
        if not c["drifting"]:
            out.write(f"{self._stamp()} cleared {c['kind']}: {cohort} of {self._name(c['model_version'])}\n")
            return
        out.write(f"{self._stamp()} DRIFT {c['kind']}: {cohort}, {self._name(c['model_version'])} against "
                  f"{self._name(c['reference_version'])}\n")
        for s in [s for s in c["series"] if s["drifting"]][:4]:
            out.write(f"           {s['statistic']} layer {s['layer']}: score (JS) {s['score']:.3f} >= threshold "
                      f"{s['threshold']:.2f}, p {s['p_value']:.2g}, BH-adjusted p {s['p_adjusted']:.2g}\n")
        paired = c.get("paired")
        if paired is None:
            out.write("           paired comparison: no verdict yet\n")
        else:
            shares = ", ".join(f"layer {r['layer']} {r['share_above']:.0%}" for r in paired["layers"])
            agreements = ", ".join(f"layer {r['layer']} {r['agreement']:.2f}" for r in paired["layers"]
                                   if r.get("agreement") is not None)
            ratios = [r["served_ratio"] for r in paired["layers"] if r.get("served_ratio") is not None]
            lists = f"; what it would serve, {ratios[0]:.1f}x as concentrated as the previous version" if ratios else ""
            out.write(f"           paired comparison {paired['status']} a model-caused change "
                      f"(rows past the cutoff: {shares}"
                      f"{f'; per-event agreement: {agreements}' if agreements else ''}{lists})\n")
            self._pending_note(paired)
        self._page(c["kind"], cohort, c["model_version"], value if c["kind"] == MODEL_UPDATE else None)

    def _page(self, kind: str, cohort: str, version: str, value: int | None = None) -> None:
        if self._catalogue is None:
            return
        page = self._catalogue.page_for(kind, value)
        if page is None:
            self._out.write(f"           no shipped alert fires on a {kind} verdict\n")
            return
        self._out.write(f"           would fire: {page.describe()}\n")
        if page.severity == "critical":
            self.paged.append(f"{page.alert} {cohort} {version}")


def _settings(models_root: Path, state_dir: Path, port: int, host: str) -> Settings:
    intervals = IntervalSettings(judge_s=2.0, checkpoint_s=10.0, lag_s=1.0)
    return Settings(
        models=ModelSettings(root=models_root),
        state=StateSettings(directory=state_dir),
        http=HttpSettings(host=host, port=port),
        intervals=intervals,
        # A demo lasts minutes, not the day a production reference spans: references collect
        # for three judge intervals (the least a model update needs is raise_after = 2).
        judge=JudgeConfig(reference_seconds=3 * intervals.judge_s),
    )


def run_demo(*, versions: Mapping[str, str], models_root: Path, events: int | None, rate: float | None = None,
             port: int = 9108, host: str = "127.0.0.1", state_dir: Path | None = None,
             phase_events: int = PHASE_EVENTS, idle_rate: float = IDLE_RATE, alerts_dir: Path | None = ALERTS_DIR,
             out: TextIO = sys.stdout, summary_every_s: float = 3.0, stop: threading.Event | None = None) -> int:
    """Tell the story through the agent; 0 when it ran to the end (or Ctrl-C), 1 when the agent failed.

    ``versions``: role -> version under ``models_root``; ``events`` None serves until Ctrl-C
    (or until ``stop`` is set: a caller running the demo in a thread).
    ``state_dir`` None (the default) runs on fresh state in a temporary directory, so every
    run replays its events; a directory keeps the state, and a later run resumes from it.
    """
    if state_dir is None:
        with tempfile.TemporaryDirectory(prefix="attnmon-demo-state-") as fresh:
            return run_demo(versions=versions, models_root=models_root, events=events, rate=rate, port=port,
                            host=host, state_dir=Path(fresh), phase_events=phase_events, idle_rate=idle_rate,
                            alerts_dir=alerts_dir, out=out, summary_every_s=summary_every_s, stop=stop)
    phases = story_phases(versions, phase_events)
    scenario = Scenario(versions=tuple((p.start, p.version) for p in phases))
    models = {p.version: checkpoint.load(models_root / p.version).model for p in phases}
    # Stationary, interleaved traffic: MovieLens in its own time order is bursty (a 2,000-event
    # slice holds ~40 users, and histories lengthen through the replay), so a stable model's
    # attention would drift against a baseline taken from the first events.
    factory = EventFactory(serving_traffic(load_movielens()), models, scenario, seed=0)
    settings = _settings(models_root, state_dir, port, host)
    sink = MemorySink()
    holder: dict[str, MemorySource] = {}

    def make_source(on_assigned, on_revoked) -> MemorySource:
        stream = factory.events(events if events is not None else sys.maxsize)
        holder["source"] = MemorySource(stream, events, on_assigned, on_revoked, rate_per_s=rate)
        return holder["source"]

    agent = Agent(settings, make_source, sink, CollectorRegistry())
    source = holder["source"]
    catalogue = AlertCatalogue(alerts_dir) if alerts_dir is not None else None
    story = {"phases": [{"title": p.title, "description": f"from event {p.start:,}: {p.version} ({p.role}) serves; "
                         + p.description, "start": p.start} for p in phases]}

    def live() -> dict:
        position = source.position
        current = [p for p in phases if p.start <= position][-1].start
        state = dict(agent.pipeline.live.snapshot())
        state["story"] = {"phases": [{**p, "current": p["start"] == current} for p in story["phases"]]}
        return state

    server = MetricsServer(settings.http.host, settings.http.port, agent.registry, agent.healthy, agent.ready,
                           live=live, title="attnmon demo")
    url = f"http://{settings.http.host}:{server.port}"
    out.write(f"live page: {url}/  (metrics: {url}/metrics) ; "
              + (f"replaying {events:,} events" if events is not None else "serving until Ctrl-C")
              + f" ({'as fast as possible' if rate is None else f'{rate:,.0f}/s'})\n")
    out.flush()
    failure: list[BaseException] = []

    def run_agent() -> None:
        try:
            agent.run()
        except BaseException as error:  # noqa: BLE001 -- reported below, with a non-zero exit
            failure.append(error)

    worker = threading.Thread(target=run_agent, name="attnmon-agent")
    started = time.monotonic()
    narrator = Narrator(agent, source, sink, phases, catalogue, out, started)
    story_end = phases[-1].start + phase_events
    told = False
    worker.start()
    try:
        while worker.is_alive():
            worker.join(timeout=summary_every_s)
            if not worker.is_alive():
                break
            narrator.tell()
            if events is None and not told and source.position >= story_end:
                told = True
                source.set_rate(idle_rate)
                out.write(f"{narrator._stamp()} the story is told; still serving {idle_rate:.0f} events/s. "
                          f"Look at {url}/ ; Ctrl-C stops.\n")
            if source.exhausted or (stop is not None and stop.is_set()):
                agent.stop()  # the agent drains the batch in flight before it stops
    except KeyboardInterrupt:
        out.write("stopping (Ctrl-C)\n")
        agent.stop()
    worker.join()
    server.close()
    if failure:
        error = failure[0]
        out.write(f"the agent stopped on an error: {type(error).__name__}: {error}\n")
        log.error("the agent stopped on an error", exc_info=error)
        return 1
    narrator.tell()
    drifts = ", ".join(f"{title}: {n}" for title, n in narrator.drifting_by_phase.items())
    served = ", ".join(f"{title}: {n}" for title, n in narrator.served_by_phase.items())
    out.write(f"most cohorts drifting at once, per phase: {drifts or 'no judgement yet'}\n"
              f"served-list verdicts raised, per phase: {served or 'none'}\n"
              f"would have paged: {len(narrator.paged)} alert(s)"
              + (f", first {narrator.paged[0]}" if narrator.paged else "") + "\n")
    out.flush()
    return 0


def _paired_value(paired: dict | None) -> int:
    """The model-update alert's value for a verdict's paired status (``live``'s ``_paired_status``):
    2 when it confirms or a layer's last window was flagged (``attnmon_update_paired_window_flagged``)."""
    if paired is None:
        return PAIRED_NONE
    if paired["status"] == "confirms" or any(layer.get("flagged") for layer in paired["layers"]):
        return PAIRED_CONFIRMS
    return PAIRED_UNCONFIRMED


def _agreement_note(layer: dict) -> str:
    """The layer's per-event agreement, once judged (monitor.drift.agreement)."""
    if layer.get("agreement") is None:
        return ""
    return (f"; per-event agreement {layer['agreement']:.2f} +- {layer['agreement_se']:.2f} "
            f"(a benign retrain: >= 0.31), p adj. {layer['agreement_p_adjusted']:.2g}")
