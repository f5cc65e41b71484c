"""The live page (/ and /api/state): rendering, escaping, read-only, and the snapshot behind it."""

from __future__ import annotations

import io
import json
from wsgiref.util import setup_testing_defaults

import numpy as np
from prometheus_client import CollectorRegistry

from monitor.drift.judge import Judge, JudgeConfig
from monitor.drift.paired import PairedComparison
from monitor.export.http import make_app
from monitor.export.live import LiveState
from monitor.export.page import render

HOSTILE_COHORT = '<script>alert("cohort")</script>'
HOSTILE_USER = '"><img src=x onerror=alert(1)>'


def hostile_state() -> dict:
    point = {"round": 1, "time": 0.0, "version": "v1<b>", "events": 10,
             "values": {"entropy": 0.5}, "reference": {"entropy": 0.5}, "reference_kind": "within_version",
             "reference_version": "v1<b>"}
    series = {"statistic": "entropy", "layer": 1, "score": 0.2, "threshold": 0.1, "p_value": 1e-9,
              "p_adjusted": 1e-8, "flagged": True, "drifting": True, "samples": 300}
    return {
        "round": 3, "events": 1234, "statistics": ["entropy"],
        "series": [{"dimension": "platform", "cohort": HOSTILE_COHORT, "points": [point, point]}],
        "verdicts": [{"kind": "within_version", "model_version": "v1<b>", "reference_version": "v1<b>",
                      "dimension": "platform", "cohort": HOSTILE_COHORT, "drifting": True,
                      "drifting_series": [["entropy", 1]], "series": [series], "paired": None}],
        "update": None,
        "heatmap": {"event_id": "<ev>", "user_id": HOSTILE_USER, "model_version": "v1<b>", "rows": ["L0 h0"],
                    "columns": [{"item": 1, "title": "<i>Toy Story</i>", "genres": "Animation"}],
                    "matrix": [[1.0]], "hidden": 0, "text": f"user {HOSTILE_USER}"},
        "log": [],
        "top_items": [{"kind": "model_update", "model_version": "v1<b>", "reference_version": "v0",
                       "dimension": "platform", "cohort": HOSTILE_COHORT, "narrowed": True, "score": 0.3,
                       "top_share": 0.42, "reference_top_share": 0.1,
                       "items": [{"item": 7, "title": "<i>Toy Story</i>", "share": 0.3, "reference_share": 0.01},
                                 {"item": 9, "title": None, "share": 0.12, "reference_share": 0.05}]}],
    }


def test_everything_from_events_is_escaped():
    page = render(hostile_state())
    for raw in (HOSTILE_COHORT, HOSTILE_USER, "<i>Toy Story</i>", "<ev>", "v1<b>"):
        assert raw not in page
    assert "&lt;script&gt;alert(&quot;cohort&quot;)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<script" not in page  # the page runs no script at all


def test_the_page_shows_verdicts_series_heatmap_and_the_top_items():
    page = render(hostile_state())
    assert 'id=verdicts' in page and "DRIFTING" in page and "0.200" in page and "1.0e-08" in page
    assert 'id=series' in page and "<path" in page
    assert 'id=heatmap' in page and "<rect" in page
    assert 'id=top-items-table' in page and "NARROWED" in page and "30.0% / 1.0%" in page
    assert "&lt;i&gt;Toy Story&lt;/i&gt;" in page and "9 12.0% / 5.0%" in page  # untitled: its id
    assert "id=top-items-empty" in render({**hostile_state(), "top_items": []})


def call(app, path: str, method: str = "GET") -> tuple[str, dict, bytes]:
    environ: dict = {"PATH_INFO": path, "REQUEST_METHOD": method, "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    captured: dict = {}

    def start_response(status, headers):
        captured["status"], captured["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return captured["status"], captured["headers"], body


def test_http_serves_the_page_and_its_json_read_only():
    state = hostile_state()
    state["verdicts"][0]["series"][0]["p_value"] = float("nan")
    app = make_app(CollectorRegistry(), lambda: (True, "ok"), lambda: (True, "ok"), live=lambda: state)
    status, headers, body = call(app, "/")
    assert status == "200 OK" and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert b"id=verdicts" in body
    status, headers, body = call(app, "/api/state")
    assert status == "200 OK" and headers["Content-Type"] == "application/json"
    parsed = json.loads(body)
    assert parsed["verdicts"][0]["cohort"] == HOSTILE_COHORT and parsed["verdicts"][0]["series"][0]["p_value"] is None
    assert call(app, "/", "POST")[0].startswith("405")
    assert call(app, "/nowhere")[0].startswith("404")


def test_without_a_live_state_the_page_is_not_served():
    app = make_app(CollectorRegistry(), lambda: (True, "ok"), lambda: (True, "ok"))
    assert call(app, "/")[0].startswith("404")


def test_live_state_keeps_rounds_against_the_reference_and_logs_verdict_changes():
    rng = np.random.default_rng(0)
    judge = Judge(JudgeConfig(reference_seconds=0.0, reference_events=400, min_samples=100))
    paired = PairedComparison()
    live = LiveState(bins=judge.config.bins, rounds=5, clock=lambda: 0.0)
    statistics = ("entropy", "max_weight", "topk_mass", "gini", "effective_span", "recent_mass", "genre_entropy")

    def feed(a: float, n: int, t: float) -> None:
        values = rng.beta(a, 2.0, (n, len(statistics), 2))
        users = rng.integers(0, 2**63, n).astype(np.uint64)
        codes = np.zeros((n, 1), dtype=int)
        judge.observe_batch("v1", "all", codes[:, 0], ("all",), values, users, np.ones(n, int), t,
                            statistics=statistics)
        live.observe("v1", ("all",), codes, {"all": ("all",)}, values, None)

    feed(2.0, 400, 0.0)  # the baseline
    for t in range(1, 9):
        feed(2.0 if t < 4 else 9.0, 300, float(t))  # the attention moves at round 4
        live.record(judge.judge(float(t)), paired.judge(float(t)), judge, {})
    state = live.snapshot()
    points = state["series"][0]["points"]
    assert len(points) == 5  # bounded ring
    assert abs(points[0]["values"]["entropy"] - points[0]["reference"]["entropy"]) > 0.1  # moved from the reference
    raised = [c for c in live.changes() if c["what"] == "drift" and c["drifting"]]
    assert raised and raised[0]["cohort"] == "all" and raised[0]["series"][0]["drifting"]
    assert live.changes(after=raised[-1]["seq"]) == [c for c in live.changes() if c["seq"] > raised[-1]["seq"]]
    assert state["verdicts"][0]["drifting"] and state["top_items"] == []  # no item mass observed here
