"""Every ``>>>`` example in monitor/ and model/ runs, and passes.

The modules are found by walking the source tree, so a new module's examples
are run without touching this file. ``MIN_EXAMPLES`` keeps the test from
passing vacuously (a walk that finds nothing, examples deleted wholesale).
"""

from __future__ import annotations

import contextlib
import doctest
import functools
import importlib
import io
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("monitor", "model")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
MIN_EXAMPLES = 50  # 63 when this was written


def module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "__pycache__" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(parts))
    return names


@functools.cache
def run_examples(name: str) -> tuple[doctest.TestResults, str]:
    """``doctest.testmod`` on one module -> (results, the report of any failure)."""
    module = importlib.import_module(name)
    report = io.StringIO()
    with contextlib.redirect_stdout(report):
        results = doctest.testmod(module, optionflags=FLAGS, report=False)
    return results, report.getvalue()


MODULES = module_names()


@pytest.mark.parametrize("name", MODULES)
def test_examples_pass(name: str) -> None:
    results, report = run_examples(name)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples failed in {name}:\n{report}"


def test_examples_ran() -> None:
    assert {"monitor.drift.verdict", "monitor.stream.events", "model.sasrec"} <= set(MODULES)
    attempted = {name: run_examples(name)[0].attempted for name in MODULES}
    total = sum(attempted.values())
    assert total >= MIN_EXAMPLES, f"only {total} examples ran: {attempted}"
    for name in ("monitor.drift.verdict", "monitor.drift.divergence", "monitor.drift.histogram",
                 "monitor.drift.cohorts", "monitor.stream.offsets", "monitor.stream.events"):
        assert attempted[name] > 0, f"{name} lost its examples"
