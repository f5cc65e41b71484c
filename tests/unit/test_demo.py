"""`attnmon demo`: the README's first command, end to end in one process (no services)."""

from __future__ import annotations

import io
import re
import urllib.request

import torch

from model import checkpoint
from model.data import load_movielens
from model.sasrec import SASRec, SASRecConfig
from monitor.tools.demo import run_demo


class ScrapingOutput(io.StringIO):
    """Keeps the demo's output, and scrapes /metrics at the first live summary."""

    def __init__(self) -> None:
        super().__init__()
        self.scrape: str | None = None

    def write(self, text: str) -> int:
        written = super().write(text)
        url = re.search(r"serving (http://\S+/metrics)", self.getvalue())
        # The first summary that has folded events (on a loaded machine the first may show 0).
        if self.scrape is None and url and re.search(r"processed [1-9]", text):
            with urllib.request.urlopen(url.group(1), timeout=5) as response:
                self.scrape = response.read().decode()
        return written


def test_demo_replays_through_the_agent_and_serves_metrics(tmp_path):
    catalog = load_movielens().catalog
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=catalog.n_items, max_len=20, hidden=16, layers=2, heads=2))
    version = checkpoint.save(model, catalog, {}, tmp_path / "checkpoints", label="demo-test")
    out = ScrapingOutput()

    assert run_demo(events=1_500, rate=1_000.0, checkpoints=tmp_path / "checkpoints", port=0,
                    out=out, summary_every_s=0.3) == 0

    text = out.getvalue()
    assert "processed 1,500" in text and "dead-lettered: none" in text
    assert re.search(rf"{version} platform=(ios|android|web)\s+entropy 0\.\d+", text)
    assert out.scrape is not None  # /metrics answered while events were being replayed
    folded = re.search(r'attnmon_events_total\{outcome="processed",reason="ok"\} (\d+)', out.scrape)
    assert folded and 0 < float(folded.group(1)) <= 1_500
    assert f'attnmon_model_info{{label="demo-test",model_version="{version}"}} 1.0' in out.scrape


def _tiny_checkpoints(tmp_path):
    catalog = load_movielens().catalog
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=catalog.n_items, max_len=20, hidden=16, layers=1, heads=1))
    checkpoint.save(model, catalog, {}, tmp_path / "checkpoints", label="demo-test")
    return tmp_path / "checkpoints"


def test_every_demo_run_replays_its_events(tmp_path):
    """A second run used to restore the first one's state, skip every event and process 0."""
    checkpoints = _tiny_checkpoints(tmp_path)
    for run in range(2):
        out = io.StringIO()
        assert run_demo(events=400, rate=None, checkpoints=checkpoints, port=0, out=out, summary_every_s=5) == 0
        assert "processed 400" in out.getvalue(), f"run {run + 1}"


def test_a_kept_state_past_the_end_of_a_shorter_replay_is_reported_not_fatal(tmp_path):
    """`--state-dir` kept from a longer run: the source is asked to seek past its end."""
    checkpoints = _tiny_checkpoints(tmp_path)
    state = tmp_path / "state"
    assert run_demo(events=600, rate=None, checkpoints=checkpoints, port=0, state_dir=state,
                    out=io.StringIO(), summary_every_s=5) == 0
    out = io.StringIO()
    assert run_demo(events=200, rate=None, checkpoints=checkpoints, port=0, state_dir=state,
                    out=out, summary_every_s=5) == 0
    assert "processed 0" in out.getvalue() and "error" not in out.getvalue()


def test_an_agent_failure_exits_non_zero_with_its_cause(tmp_path, monkeypatch):
    from monitor.stream.agent import Agent

    def broken(self):
        raise RuntimeError("forward process lost twice")

    monkeypatch.setattr(Agent, "run", broken)
    out = io.StringIO()
    assert run_demo(events=100, rate=None, checkpoints=_tiny_checkpoints(tmp_path), port=0, out=out,
                    summary_every_s=5) == 1
    assert "RuntimeError: forward process lost twice" in out.getvalue()
