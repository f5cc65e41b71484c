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
                    state_dir=tmp_path / "state", out=out, summary_every_s=0.3) == 0

    text = out.getvalue()
    assert "processed 1,500" in text and "dead-lettered: none" in text
    assert re.search(rf"{version} platform=(ios|android|web)\s+entropy 0\.\d+", text)
    assert out.scrape is not None  # /metrics answered while events were being replayed
    folded = re.search(r'attnmon_events_total\{outcome="processed",reason="ok"\} (\d+)', out.scrape)
    assert folded and 0 < float(folded.group(1)) <= 1_500
    assert f'attnmon_model_info{{label="demo-test",model_version="{version}"}} 1.0' in out.scrape
