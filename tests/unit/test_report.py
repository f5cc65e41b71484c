"""monitor.tools.report: per-event statistics, the KS verdict, and the Evidently HTML that carries it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from model import checkpoint
from model.data import Interactions, load_movielens
from model.sasrec import SASRec, SASRecConfig
from monitor.stream.events import Event, encode
from monitor.attention.registry import ModelRegistry
from monitor.tools.replay import PLATFORMS, context_of, timeline_steps
from monitor.tools.report import (
    ReportConfig,
    read_events,
    report_title,
    statistic_columns,
    statistics_frame,
    summarise,
    write_report,
)
from monitor.attention.stats import STATISTICS

EVENTS = 1200  # split into a 600-event reference and a 600-event current set
SHIFT_GENRE = "Horror"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data() -> Interactions:
    return load_movielens()


@pytest.fixture(scope="module")
def registry_root(tmp_path_factory: pytest.TempPathFactory, data: Interactions) -> tuple[Path, str, str]:
    """A small untrained version, and a copy whose attention logits are 4x sharper."""
    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=data.catalog.n_items, max_len=50, hidden=16, layers=2, heads=2))
    v1 = checkpoint.save(model, data.catalog, {}, root)
    with torch.no_grad():
        for block in model.blocks:
            d = block.qkv.weight.shape[1]
            block.qkv.weight[: 2 * d] *= 2.0  # q and k both x2: logits x4
            block.qkv.bias[: 2 * d] *= 2.0
    v2 = checkpoint.save(model, data.catalog, {}, root, label="sharper")
    return root, v1, v2


def _stream(data: Interactions, version: str, *, shift_platform: str | None = None, seed: int = 0) -> list[bytes]:
    """EVENTS encoded events drawn from the replay timeline, as monitor.tools.replay makes them.

    With ``shift_platform`` every history item of that platform's users is swapped for a
    random movie of SHIFT_GENRE (replay's CohortShift at strength 1), others untouched.
    Built directly (no recommendations) because the replay factory's scoring forward
    costs seconds on a shared 2-core machine.
    """
    steps = timeline_steps(data)
    picked = np.random.default_rng(seed).choice(len(steps), size=EVENTS, replace=False)
    genre_items = np.asarray([i for i, g in enumerate(data.catalog.item_genres) if SHIFT_GENRE in g])
    swap_rng = np.random.default_rng(seed + 1)
    out = []
    for index in picked:
        user, step = (int(x) for x in steps[index])
        history = data.sequences[user][max(0, step - 200) : step]
        context = context_of(int(data.user_ids[user]))
        if shift_platform is not None and context["platform"] == shift_platform:
            history = swap_rng.choice(genre_items, size=len(history))
        out.append(encode(Event(
            event_id=f"ev-{index}", ts=1_764_259_200_000, model_version=version,
            user_id=str(int(data.user_ids[user])), history=tuple(int(i) for i in data.catalog.item_ids[history]),
            context=context,
        )))
    return out


@pytest.fixture(scope="module")
def streams(data: Interactions, registry_root: tuple[Path, str, str]) -> dict[str, list[bytes]]:
    """reference / current (same stream, disjoint halves) / shifted (current, android -> Horror)."""
    _, v1, _ = registry_root
    plain = _stream(data, v1)
    shifted = _stream(data, v1, shift_platform="android")
    half = EVENTS // 2
    return {"reference": plain[:half], "current": plain[half:], "shifted": shifted[half:]}


def test_statistics_frame_has_one_row_per_event_and_cohort_columns(registry_root, streams) -> None:
    root, v1, _ = registry_root
    events = streams["reference"][:40] + [b"{not json", encode(Event(
        event_id="x", ts=1, model_version="sasrec-missing", user_id="u", history=(1,)))]
    result = statistics_frame(events, ModelRegistry(root), dimension="region")
    assert result.columns == statistic_columns(2)
    assert result.columns[:2] == ("entropy_l0", "entropy_l1") and len(result.columns) == 2 * len(STATISTICS)
    assert len(result.frame) == 40 and result.versions == {v1: 40}
    assert result.skipped == {"not_json": 1, "unknown_model_version": 1}
    assert set(result.frame["platform"]) <= set(PLATFORMS)
    assert set(result.frame["history_length"]) <= {"1-9", "10-49", "50-199", "200+"}
    values = result.frame[list(result.columns)].to_numpy()
    assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()


def test_read_events_samples_a_bounded_uniform_subset(streams) -> None:
    events, skipped, read = read_events(streams["reference"], max_events=100, seed=3)
    assert len(events) == 100 and read == 600 and not skipped
    assert len({e.event_id for e in events}) == 100
    position = {e.event_id: i for i, e in enumerate(read_events(streams["reference"], max_events=600)[0])}
    assert max(position[e.event_id] for e in events) > 300  # the reservoir reaches past the head


def test_summarise_caps_cohorts_and_keeps_the_all_section_apart() -> None:
    rng = np.random.default_rng(0)
    columns = ("entropy_l0", "max_weight_l0")

    def frame(n: int, shift: float) -> pd.DataFrame:
        platform = rng.choice(["ios", "android", "web", "all", "tv", "car"], size=n, p=[.3, .3, .2, .1, .05, .05])
        values = rng.beta(2, 5, size=(n, 2)) + np.where(platform == "ios", shift, 0.0)[:, None]
        return pd.DataFrame({"platform": platform, "user_id": np.arange(n).astype(str),
                             columns[0]: values[:, 0], columns[1]: values[:, 1]})

    summary = summarise(frame(2000, 0.0), frame(2000, 0.15), columns, config=ReportConfig(max_cohorts=4))
    assert summary["cohort_values"] == ["android", "ios", "web", "_all", "other"]  # top 4 by volume, then the rest
    cohorts = summary["cohorts"]
    assert cohorts["all"]["n_reference"] == 2000 and cohorts["_all"]["n_reference"] < 400
    assert cohorts["other"]["n_reference"] > 100  # "tv" and "car" together
    assert cohorts["ios"]["statistics"]["entropy_l0"]["drift"] is True
    assert {d["cohort"] for d in summary["drifting_series"]} <= {"ios", "all"}
    assert cohorts["ios"]["n_effective_reference"] == cohorts["ios"]["n_reference"]  # one event per user


def test_two_samples_of_one_stream_are_not_drift(registry_root, streams) -> None:
    root, _, _ = registry_root
    registry = ModelRegistry(root)
    reference = statistics_frame(streams["reference"], registry)
    current = statistics_frame(streams["current"], registry)
    summary = summarise(reference.frame, current.frame, reference.columns, dimension="platform")
    assert summary["drifting"] is False, summary["drifting_series"]
    assert set(summary["cohorts"]) == {"all", *PLATFORMS}
    assert all(c["sufficient"] for c in summary["cohorts"].values())
    assert summary["rule"]["tests"] == 4 * len(reference.columns)
    web = summary["cohorts"]["web"]  # a few heavy users: far fewer effective draws than events
    assert web["n_effective_reference"] < 0.5 * web["n_reference"]


def test_a_sharper_model_is_drift_in_entropy_everywhere(registry_root, streams) -> None:
    root, v1, v2 = registry_root
    registry = ModelRegistry(root)
    reference = statistics_frame(streams["reference"], registry)
    current = statistics_frame(streams["current"], registry, version=v2)  # the same traffic, another model
    assert current.versions == {v2: 600}
    summary = summarise(reference.frame, current.frame, reference.columns, dimension="platform")
    for cohort in ("all", *PLATFORMS):
        entropy = summary["cohorts"][cohort]["statistics"]["entropy_l0"]
        assert entropy["drift"] is True
        assert entropy["current_mean"] < entropy["reference_mean"]
    assert "judged against the reference statistics of " + v1 in report_title({v1: 600}, {v2: 600})
    assert "after a model change" not in report_title({v1: 600}, {v1: 600})


def test_report_html_and_summary_flag_the_shifted_cohort(tmp_path, registry_root, streams) -> None:
    root, v1, _ = registry_root
    paths = write_report(streams["reference"], streams["shifted"], root, tmp_path / "out", dimension="platform")
    assert paths.html == tmp_path / "out" / "report.html" and paths.summary_json.name == "summary.json"

    summary = json.loads(paths.summary_json.read_text())
    assert summary["drifting"] is True and summary["cross_version"] is False
    assert summary["reference"]["versions"] == {v1: 600} and summary["current"]["events"] == 600
    cohorts = summary["cohorts"]
    android = cohorts["android"]["statistics"]
    assert android["genre_entropy_l0"]["drift"] and android["genre_entropy_l1"]["drift"]
    assert android["genre_entropy_l0"]["current_mean"] < android["genre_entropy_l0"]["reference_mean"]
    for untouched in ("ios", "web"):  # their events are the very same stream: no flag
        assert cohorts[untouched]["drifting"] is False, cohorts[untouched]
    entry = android["genre_entropy_l0"]
    assert {"reference_mean", "current_mean", "ks_statistic", "p_adjusted", "wasserstein"} <= set(entry)
    assert summary["drifting_series"][0]["cohort"] in ("android", "all")
    # The cohorts' top attended items: android's histories are now Horror movies, new on top.
    android_items = summary["top_items"]["android"]["layer_0"]
    assert len(android_items["items"]) == 10 and all(i["title"] for i in android_items["items"])
    assert all(i["share_current"] > i["share_reference"] for i in android_items["items"][:3])
    assert set(summary["top_items"]) == {"all", *summary["cohort_values"]}
    assert set(summary["top_items"]["all"]) == {"layer_0", "layer_1"}

    html = paths.html.read_text(encoding="utf-8")
    assert f"<title>{summary['title']}</title>" in html
    data = re.search(r"var (metric_\w+) = (\{.*?\});\n", html, re.S)
    assert data is not None, "no embedded Evidently dashboard"
    dashboard = json.loads(data.group(2))
    texts = [w["params"]["text"] for w in dashboard["widgets"] if w["type"] == "text"]
    assert any("top attended items, all, layer 0" in t for t in texts)
    for value in PLATFORMS:
        assert any(t.startswith(f"## platform = {value}") for t in texts), value
    assert any(t.startswith("## platform = android: DRIFTING") for t in texts)
    assert any(t.startswith("## platform = ios: no drift") for t in texts)
    drift_tables = [w for w in dashboard["widgets"] if w["type"] == "big_table"]
    assert len(drift_tables) == 4  # all events + one per platform
    for table in drift_tables:
        names = {row["column_name"] for row in table["params"]["data"]}
        assert set(summary["columns"]) <= names
    assert 3_000_000 < len(html) < 8_000_000  # Evidently's 3.5 MB script + about 0.5 MB per section
