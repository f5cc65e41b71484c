"""Roll-up of drifting cohorts: which drift is explained by a stronger one elsewhere.

A shift confined to one cohort (say platform=android) also moves every cohort that
contains part of its traffic (all, each region, ...), but diluted: a mixture is closer
to the baseline than its shifted component. So a drifting within-version cohort whose
largest effect is below that of a drifting cohort in another dimension (of the same
version, "all" aside) is reported as explained by it, and on-call is paged for the root
cohort only. Model-update windows are not rolled up: they have their own effect floor.

Plain Python on the judge's rows; no torch, Kafka or prometheus_client.

>>> rows = [
...     {"kind": "within_version", "model_version": "v", "dimension": "platform", "cohort": "android",
...      "score": 0.4, "drifting": 1},
...     {"kind": "within_version", "model_version": "v", "dimension": "region", "cohort": "eu",
...      "score": 0.2, "drifting": 1},
... ]
>>> explained(rows, [("within_version", "v", "platform", "android"), ("within_version", "v", "region", "eu")])
{('within_version', 'v', 'region', 'eu'): ('platform', 'android')}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Cohort = tuple[str, str, str, str]  # (kind, model_version, dimension, cohort)


def explained(key_rows: Iterable[Mapping[str, Any]], drifting: Iterable[Cohort]) -> dict[Cohort, tuple[str, str]]:
    """Drifting within-version cohorts explained by a stronger drifting cohort of another dimension.

    ``key_rows``: the latest judged row of each series (``kind``, ``model_version``,
    ``dimension``, ``cohort``, ``score``: its effect, ``drifting``); ``drifting``: the
    cohorts drifting now, of any kind. Returns cohort -> (dimension, cohort) explaining it.
    """
    strongest: dict[Cohort, float] = {}  # a drifting cohort's largest effect over its series
    for row in key_rows:
        if row["kind"] == "within_version" and row["drifting"]:
            cohort = (row["kind"], row["model_version"], row["dimension"], row["cohort"])
            strongest[cohort] = max(strongest.get(cohort, 0.0), float(row["score"]))
    within = [c for c in drifting if c[0] == "within_version"]
    out: dict[Cohort, tuple[str, str]] = {}
    for cohort in within:
        score = strongest.get(cohort, 0.0)
        rivals = [(strongest.get(other, 0.0), other) for other in within
                  if other[1] == cohort[1] and other[2] != cohort[2] and other[2] != "all"]
        best = max(rivals, default=None)
        if best is not None and best[0] > score:
            out[cohort] = (best[1][2], best[1][3])
    return out
