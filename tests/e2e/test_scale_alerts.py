"""A killed judge (scale.mode replica) sends on-call no second notification, through the real things.

Two `attnmon run` replicas share a 4-partition topic (``test_scale_processes``' set-up); the
stack's real Prometheus scrapes both (their ports are chosen at start: a file_sd target file,
``scrape_targets``) and evaluates ``alerts/attnmon.rules.yml``; the real Alertmanager routes
with ``alerts/alertmanager.yml`` to this test's webhook (``test_alert_path``' receiver).
Traffic streams in real time (event time = send time) at the scale test's density; a harmful
model update half-way makes AttentionDriftAfterModelUpdate fire (critical: the paired comparison
confirms, flags a window or has not judged yet). Once the first judge's alerts have reached the webhook, the judge is killed (kill -9); the other replica is elected (< 15 s),
resumes the state and judges on, and the alerts keep firing.

What "no duplicate" means here. Alertmanager notifies a group (alertname, model_version,
dimension, cohort, within the route its severity takes: one alert each for this rule) when it first fires, again when its alerts
change (one resolves, or a new one joins: a refire is a new alert, its startsAt new), and
otherwise only after ``repeat_interval``. The test reads the running Alertmanager's intervals
and requires ``repeat_interval`` longer than what it observes, so within it every second
notification of a group would be a duplicate; it observes from the first notification until
the kill plus the takeover, ``keep_firing_for`` (how long the alert outlives its last true
evaluation), ``group_interval`` (how soon a resolve is sent) and two evaluation intervals. A
resolve+refire, or an alert whose labels differed per judge (a second alert in the group)
would show there as a second notification.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
import urllib.parse
import urllib.request
from datetime import datetime

import pytest
import yaml

from bench import scenarios
from e2e.test_alert_path import _events, _query, models, traffic, webhook
from e2e.test_alert_path import _wait as _wait_for
from e2e.test_scale_processes import PARTITIONS, STEP_MS, TAKEOVER_S, Run, _judges, scale_kafka
from e2e.test_scale_processes import _wait as _wait_daemons
from monitor.stream.kafka import EventProducer

pytestmark = pytest.mark.timeout(1200)
FIXTURES = (models, traffic, webhook, scale_kafka)  # imported fixtures, requested by name below

ALERT = "AttentionDriftAfterModelUpdate"
SEVERITY = "critical"  # ALERT's page; its warning (paired judged, does not confirm) is another rule
DRIFT_ALERTS = (ALERT, "AttentionChangedByModelUpdate", "AttentionDriftWithinVersion", "AttentionNarrowedToFewItems")
RATE = 1000 // STEP_MS  # events/s: test_scale_processes' event-time density (500 per 2 s window)
SWITCH = 4_000  # base-version events before the harmful update: its baselines freeze (reference_events 1000)
POOL = 8_000  # harmful events, sent round and round with fresh ids and times until the test ends


def _seconds(text: str) -> float:
    """A Prometheus / Alertmanager duration ("1m", "1h30m", "10s")."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31_536_000}
    parts = re.findall(r"(\d+)(ms|[smhdwy])", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(int(n) * units[u] for n, u in parts)


def _get(url: str) -> dict | list:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@dataclasses.dataclass(frozen=True)
class Timing:
    """The running services' settings that decide what the webhook may receive."""

    for_s: float  # the rule's `for`
    keep_firing_s: float  # the rule's keep_firing_for
    evaluation_s: float
    group_wait_s: float
    group_interval_s: float
    repeat_s: float  # of the route the alert takes (severity critical)

    @classmethod
    def read(cls, prometheus_url: str, alertmanager_url: str) -> Timing:
        rule = next(r for g in _get(f"{prometheus_url}/api/v1/rules")["data"]["groups"]
                    for r in g["rules"] if r["name"] == ALERT and r.get("labels", {}).get("severity") == SEVERITY)
        config = yaml.safe_load(_get(f"{prometheus_url}/api/v1/status/config")["data"]["yaml"])
        route = yaml.safe_load(_get(f"{alertmanager_url}/api/v2/status")["config"]["original"])["route"]
        critical = next((r for r in route.get("routes", []) if 'severity="critical"' in r.get("matchers", [])), {})
        setting = lambda key: _seconds(critical.get(key, route[key]))  # noqa: E731 -- a child inherits the root's
        return cls(rule["duration"], rule["keepFiringFor"], _seconds(config["global"]["evaluation_interval"]),
                   setting("group_wait"), setting("group_interval"), setting("repeat_interval"))


class Traffic(threading.Thread):
    """Sends the base events, then the harmful pool round and round, at RATE events/s; event
    time is send time, so windows close as the clock moves; partition i % PARTITIONS."""

    def __init__(self, kafka, topic: str, base: list[bytes], harmful: list[bytes]) -> None:
        super().__init__(daemon=True)
        self.kafka, self.topic = kafka, topic
        self.base, self.harmful = [json.loads(e) for e in base], [json.loads(e) for e in harmful]
        self.stopped = threading.Event()
        self.switched_at: float | None = None  # wall time of the first harmful event
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            producer = EventProducer(dataclasses.replace(self.kafka, topic=self.topic))
            started = time.monotonic()
            while not self.stopped.is_set():
                i = self.sent
                if i == len(self.base):
                    self.switched_at = time.time()
                event = dict(self.base[i] if i < len(self.base) else self.harmful[(i - len(self.base)) % len(self.harmful)])
                event["event_id"], event["ts"] = f"scale-alerts-{i}", int(time.time() * 1000)
                producer.send(json.dumps(event).encode(), key=str(i).encode(), partition=i % PARTITIONS)
                self.sent += 1
                pause = started + self.sent / RATE - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            producer.flush()
            producer.close()
        except BaseException as error:  # noqa: BLE001 -- reported by the test
            self.error = error

    def stop(self) -> None:
        self.stopped.set()
        if self.is_alive():  # a test that failed before it started: nothing to wait for
            self.join(timeout=30)


def _started(alert: dict) -> float:
    return datetime.fromisoformat(alert["startsAt"].replace("Z", "+00:00")).timestamp()


def _group(labels: dict) -> tuple[str, str, str, str, str]:
    """Alertmanager's group of an alert: its group_by labels, within the route its severity takes
    (ALERT's critical and warning alerts of one cohort are two groups)."""
    return (labels["alertname"], labels.get("model_version", ""), labels.get("dimension", ""), labels.get("cohort", ""),
            labels.get("severity", ""))


def _payload_group(payload: dict) -> tuple[str, str, str, str, str]:
    return _group({**payload["groupLabels"], "severity": payload["commonLabels"].get("severity", "")})


def _active(prometheus_url: str, alertmanager_url: str, version: str) -> list:
    """Drift alerts about ``version`` still active in Prometheus or Alertmanager."""
    names = "|".join(DRIFT_ALERTS)
    pending = _query(prometheus_url, f'ALERTS{{alertname=~"{names}",model_version="{version}"}}')
    query = urllib.parse.urlencode([("filter", f'alertname=~"{names}"'), ("filter", f'model_version="{version}"')])
    return pending + _get(f"{alertmanager_url}/api/v2/alerts?{query}")


def test_a_killed_judge_sends_no_duplicate_notification(
    scale_kafka, models, traffic, webhook, scrape_targets, prometheus_url, alertmanager_url, tmp_path
):
    root, versions = models
    harmful = versions["harmful"]
    timing = Timing.read(prometheus_url, alertmanager_url)
    # The groups are the ones an earlier run (this test, test_alert_path) used: start once
    # Alertmanager holds none of their alerts and has sent their resolved notifications.
    _wait_for(lambda: not _active(prometheus_url, alertmanager_url, harmful),
              timing.keep_firing_s + timing.for_s + 4 * timing.evaluation_s + 60,
              f"drift alerts of {harmful} from an earlier run are still active", every=2.0)
    time.sleep(timing.group_interval_s + timing.evaluation_s)

    events = _events(traffic, root, scenarios.build_scenario("harmful_update", versions, at=SWITCH), seed=6,
                     count=SWITCH + POOL)
    run = Run(scale_kafka, {"tmp": tmp_path, "models": root, "topic": "attnmon-scale-alerts"}, "alerts")
    sender = Traffic(scale_kafka, run.events_topic, events[:SWITCH], events[SWITCH:])
    try:
        daemons = run.start(2)
        scrape_targets([d.port for d in daemons])
        run.assigned()
        began = time.time()
        sender.start()

        # 1. The first judge's alerts reach the webhook; every alert firing in Prometheus by then is notified.
        def notified() -> dict[tuple, tuple[float, dict]]:
            """Group -> (arrival, alert) of its first notification."""
            out: dict[tuple, tuple[float, dict]] = {}
            for arrived, _, alert in webhook.alerts(ALERT, began, model_version=harmful, severity=SEVERITY):
                out.setdefault(_group(alert["labels"]), (arrived, alert))
            return out

        def settled() -> dict | None:
            firing = {_group({**s["metric"], "alertname": ALERT}) for s in _query(
                prometheus_url,
                f'ALERTS{{alertname="{ALERT}",severity="{SEVERITY}",alertstate="firing",model_version="{harmful}"}}')}
            seen = notified()
            return seen if seen and firing <= set(seen) else None

        _wait_for(settled, 420, f"no {ALERT} notification for {harmful}", every=2.0)
        time.sleep(timing.group_interval_s)  # nothing of the first judge's still on its way
        before_kill = notified()
        judges = _judges(daemons)
        assert len(judges) == 1, [d.name for d in judges]
        judge = judges[0]
        heir = next(d for d in daemons if d is not judge)
        closed_at_kill = judge.value("attnmon_scale_closed_window")
        assert closed_at_kill is not None

        # 2. kill -9 the judge; the other replica is elected and judges on.
        judge.kill()
        killed_wall, killed = time.time(), time.monotonic()
        _wait_daemons(lambda: heir.value("attnmon_scale_judge") == 1.0, TAKEOVER_S + 5, [heir], "a new judge")
        takeover = time.monotonic() - killed
        assert takeover < TAKEOVER_S, f"the new judge took {takeover:.1f} s"
        _wait_daemons(lambda: (heir.value("attnmon_scale_closed_window") or 0) > closed_at_kill + 1, 120, [heir],
                      f"the new judge judging past window {closed_at_kill}")

        # 3. Observe for as long as a resolve would take to reach the webhook.
        end = killed_wall + takeover + timing.keep_firing_s + timing.group_interval_s + 2 * timing.evaluation_s
        observed = end - min(arrived for arrived, _ in before_kill.values())
        assert timing.repeat_s > observed, (
            f"repeat_interval {timing.repeat_s} s: a repeat within the {observed:.0f} s observed would not be a duplicate")
        while time.time() < end:
            assert heir.alive(), heir.log.read_text()[-3000:]
            assert sender.is_alive(), sender.error
            time.sleep(1)
        assert sender.error is None, sender.error

        # 4. Exactly one notification per group, never resolved; the alerts still fire, as first notified.
        ours = [(arrived, payload) for arrived, _, payload in webhook.received if arrived >= began
                and payload["groupLabels"].get("alertname") in DRIFT_ALERTS
                and payload["groupLabels"].get("model_version") == harmful]
        resolved = [_payload_group(p) for _, p in ours if any(a["status"] == "resolved" for a in p["alerts"])]
        assert not resolved, f"resolved notifications: {resolved}"
        per_group: dict[tuple, list[dict]] = {}
        for _, payload in ours:
            per_group.setdefault(_payload_group(payload), []).append(payload)
        duplicates = {g: [[(a["labels"].get("cohort"), a["startsAt"]) for a in p["alerts"]] for p in ps]
                      for g, ps in per_group.items() if g[0] == ALERT and len(ps) != 1}
        assert not duplicates, f"groups notified more than once: {duplicates}"
        for group in before_kill:
            assert len(per_group[group]) == 1 and len(per_group[group][0]["alerts"]) == 1, per_group[group]
        still = _active(prometheus_url, alertmanager_url, harmful)
        firing_now = {_group({**s["metric"], "alertname": ALERT}): s for s in still
                      if "metric" in s and s["metric"].get("alertstate") == "firing" and s["metric"]["alertname"] == ALERT}
        manager = {_group(a["labels"]): a for a in still if "fingerprint" in a and a["labels"]["alertname"] == ALERT}
        for group, (_, alert) in before_kill.items():
            assert group in firing_now, f"{group} no longer fires in Prometheus"
            assert group in manager and _started(manager[group]) == _started(alert), (
                f"{group} restarted in Alertmanager: {manager.get(group)} (first notified: {alert['startsAt']})")

        # 5. The handover really happened under the alerts: the verdicts came from the killed judge, then the
        # heir, with a gap the rule's keep_firing_for covers.
        span = int(time.time() - began) + 10
        samples = _query(prometheus_url, f'attnmon_drift_cohort_verdict{{kind="model_update",model_version="{harmful}"}}[{span}s]')
        gaps = []
        for group in before_kill:
            mine = [s for s in samples if (s["metric"]["dimension"], s["metric"]["cohort"]) == group[2:4]]
            last_old = max((float(t) for s in mine if s["metric"]["instance"] == f"127.0.0.1:{judge.port}"
                           for t, _ in s["values"]), default=float("-inf"))
            first_new = min((float(t) for s in mine if s["metric"]["instance"] == f"127.0.0.1:{heir.port}"
                             for t, v in s["values"] if float(t) > killed_wall and v == "1"), default=float("inf"))
            gaps.append(first_new - last_old)
        assert max(gaps) < timing.keep_firing_s, gaps
        first = min(arrived for arrived, _ in before_kill.values())
        print(f"\n{judge.name} killed at {datetime.fromtimestamp(killed_wall).time()}; "
              f"{len(before_kill)} {ALERT} groups notified by the first judge ({first - (sender.switched_at or began):.0f} s "
              f"after the update); judge killed, heir elected in {takeover:.1f} s, verdict gap in Prometheus "
              f"{min(gaps):.1f}-{max(gaps):.1f} s (keep_firing_for {timing.keep_firing_s:.0f} s); observed {observed:.0f} s; "
              f"notifications per group: {sorted((g[2] + '=' + g[3], len(ps)) for g, ps in per_group.items())}; "
              f"{sender.sent} events sent")
    finally:
        sender.stop()
        run.close()
