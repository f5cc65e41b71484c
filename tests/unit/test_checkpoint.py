"""Versioned checkpoints: round trip, content-hash versions, and every rejection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from model import checkpoint
from model.checkpoint import CheckpointError
from model.data import ItemCatalog, left_pad
from model.sasrec import SASRec, SASRecConfig


def _catalog(n_items: int) -> ItemCatalog:
    return ItemCatalog(
        item_ids=np.arange(0, n_items + 1, dtype=np.int64) * 10,
        titles=("<pad>",) + tuple(f"movie {i}" for i in range(1, n_items + 1)),
        item_genres=((),) + tuple(("Drama",) if i % 2 else ("Comedy", "Drama") for i in range(1, n_items + 1)),
        genres=("Comedy", "Drama"),
    )


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[Path, SASRec, str]:
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=20, max_len=8, hidden=8, layers=2, heads=2))
    version = checkpoint.save(model, _catalog(20), {"ndcg10": 0.05}, tmp_path, label="test")
    return tmp_path, model, version


def test_round_trip_gives_identical_scores(saved):
    root, model, version = saved
    loaded = checkpoint.load(root / version)
    assert loaded.version == version and version.startswith("sasrec-")
    assert loaded.config == model.config and loaded.metrics == {"ndcg10": 0.05}
    assert loaded.catalog.titles[3] == "movie 3"
    model.eval()
    histories = torch.from_numpy(left_pad([np.array([1, 2, 3]), np.array([5])], 8))
    with torch.inference_mode():
        assert torch.equal(model.scores(histories), loaded.model.scores(histories))
    assert not loaded.model.training


def test_version_is_a_content_hash(saved, tmp_path: Path):
    root, model, version = saved
    assert checkpoint.save(model, _catalog(20), {"ndcg10": 0.05}, root, label="test") == version
    with torch.no_grad():
        model.items.weight[1, 0] += 1.0
    other = checkpoint.save(model, _catalog(20), {"ndcg10": 0.05}, root, label="test")
    assert other != version
    assert [p.name for p in checkpoint.list_versions(root)] == [version, other]
    assert not any(p.name.startswith(".staging") for p in root.iterdir())


def _expect_rejection(directory: Path, culprit: str, words: str) -> None:
    with pytest.raises(CheckpointError, match=words) as caught:
        checkpoint.load(directory)
    assert caught.value.path.name == culprit


@pytest.mark.parametrize("name", ["weights.safetensors", "config.json", "catalog.json", "metrics.json", "manifest.json"])
def test_missing_file_is_named(saved, name):
    root, _, version = saved
    (root / version / name).unlink()
    _expect_rejection(root / version, name, "missing")


def test_truncated_weights_are_rejected(saved):
    root, _, version = saved
    path = root / version / "weights.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    _expect_rejection(root / version, "weights.safetensors", "does not match manifest")


def test_tampered_config_is_rejected(saved):
    root, _, version = saved
    path = root / version / "config.json"
    payload = json.loads(path.read_text())
    payload["dropout"] = 0.5
    path.write_text(json.dumps(payload))
    _expect_rejection(root / version, "config.json", "does not match manifest")


def test_tampered_manifest_version_is_rejected(saved):
    root, _, version = saved
    path = root / version / "manifest.json"
    payload = json.loads(path.read_text())
    payload["label"] = "promoted"
    path.write_text(json.dumps(payload))
    _expect_rejection(root / version, "manifest.json", "not its content hash")


def test_renamed_directory_is_rejected(saved):
    root, _, version = saved
    moved = root / "sasrec-0000000000000000"
    shutil.move(root / version, moved)
    _expect_rejection(moved, moved.name, "directory name")


def test_mismatched_weights_are_rejected_even_with_a_consistent_manifest(saved, tmp_path: Path):
    """Weights from another architecture, re-hashed so only the shape check can catch them."""
    root, _, version = saved
    torch.manual_seed(1)
    wider = SASRec(SASRecConfig(n_items=20, max_len=8, hidden=16, layers=2, heads=2))
    forged_root = tmp_path / "forged"
    forged_version = checkpoint.save(wider, _catalog(20), {}, forged_root, label="x")
    forged = forged_root / forged_version
    shutil.copy(root / version / "config.json", forged / "config.json")
    manifest = json.loads((forged / "manifest.json").read_text())
    manifest["files"]["config.json"] = checkpoint._sha256(forged / "config.json")
    manifest["version"] = checkpoint._version_of(manifest["files"], manifest["label"])
    (forged / "manifest.json").write_text(json.dumps(manifest))
    renamed = forged_root / manifest["version"]
    shutil.move(forged, renamed)
    _expect_rejection(renamed, "weights.safetensors", "do not fit the config")
