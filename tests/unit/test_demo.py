"""`attnmon demo`: the README's first command, end to end in one process (no services).

Tiny untrained models stand in for the demo's three versions (the story's detection
figures come from the trained ones: docs/architecture.md, "The demo").
"""

from __future__ import annotations

import io
import json
import re
import urllib.request

import pytest
import torch

from model import checkpoint
from model.data import load_movielens
from model.sasrec import SASRec, SASRecConfig
from monitor.tools.demo import run_demo, story_phases


@pytest.fixture(scope="module")
def tiny_versions(tmp_path_factory):
    """role -> version of three tiny models (the context cut reads 3 items), and their root."""
    root = tmp_path_factory.mktemp("demo-models")
    catalog = load_movielens().catalog
    versions = {}
    for role, max_len in (("base", 20), ("reseed", 20), ("context_cut", 3)):
        torch.manual_seed(len(versions))
        model = SASRec(SASRecConfig(n_items=catalog.n_items, max_len=max_len, hidden=16, layers=2, heads=2))
        versions[role] = checkpoint.save(model, catalog, {}, root, label=f"demo-test-{role}")
    return versions, root


class ScrapingOutput(io.StringIO):
    """Keeps the demo's output, and fetches the page and /metrics at the first status with folded events."""

    def __init__(self) -> None:
        super().__init__()
        self.page: str | None = None
        self.state: dict | None = None
        self.metrics: str | None = None

    def write(self, text: str) -> int:
        written = super().write(text)
        url = re.search(r"live page: (http://\S+)/ ", self.getvalue())
        if self.page is None and url and re.search(r"processed [1-9]", text):
            for path, attr in (("/", "page"), ("/metrics", "metrics")):
                with urllib.request.urlopen(url.group(1) + path, timeout=5) as response:
                    setattr(self, attr, response.read().decode())
            with urllib.request.urlopen(url.group(1) + "/api/state", timeout=5) as response:
                self.state = json.loads(response.read())
        return written


def test_the_demo_tells_its_phases_and_serves_the_page_and_metrics(tiny_versions):
    versions, root = tiny_versions
    out = ScrapingOutput()

    assert run_demo(versions=versions, models_root=root, events=1_500, rate=1_000.0, port=0, phase_events=500,
                    out=out, summary_every_s=0.3) == 0

    text = out.getvalue()
    assert "processed 1,500" in text and "dead-lettered: none" in text
    for n, role in enumerate(("base", "reseed", "context_cut"), 1):
        assert re.search(rf"== phase {n}/3: .*{versions[role]} \({role}\) serves", text), role
    assert "most cohorts drifting at once, per phase: " in text
    assert not re.search(r"stable traffic: [1-9]", text)  # when a round fell in the stable phase: 0
    assert out.page is not None and "<h1>attnmon demo" in out.page and 'id=top-items' in out.page
    assert out.state is not None and [p["current"] for p in out.state["story"]["phases"]].count(True) == 1
    folded = re.search(r'attnmon_events_total\{outcome="processed",reason="ok"\} (\d+)', out.metrics or "")
    assert folded and 0 < float(folded.group(1)) <= 1_500


def test_story_phases_follow_the_roles_in_order():
    phases = story_phases({"base": "a", "reseed": "b", "context_cut": "c"}, phase_events=100)
    assert [(p.start, p.version, p.title) for p in phases] == [
        (0, "a", "stable traffic"), (100, "b", "benign update"), (200, "c", "harmful update")]


def test_every_demo_run_replays_its_events(tiny_versions):
    """A second run used to restore the first one's state, skip every event and process 0."""
    versions, root = tiny_versions
    for run in range(2):
        out = io.StringIO()
        assert run_demo(versions=versions, models_root=root, events=400, port=0, out=out, summary_every_s=5) == 0
        assert "processed 400" in out.getvalue(), f"run {run + 1}"


def test_a_kept_state_past_the_end_of_a_shorter_replay_is_reported_not_fatal(tiny_versions, tmp_path, caplog):
    """`--state-dir` kept from a longer run: the source is asked to seek past its end, and says so."""
    versions, root = tiny_versions
    state = tmp_path / "state"
    assert run_demo(versions=versions, models_root=root, events=600, port=0, state_dir=state,
                    out=io.StringIO(), summary_every_s=5) == 0
    out = io.StringIO()
    assert run_demo(versions=versions, models_root=root, events=200, port=0, state_dir=state,
                    out=out, summary_every_s=5) == 0
    assert "processed 0" in out.getvalue() and "error" not in out.getvalue()
    assert "past the end of this 200-event stream" in caplog.text


def test_an_agent_failure_exits_non_zero_with_its_cause(tiny_versions, monkeypatch):
    from monitor.stream.agent import Agent

    def broken(self):
        raise RuntimeError("forward process lost twice")

    monkeypatch.setattr(Agent, "run", broken)
    versions, root = tiny_versions
    out = io.StringIO()
    assert run_demo(versions=versions, models_root=root, events=100, port=0, out=out, summary_every_s=5) == 1
    assert "RuntimeError: forward process lost twice" in out.getvalue()
