"""Durable agent state: windows, baselines, cohorts and the offsets they include.

One JSON document is written atomically (temp file, fsync, rename), so a crash leaves
either the previous checkpoint or the new one, never a torn file. Offsets are stored
with the state they account for: on restart the agent seeks to them, so events after
the checkpoint are folded exactly once into the restored state.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

FORMAT = 1
FILE = "state.json"


class StateError(Exception):
    pass


class UnusableState(Exception):
    """The checkpoint cannot be restored and the settings say to stop (``state.on_unusable: exit``)."""

    exit_status = 3  # distinct from 1 (any other failure), so a supervisor can tell it apart


def save(directory: Path, pipeline_state: dict[str, Any], offsets: dict[tuple[str, int], int]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    document = {
        "format": FORMAT,
        "offsets": [[topic, partition, offset] for (topic, partition), offset in sorted(offsets.items())],
        "pipeline": pipeline_state,
    }
    target = directory / FILE
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load(directory: Path) -> tuple[dict[str, Any], dict[tuple[str, int], int]] | None:
    """(pipeline state, offsets) from the last checkpoint, or None when there is none."""
    path = directory / FILE
    if not path.exists():
        return None
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise StateError(f"{path}: unreadable checkpoint ({err})") from err
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise StateError(f"{path}: unsupported checkpoint format {document.get('format') if isinstance(document, dict) else None!r}")
    offsets = {(str(t), int(p)): int(o) for t, p, o in document.get("offsets", [])}
    return document["pipeline"], offsets


def set_aside(directory: Path) -> Path | None:
    """Move an unusable checkpoint out of the way (kept for a post-mortem, never deleted);
    returns where it went, or None when there was none."""
    path = directory / FILE
    if not path.exists():
        return None
    aside = directory / f"{FILE}.unusable-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    os.replace(path, aside)
    return aside
