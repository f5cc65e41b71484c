"""Versioned checkpoints: one directory per model version, identified by a content hash.

Layout of ``<root>/<version>/``::

    weights.safetensors   tensors only (safetensors: no pickle, nothing executes on load)
    config.json           SASRecConfig
    catalog.json          item vocabulary and metadata (ids, titles, genres)
    metrics.json          training and evaluation figures
    manifest.json         {"version", "label", "created", "files": {name: sha256}}

The version id is derived from the manifest's file hashes and label, so two identical
checkpoints share one id and any change to any file yields another. Loading verifies
every hash and rejects a missing, truncated, tampered or mismatched file with an error
naming the file and the problem.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.data import ItemCatalog
from model.sasrec import SASRec, SASRecConfig

WEIGHTS = "weights.safetensors"
CONFIG = "config.json"
CATALOG = "catalog.json"
METRICS = "metrics.json"
MANIFEST = "manifest.json"
HASHED_FILES = (WEIGHTS, CONFIG, CATALOG, METRICS)
VERSION_PREFIX = "sasrec-"


class CheckpointError(Exception):
    """A checkpoint cannot be used; ``path`` names the offending file."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    version: str
    label: str
    path: Path
    config: SASRecConfig
    catalog: ItemCatalog
    metrics: dict
    model: SASRec  # in eval mode


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _version_of(files: dict[str, str], label: str) -> str:
    canonical = json.dumps({"files": files, "label": label}, sort_keys=True).encode()
    return VERSION_PREFIX + hashlib.sha256(canonical).hexdigest()[:16]


def _write_json(path: Path, payload: object) -> None:
    path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")


def save(model: SASRec, catalog: ItemCatalog, metrics: dict, root: Path, *, label: str = "") -> str:
    """Write a checkpoint under ``root`` atomically and return its version id."""
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        tensors = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
        save_file(tensors, str(staging / WEIGHTS))
        _write_json(staging / CONFIG, dataclasses.asdict(model.config))
        _write_json(staging / CATALOG, catalog.to_json())
        _write_json(staging / METRICS, metrics)
        files = {name: _sha256(staging / name) for name in HASHED_FILES}
        version = _version_of(files, label)
        _write_json(
            staging / MANIFEST,
            {"version": version, "label": label, "created": time.time(), "files": files},
        )
        target = root / version
        if target.exists():  # same content hash: the very same checkpoint is already there
            return version
        os.replace(staging, target)  # atomic publish: readers never see a half-written version
        return version
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(path, "missing")
    try:
        payload = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(path, f"not valid JSON ({err})") from err
    if not isinstance(payload, dict):
        raise CheckpointError(path, "expected a JSON object")
    return payload


def verify(directory: Path) -> dict:
    """Check the manifest and every file hash; return the manifest."""
    manifest = _read_json(directory / MANIFEST)
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(HASHED_FILES):
        raise CheckpointError(directory / MANIFEST, f"must list exactly {list(HASHED_FILES)}")
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(path, "missing")
        actual = _sha256(path)
        if actual != expected:
            raise CheckpointError(path, f"content hash {actual[:12]}… does not match manifest {str(expected)[:12]}…")
    version = _version_of(files, str(manifest.get("label", "")))
    if manifest.get("version") != version:
        raise CheckpointError(directory / MANIFEST, f"version {manifest.get('version')!r} is not its content hash {version}")
    if directory.name != version:
        raise CheckpointError(directory, f"directory name does not match version {version}")
    return manifest


def load(directory: Path) -> Checkpoint:
    """Verify and load one version directory; the model comes back in eval mode on CPU."""
    directory = Path(directory)
    manifest = verify(directory)
    try:
        config = SASRecConfig.from_json(_read_json(directory / CONFIG))
    except (TypeError, ValueError) as err:
        raise CheckpointError(directory / CONFIG, f"invalid model config ({err})") from err
    try:
        catalog = ItemCatalog.from_json(_read_json(directory / CATALOG))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(directory / CATALOG, f"invalid catalog ({err})") from err
    if catalog.n_items != config.n_items:
        raise CheckpointError(directory / CATALOG, f"has {catalog.n_items} items, config says {config.n_items}")
    try:
        tensors = load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(directory / WEIGHTS, f"unreadable tensors ({err})") from err
    model = SASRec(config)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise CheckpointError(directory / WEIGHTS, f"tensors do not fit the config ({err})") from err
    model.eval()
    return Checkpoint(
        version=manifest["version"],
        label=str(manifest.get("label", "")),
        path=directory,
        config=config,
        catalog=catalog,
        metrics=_read_json(directory / METRICS),
        model=model,
    )


def list_versions(root: Path) -> list[Path]:
    """Published version directories under root, oldest first (staging dirs excluded)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(VERSION_PREFIX)]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))


def tensor_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
