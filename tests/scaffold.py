"""Small real checkpoints for tests: the MovieLens catalogue with a narrow SASRec.

Untrained weights are enough where a test checks plumbing (counts, offsets, state);
tests of drift verdicts use trained scenario models instead.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from model import checkpoint
from model.data import ItemCatalog, load_movielens
from model.sasrec import SASRec, SASRecConfig

_CATALOG: ItemCatalog | None = None



@dataclasses.dataclass(frozen=True)
class Rec:
    """A polled record as the pipeline reads it (``monitor.stream.pipeline.RecordLike``)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp_ms: int = 0


def catalog() -> ItemCatalog:
    global _CATALOG
    if _CATALOG is None:
        _CATALOG = load_movielens().catalog
    return _CATALOG


def publish_small(root: Path, seed: int = 0, label: str = "test", max_len: int = 50) -> str:
    torch.manual_seed(seed)
    model = SASRec(SASRecConfig(n_items=catalog().n_items, max_len=max_len, hidden=16, layers=2, heads=2))
    return checkpoint.save(model, catalog(), {}, root, label=label)


def small_models(root: Path, versions: list[str]) -> dict[str, SASRec]:
    return {v: checkpoint.load(root / v).model for v in versions}
