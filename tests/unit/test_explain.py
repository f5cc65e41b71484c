"""monitor.tools.explain: one event's full attention, as a PNG heatmap and a bounded terminal view."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import image as mpimg

from model import checkpoint
from model.data import ItemCatalog, load_movielens
from model.sasrec import SASRec, SASRecConfig
from monitor.stream.events import Event, Recommendation, encode
from monitor.tools.explain import _display_width, _fit, explain, heatmap_size, heavy_hitters_of
from monitor.attention.recompute import recompute
from monitor.attention.registry import ModelRegistry
from monitor.attention.stats import STATISTICS, compute

MAX_LEN = 50
UNKNOWN_ITEM = 2_000_000_000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def catalog() -> ItemCatalog:
    return load_movielens().catalog


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, catalog: ItemCatalog) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=catalog.n_items, max_len=MAX_LEN, hidden=16, layers=2, heads=2))
    return root, checkpoint.save(model, catalog, {}, root, label="untrained")


def _event(catalog: ItemCatalog, version: str, n: int, *, unknown: int = 0, seed: int = 0) -> Event:
    """n known items with short titles (so the text view shows them whole), plus unknown ones."""
    short = [i for i in range(1, catalog.n_items + 1) if len(catalog.titles[i]) <= 30 and catalog.item_genres[i]]
    picked = np.random.default_rng(seed).choice(short, size=n, replace=False)
    history = [int(catalog.item_ids[i]) for i in picked]
    for k in range(unknown):
        history.insert(2 * k, UNKNOWN_ITEM + k)
    return Event(event_id=f"ev-{seed}", ts=1_764_259_200_000, model_version=version, user_id="u-42",
                 history=tuple(history), recommended=(Recommendation(item=history[-1], score=1.0),),
                 context={"platform": "ios"})


def test_weights_scores_and_stats_match_the_agents_numbers(published, catalog) -> None:
    root, version = published
    event = _event(catalog, version, 30, unknown=2)
    result = explain(encode(event), root, png_path=None)  # bytes in, as from Kafka
    assert result.png is None and result.model_version == version and result.event_id == "ev-0"
    assert result.weights.shape == (2, 2, 30) and result.dropped_unknown == 2 and result.truncated == 0
    np.testing.assert_allclose(result.weights.sum(axis=-1), 1.0, atol=1e-5)
    assert list(result.items) == [i for i in event.history if i < UNKNOWN_ITEM]

    # the fast path the agent uses gives the same statistics for this event
    served = ModelRegistry(root).get(version)
    indices = served.to_indices(result.items)
    (chunk,) = recompute(served.checkpoint.model, [indices], max_len=MAX_LEN)
    agent = compute(chunk.weights, chunk.lengths, chunk.item_index, served.genre_matrix)
    assert set(result.stats) == {f"{s}_l{layer}" for s in STATISTICS for layer in range(2)}
    for s, stat in enumerate(STATISTICS):
        for layer in range(2):
            assert result.stats[f"{stat}_l{layer}"] == pytest.approx(float(agent[0, s, layer]), abs=1e-5)

    assert len(result.recommended) == 5
    scores = [r.score for r in result.recommended]
    assert scores == sorted(scores, reverse=True)
    assert not {r.item for r in result.recommended} & set(result.items.tolist())  # seen items excluded


def test_text_view_names_top_attended_items_within_its_width(published, catalog) -> None:
    root, version = published
    result = explain(_event(catalog, version, 40, unknown=1, seed=1), root, png_path=None, width=100)
    lines = result.text.splitlines()
    assert max(_display_width(line) for line in lines) <= 100
    assert f"event ev-1 · user u-42 · model {version} (untrained)" in lines[0]
    assert "1 unknown item dropped" in lines[1]
    served = ModelRegistry(root).get(version)
    mean = result.weights.mean(axis=1)  # [layers, n]
    for layer in range(2):
        assert f"layer {layer}  entropy {result.stats[f'entropy_l{layer}']:.3f}" in result.text
        for position in np.argsort(-mean[layer])[:3]:
            index = int(served.to_indices(result.items[position : position + 1])[0])
            title = served.checkpoint.catalog.titles[index]
            assert any(title in line and f"{mean[layer, position]:.3f}" in line for line in lines), title
    for rec in result.recommended:
        assert _fit(rec.title, 20)[:-1] in result.text

    narrow = explain(_event(catalog, version, 40, seed=1), root, png_path=None, width=72)
    assert max(_display_width(line) for line in narrow.text.splitlines()) <= 72


def test_heatmap_png_has_the_documented_size_and_real_content(tmp_path, published, catalog) -> None:
    root, version = published
    event = _event(catalog, version, 80, seed=2)  # longer than max_len: the model reads the last 50
    result = explain(event, root, png_path=tmp_path / "deep" / "ev.png", max_positions=20)
    assert result.png == tmp_path / "deep" / "ev.png" and result.png.is_file()
    assert result.weights.shape == (2, 2, MAX_LEN) and result.truncated == 30
    assert "the 30 oldest beyond max_len 50 not read" in result.text

    pixels = mpimg.imread(result.png)  # [H, W, 4] floats
    rows = 2 * (2 + 1)  # per layer: 2 heads and the mean
    assert (pixels.shape[1], pixels.shape[0]) == heatmap_size(20, rows)
    assert pixels.std() > 0.05
    colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50  # a colour map, not a blank or two-tone canvas

    full = explain(event, root, png_path=tmp_path / "full.png")  # default: up to 50 positions
    full_pixels = mpimg.imread(full.png)
    assert (full_pixels.shape[1], full_pixels.shape[0]) == heatmap_size(50, rows)
    assert full_pixels.shape[1] > pixels.shape[1]


def test_unknown_version_and_unknown_history_are_errors(published, catalog) -> None:
    root, version = published
    with pytest.raises(LookupError, match="not available"):
        explain(_event(catalog, "sasrec-0000000000000000", 5), root, png_path=None)
    only_unknown = Event(event_id="e", ts=1, model_version=version, user_id="u", history=(UNKNOWN_ITEM,))
    with pytest.raises(ValueError, match="none of the 1 history items"):
        explain(only_unknown, root, png_path=None)
    one = explain(_event(catalog, version, 1), root, png_path=None)  # a single item: fully concentrated
    assert one.weights.shape == (2, 2, 1) and one.stats["max_weight_l0"] == pytest.approx(1.0)


def test_untrusted_ids_neither_break_the_plot_nor_reach_the_terminal(tmp_path, published, catalog) -> None:
    root, version = published
    event = Event(event_id="ev-\x1b[2J$x", ts=1, model_version=version, user_id=r"$\frac{$",
                  history=_event(catalog, version, 6).history)
    result = explain(event, root, png_path=tmp_path / "odd.png")
    assert result.png.is_file()
    assert "\x1b" not in result.text and "event ev-?[2J$x" in result.text


def test_heavy_hitters_of_a_report_summary_are_marked(tmp_path, published, catalog) -> None:
    root, version = published
    event = _event(catalog, version, 40, seed=3)
    plain = explain(event, root, png_path=None, width=120)
    mean = plain.weights.mean(axis=1)
    top = int(plain.items[int(np.argmax(mean[0]))])  # the most attended item of layer 0
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"top_items": {"all": {"layer_0": {"items": [{"item": top}]}}}}))
    heavy = heavy_hitters_of(summary, "all")
    assert heavy == {top} and heavy_hitters_of(summary, "ios") == set()
    marked = explain(event, root, png_path=None, width=120, heavy_hitters=heavy)
    index = int(np.flatnonzero(catalog.item_ids == top)[0])
    assert any(f"[heavy] {catalog.titles[index]}" in line for line in marked.text.splitlines())
    assert "[heavy]" not in plain.text
