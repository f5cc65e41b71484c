"""Scale-out with real `attnmon run` processes (``scale.mode: replica``) on the real broker,
over one 4-partition log of events with a within-version cohort shift and a model update:

- 2 replicas (one of them the elected judge) give the verdicts of one process;
- so they do with a replica killed (kill -9) mid-stream: its partitions move, the new owner
  folds their open windows again from the last progress records;
- with the judge killed (kill -9), the other replica is elected within 15 s, resumes the
  judge's state from the state topic, and the final verdicts are the same.

"The verdicts" are everything the judge exports at the end: every series' drift verdict
and score (version, kind, dimension, cohort, statistic, layer), every cohort verdict, and
the update's paired comparison per (cohort, layer): its verdict, pairs, effective users,
share above the cutoff, divergence, agreement and served-list ratio (``attnmon_update_paired_*``; the replicas
pair the events of their own partitions, the judge merges them); only the judge exports them.
Pairing samples half the events of the new version and its per-batch cap is out of reach,
so the sample is a function of the events alone (a binding cap would make it one of the polls).
Everything is compared exactly but three continuous estimates, the mean divergence and the
agreement: they come from attention recomputed in batches, and a row's float32 attention
moves by ~1e-7 with the batch it is computed in (its padding and row count), which polls of
other sizes change; and the served-list ratio, read from item sketches (``TOLERANCE``). Windows are event time (``intervals.judge_s`` wide); the
events' times are fixed, and a last event per partition far in the future seals every real
window, so nothing depends on when a process noticed a partition idle (``scale.idle_s`` is
out of reach here).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from model.data import load_movielens
from monitor.settings import KafkaSettings
from monitor.stream.kafka import EventProducer, delete_topic, ensure_topic
from monitor.tools.replay import Scenario
from bench import scenarios

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4
EVENTS = 6000
WIDTH_S = 2.0
STEP_MS = 4  # 250 events/s of event time: 500 per window, 125 per partition
BASE_MS = 1_764_000_000_000  # a round multiple of the window width
LAST_WINDOW = int((BASE_MS + (EVENTS - 1) * STEP_MS) // (WIDTH_S * 1000))
TAKEOVER_S = 15.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """One `attnmon run` replica; its log in ``log``."""

    def __init__(self, config: dict, tmp: Path, name: str) -> None:
        self.name = name
        self.port = _free_port()
        config = {**config, "http": {"host": "127.0.0.1", "port": self.port}}
        path = tmp / f"{name}.yml"
        path.write_text(yaml.safe_dump(config))
        self.log = tmp / f"{name}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "run", "--config", str(path)], cwd=REPO,
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
                body = response.read().decode()
        except OSError:
            return []
        return [_sample(line) for line in body.splitlines() if line and not line.startswith("#")]

    def value(self, name: str) -> float | None:
        return next((v for n, _, v in self.metrics() if n == name), None)

    def alive(self) -> bool:
        return self.process.poll() is None

    def dump_stacks(self) -> None:
        """Every thread's stack into the log (the CLI's SIGUSR1 handler): why a replica is stuck."""
        if self.alive():
            self.process.send_signal(signal.SIGUSR1)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def _sample(line: str) -> tuple[str, dict[str, str], float]:
    head, value = line.rsplit(" ", 1)
    if "{" not in head:
        return head, {}, float(value)
    name, rest = head.split("{", 1)
    labels = {}
    for part in rest.rstrip("}").split('",'):
        if part:
            key, val = part.split("=", 1)
            labels[key] = val.strip('"')
    return name, labels, float(value)


def _wait(what, timeout_s: float, daemons: list[Daemon], why: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for d in daemons:
            if not d.alive():
                pytest.fail(f"{d.name} exited with {d.process.returncode}:\n{d.log.read_text()[-3000:]}")
        result = what()
        if result:
            return result
        time.sleep(0.25)
    for d in daemons:
        d.dump_stacks()
    time.sleep(1.0)
    logs = "\n".join(f"--- {d.name}\n{d.log.read_text()[-6000:]}" for d in daemons)
    pytest.fail(f"timed out waiting for {why}\n{logs}")


def _judges(daemons: list[Daemon]) -> list[Daemon]:
    return [d for d in daemons if d.alive() and d.value("attnmon_scale_judge") == 1.0]


PAIRED_METRICS = ("attnmon_update_paired_verdict", "attnmon_update_paired_pairs",
                  "attnmon_update_paired_effective_users", "attnmon_update_paired_share_above",
                  "attnmon_update_paired_divergence", "attnmon_update_paired_agreement",
                  "attnmon_update_paired_served_ratio")
VERDICT_METRICS = ("attnmon_drift_verdict", "attnmon_drift_score", "attnmon_drift_cohort_verdict", *PAIRED_METRICS)
# A mean of per-event distances moves by ~1e-9 with that noise; the agreement, a rank correlation
# of quantised statistics, by ~1e-4 should the noise swap two events' ranks (its cutoff is 0.2).
# The served lists' concentration comes from item sketches: merged in partition order rather than
# folded batch by batch, a sketch that compacted holds other counters, each within its error bound.
TOLERANCE = {"attnmon_update_paired_divergence": 1e-6, "attnmon_update_paired_agreement": 1e-3,
             "attnmon_update_paired_served_ratio": 0.05}


def _verdicts(judge: Daemon) -> dict:
    """Every drift series' verdict and score, every cohort verdict and every paired series the judge exports."""
    out = {}
    for name, labels, value in judge.metrics():
        if name in VERDICT_METRICS:
            out[(name, tuple(sorted(labels.items())))] = round(value, 9)
    return out


