"""Forward passes in a child process: the same rows as in-process, a died child replaced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from model import checkpoint
from model.data import left_pad, load_movielens
from model.sasrec import SASRec, SASRecConfig
from monitor.attention.forward import InlineForwards, ProcessForwards
from monitor.attention.registry import ModelRegistry, ServedModel

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> list[ServedModel]:
    """Two published versions (different weights), loaded as the agent loads them."""
    root = tmp_path_factory.mktemp("versions")
    catalog = load_movielens().catalog
    versions = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = SASRec(SASRecConfig(n_items=catalog.n_items, max_len=20, hidden=16, layers=2, heads=2))
        versions.append(checkpoint.save(model, catalog, {}, root, label=f"v{seed}"))
    registry = ModelRegistry(root)
    return [registry.get(version) for version in versions]


def _chunks(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [left_pad([rng.integers(1, 500, size=rng.integers(1, 21)) for _ in range(rows)], 20)
            for rows in (7, 16, 3)]


def _rows(pending) -> list[np.ndarray]:
    return [p.result() for p in pending]


def test_rows_from_the_child_are_bit_identical_to_in_process_rows(served):
    """Alternating versions with room for one model in the child also proves its LRU reloads."""
    pool = ProcessForwards(1, served[0].checkpoint.path.parent, torch_threads=1, max_loaded=1)
    try:
        for turn in range(4):  # versions alternate, so the child evicts and reloads each time
            version = served[turn % 2]
            chunks = _chunks(turn)
            remote, local = _rows(pool.submit(version, chunks)), _rows(InlineForwards().submit(version, chunks))
            assert len(remote) == len(local) == 3
            for a, b in zip(remote, local, strict=True):
                assert a.shape == b.shape and a.dtype == np.float32
                np.testing.assert_array_equal(a, b)  # same code, one intra-op thread: identical bits
        assert not np.array_equal(_rows(pool.submit(served[0], chunks))[0], _rows(pool.submit(served[1], chunks))[0])
    finally:
        pool.close()


def test_a_killed_child_is_replaced_and_its_passes_retried(served):
    replaced = []
    pool = ProcessForwards(1, served[0].checkpoint.path.parent, torch_threads=1,
                            on_replaced=lambda: replaced.append(1))
    try:
        pool.warm(served[0])
        (pid,) = pool.pids()
        chunks = _chunks(5)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the child is gone once the OS has reaped it
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        rows = _rows(pool.submit(served[0], chunks))
        for a, b in zip(rows, _rows(InlineForwards().submit(served[0], chunks)), strict=True):
            np.testing.assert_array_equal(a, b)
        assert replaced == [1]
        assert pool.pids() and pool.pids()[0] != pid
    finally:
        pool.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped


def test_the_child_exits_when_the_agent_is_killed(served, tmp_path):
    """SIGKILL gives the agent no chance to stop its child: the child must notice by itself."""
    script = tmp_path / "agent.py"
    script.write_text(textwrap.dedent(f"""
        import time
        from pathlib import Path
        from monitor.attention.forward import ProcessForwards
        from monitor.attention.registry import ModelRegistry
        if __name__ == "__main__":
            root = Path({str(served[0].checkpoint.path.parent)!r})
            pool = ProcessForwards(1, root)
            pool.warm(ModelRegistry(root).get({served[0].version!r}))
            print(pool.pids()[0], flush=True)
            time.sleep(120)
    """))
    agent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        child = int(agent.stdout.readline())
        assert not _gone(child)
        agent.kill()
        agent.wait()
        deadline = time.monotonic() + 15
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(child)
    finally:
        agent.kill()