def _assert_same(verdicts: dict, reference: dict) -> None:
    """The same series, equal values (within ``TOLERANCE`` for the two continuous estimates)."""
    assert verdicts.keys() == reference.keys()
    differ = {key: (value, reference[key]) for key, value in verdicts.items()
              if not _close(value, reference[key], TOLERANCE.get(key[0], 0.0))}
    assert not differ, differ


def _close(a: float, b: float, tolerance: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)  # both undefined
    return abs(a - b) <= tolerance


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    """The models, the events (fixed event times) and a 4-partition topic holding them."""
    tmp = tmp_path_factory.mktemp("scale")
    models = REPO / "var" / "models"  # trained once per checkout (a few minutes on 2 cores), then reused
    roles = scenarios.train_scenario_models(models)
    v1, v2 = roles["base"], roles["harmful"]
    scenario = Scenario(versions=((0, v1), (EVENTS // 2, v2)))  # a harmful update half-way
    factory = scenarios.replay_factory(load_movielens(), models, scenario)  # stationary serving traffic
    events = []
    for i, raw in enumerate(e for batch in factory.events(EVENTS) for e in batch):
        event = json.loads(raw)
        event["ts"] = BASE_MS + i * STEP_MS
        events.append(json.dumps(event).encode())
    # One event per partition far past the log: its window seals every real window.
    closing = []
    for p in range(PARTITIONS):
        event = json.loads(events[-1])
        event["ts"] = BASE_MS + (EVENTS + int(10 * WIDTH_S * 1000) // STEP_MS) * STEP_MS
        event["event_id"] = f"closing-{p}"
        closing.append(json.dumps(event).encode())
    return {"tmp": tmp, "models": models, "events": events, "closing": closing, "topic": "attnmon-scale-events",
           "versions": (v1, v2)}


def _produce(kafka_settings, topic: str, events: list[bytes], first: int) -> None:
    producer = EventProducer(dataclasses.replace(kafka_settings, topic=topic))
    for i, value in enumerate(events, start=first):
        producer.send(value, key=str(i).encode(), partition=i % PARTITIONS)
    producer.flush()
    producer.close()


class Run:
    """One scale-out deployment over the log: its own groups and scale topics, same events."""

    def __init__(self, kafka_settings, log: dict, name: str) -> None:
        self.kafka_settings, self.log, self.name = kafka_settings, log, name
        suffix = uuid.uuid4().hex[:8]
        self.events_topic = f"{log['topic']}-{name}-{suffix}"
        self.scale_topics = {k: f"attnmon-scale-{name}-{k}-{suffix}" for k in ("partials", "state", "control")}
        self.config = {
            "kafka": {"bootstrap_servers": kafka_settings.bootstrap_servers, "topic": self.events_topic,
                      "dead_letter_topic": f"{self.events_topic}-dlq", "group_id": f"attnmon-scale-{name}-{suffix}",
                      "session_timeout_ms": 6000},
            "models": {"root": str(log["models"])},
            "state": {"directory": str(log["tmp"] / f"state-{name}")},
            "intervals": {"judge_s": WIDTH_S, "lag_s": 0.5},
            # paired_max_per_batch above poll.max_records: the cap never binds (see the module's docstring)
            "pipeline": {"forward_processes": 0, "paired_fraction": 0.5, "paired_max_per_batch": 1024,
                         "paired_lists_max_per_batch": 1024},
            "judge": {"reference_events": 1000, "reference_seconds": 2 * WIDTH_S},
            "cohorts": [{"name": c.name, "allowlist": list(c.allowlist)} if c.kind != "history_length" else
                        {"name": c.name, "kind": c.kind, "edges": list(c.edges)} for c in scenarios.scenario_cohorts()],
            "scale": {"mode": "replica", "partials_topic": self.scale_topics["partials"],
                      "state_topic": self.scale_topics["state"], "control_topic": self.scale_topics["control"],
                      "judge_group_id": f"attnmon-scale-{name}-judge-{suffix}", "idle_s": 3600},
        }
        ensure_topic(kafka_settings, self.events_topic, PARTITIONS)
        self.daemons: list[Daemon] = []

    def start(self, count: int) -> list[Daemon]:
        new = [Daemon(self.config, self.log["tmp"], f"{self.name}-{len(self.daemons) + k}") for k in range(count)]
        self.daemons += new
        return new

    def produce(self, lo: int, hi: int, closing: bool = False) -> None:
        _produce(self.kafka_settings, self.events_topic, self.log["events"][lo:hi], lo)
        if closing:
            producer = EventProducer(dataclasses.replace(self.kafka_settings, topic=self.events_topic))
            for p, value in enumerate(self.log["closing"]):
                producer.send(value, partition=p)
            producer.flush()
            producer.close()

    def assigned(self, timeout_s: float = 120.0) -> None:
        """Wait until every replica holds partitions (``attnmon_ready``: assigned and a model
        loaded): the last of them to join was assigned in a rebalance that split the topic."""
        _wait(lambda: all(d.value("attnmon_ready") == 1.0 for d in self.daemons) or None, timeout_s,
              self.daemons, "every replica to hold partitions")

    def judging_past(self, window: int, timeout_s: float = 120.0) -> Daemon:
        """The judge, once every replica has joined and it has judged up to ``window``
        (the election moves when the second replica joins)."""
        def judged() -> Daemon | None:
            if not all(d.value("attnmon_ready") == 1.0 for d in self.daemons):
                return None
            judges = _judges(self.daemons)  # two, for the length of a rebalance at most
            if len(judges) == 1 and (judges[0].value("attnmon_scale_closed_window") or 0) >= window:
                return judges[0]
            return None

        return _wait(judged, timeout_s, self.daemons, f"a judge past window {window}")

    def finish(self, timeout_s: float = 120.0) -> dict:
        """Wait until the judge has judged the last real window; its verdicts."""
        live = [d for d in self.daemons if d.alive()]

        def done() -> Daemon | None:
            judges = _judges(live)
            if len(judges) == 1 and judges[0].value("attnmon_scale_closed_window") == LAST_WINDOW:
                return judges[0]
            return None

        judge = _wait(done, timeout_s, live, f"the judge to close window {LAST_WINDOW}")
        others = [d for d in live if d is not judge]
        for other in others:  # drift verdicts come only from the judge
            assert not [n for n, _, _ in other.metrics() if n in VERDICT_METRICS], other.name
        return _verdicts(judge)

    def close(self) -> None:
        for d in self.daemons:
            d.stop()
        for topic in [self.events_topic, f"{self.events_topic}-dlq", *self.scale_topics.values()]:
            try:
                delete_topic(self.kafka_settings, topic)
            except Exception:  # noqa: BLE001 -- the dlq may not exist
                pass


@pytest.fixture
def run(scale_kafka, log):
    runs: list[Run] = []

    def make(name: str) -> Run:
        runs.append(Run(scale_kafka, log, name))
        return runs[-1]

    yield make
    for r in runs:
        r.close()


@pytest.fixture(scope="module")
def scale_kafka(kafka_bootstrap: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=kafka_bootstrap, client_id="attnmon-test")


@pytest.fixture(scope="module")
def one_process(scale_kafka, log) -> dict:
    """The reference: one replica holding all 4 partitions (a group of one), judge too."""
    r = Run(scale_kafka, log, "one")
    try:
        r.produce(0, EVENTS, closing=True)
        r.start(1)
        verdicts = r.finish()
    finally:
        r.close()
    cohorts = {(dict(labels)["kind"], dict(labels)["dimension"], dict(labels)["cohort"]): v
               for (name, labels), v in verdicts.items() if name == "attnmon_drift_cohort_verdict"}
    assert cohorts.get(("model_update", "platform", "ios")) == 1.0, f"the harmful update is judged drifting: {cohorts}"
    assert ("within_version", "all", "all") in cohorts, "the base version is judged against its baseline"
    paired = {(dict(labels)["dimension"], dict(labels)["cohort"], dict(labels)["layer"]): v
              for (name, labels), v in verdicts.items() if name == "attnmon_update_paired_verdict"}
    assert paired.get(("platform", "ios", "1")) == 1.0, f"the paired comparison confirms the harmful update: {paired}"
    return verdicts


def test_two_replicas_and_a_judge_give_one_process_verdicts(run, one_process) -> None:
    r = run("two")
    r.produce(0, EVENTS, closing=True)
    r.start(2)
    _assert_same(r.finish(), one_process)


def test_a_replica_killed_mid_stream_changes_no_verdict(run, one_process) -> None:
    r = run("kill-replica")
    r.start(2)
    r.assigned()  # both replicas share the partitions before any event arrives, so both fold and publish
    r.produce(0, EVENTS // 2)
    judge = r.judging_past(LAST_WINDOW - 12)
    replica = next(d for d in r.daemons if d is not judge)
    assert (replica.value("attnmon_scale_partials_published_total") or 0) > 0, "the killed replica had published"
    replica.kill()
    r.produce(EVENTS // 2, EVENTS, closing=True)
    _assert_same(r.finish(), one_process)


def test_a_killed_judge_is_replaced_within_the_session_timeout(run, one_process) -> None:
    r = run("kill-judge")
    r.produce(0, EVENTS // 2)
    r.start(2)
    judge = r.judging_past(LAST_WINDOW - 12)
    heir = next(d for d in r.daemons if d is not judge)
    judge.kill()
    killed = time.monotonic()
    _wait(lambda: heir.value("attnmon_scale_judge") == 1.0, TAKEOVER_S + 5, [heir], "a new judge")
    takeover = time.monotonic() - killed
    assert takeover < TAKEOVER_S, f"the new judge took {takeover:.1f} s"
    assert "judging from round" in heir.log.read_text()
    r.produce(EVENTS // 2, EVENTS, closing=True)
    _assert_same(r.finish(), one_process)


def test_partitions_idle_at_their_log_end_seal_their_last_window(run) -> None:
    """No later event seals the last window here: each partition, at its log end for
    scale.idle_s, seals it and says it is idle, and the judge judges it."""
    r = run("idle")
    r.config["scale"]["idle_s"] = 2
    r.produce(0, EVENTS // 2)
    (replica,) = r.start(1)
    last = int((BASE_MS + (EVENTS // 2 - 1) * STEP_MS) // (WIDTH_S * 1000))
    _wait(lambda: replica.value("attnmon_scale_closed_window") == last, 120.0, [replica], f"window {last} judged")
    assert replica.log.read_text().count("idle at its log end") == PARTITIONS
