"""What pairing costs the agent while a model update is judged.

After an update the pipeline recomputes the previous version on a sample of the new version's
events (attention rows and statistics, ``pipeline.paired_fraction`` at most
``paired_max_per_batch`` per batch), and for at most ``paired_lists_max_per_batch`` of them
both versions' served lists (a pass to the item scores each, in the fold's thread). This bench
runs the agent's pipeline in-process with the production defaults (forward passes in a child
process), without Kafka, over the same encoded events: 2,048 events of the base model, then a
re-seed update serving ``--events`` more, folded in batches of ``--batch`` (the poll's
``max_records``) and judged every 10 batches. Three configurations on the same events:

- ``no_pairing``: ``paired_fraction`` 0, the baseline;
- ``pairing_no_lists``: the default sample, ``paired_lists_max_per_batch`` 0;
- ``pairing_with_lists``: the defaults;
- ``pairing_lists_64``: lists for every paired event a full batch keeps (64).

Each configuration runs ``--repeats`` times, interleaved; figures are the median run's:
events/s of the update phase, and per-batch time (fold and pairing) p50 / p99. The last line
is one JSON object. ``python -m bench.update_cost --root var/models`` (scenario models:
``python -m bench.scenarios``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scenarios import DEFAULT_ROOT, ScenarioRun, load_models, train_scenario_models  # noqa: E402
from model.data import load_movielens  # noqa: E402
from monitor.stream.config import PipelineConfig  # noqa: E402
from monitor.tools.replay import EventFactory, Scenario, serving_traffic  # noqa: E402

BEFORE = 2_048  # events of the base model: its baselines start, the update follows
CONFIGS = {
    "no_pairing": {"paired_fraction": 0.0},
    "pairing_no_lists": {"paired_lists_max_per_batch": 0},
    "pairing_with_lists": {},  # the defaults
    "pairing_lists_64": {"paired_lists_max_per_batch": 64},  # lists for every paired event of a full batch
}


def encoded_events(root: Path, previous: str, new: str, after: int, batch: int) -> list[list[bytes]]:
    """BEFORE events of ``previous`` then ``after`` of ``new``, in batches of ``batch``."""
    scenario = Scenario(versions=((0, previous), (BEFORE, new)))
    factory = EventFactory(serving_traffic(load_movielens(), 0), load_models(root, [previous, new]), scenario,
                           seed=0, batch=batch, recommend=False)
    return list(factory.events(BEFORE + after))


def run_once(root: Path, batches: list[list[bytes]], overrides: dict) -> dict:
    """One configuration over the batches: the update phase's events/s and per-batch times."""
    run = ScenarioRun(root, pipeline_config=dataclasses.replace(PipelineConfig(), **overrides))
    try:
        times: list[float] = []
        events = 0
        started = None
        for k, batch in enumerate(batches):
            t0 = time.perf_counter()
            run.feed(batch)
            if (k + 1) % 10 == 0:
                run.judge()
            elapsed = time.perf_counter() - t0
            if run.events > BEFORE:  # the update phase (the first batch of it included)
                started = started if started is not None else t0
                times.append(elapsed)
                events += len(batch)
        wall = time.perf_counter() - started if started is not None else float("nan")
        paired = run.pipeline.paired.counts["pairs"]
    finally:
        run.pipeline.close()
    ms = np.array(times) * 1e3
    return {"events_per_s": events / wall, "batch_ms_p50": float(np.percentile(ms, 50)),
            "batch_ms_p99": float(np.percentile(ms, 99)), "pairs_folded": paired}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.update_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="scenario model root (cache)")
    parser.add_argument("--events", type=int, default=20_480, help="events of the new version")
    parser.add_argument("--batch", type=int, default=1_024, help="events per batch (the poll's max_records)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    versions = train_scenario_models(args.root)  # reuses the published models
    previous, new = versions["base"], versions["benign"]
    batches = encoded_events(args.root, previous, new, args.events, args.batch)
    defaults = PipelineConfig()
    print(f"{previous} -> {new} (a re-seed); {BEFORE:,} + {args.events:,} events in batches of {args.batch:,}; "
          f"defaults: paired_fraction {defaults.paired_fraction}, paired_max_per_batch "
          f"{defaults.paired_max_per_batch}, paired_lists_max_per_batch {defaults.paired_lists_max_per_batch}",
          flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for repeat in range(args.repeats):
        for name, overrides in CONFIGS.items():
            result = run_once(args.root, batches, overrides)
            runs[name].append(result)
            print(f"  run {repeat + 1} {name:<19} {result['events_per_s']:8,.0f} events/s  batch p50 "
                  f"{result['batch_ms_p50']:6.1f} ms  p99 {result['batch_ms_p99']:6.1f} ms  "
                  f"pairs {result['pairs_folded']:,}", flush=True)
    figures = {}
    for name, results in runs.items():
        median = sorted(results, key=lambda r: r["events_per_s"])[len(results) // 2]
        figures[name] = {k: round(v, 1) for k, v in median.items()}
    base = figures["no_pairing"]["events_per_s"]
    ratios = {name: round(f["events_per_s"] / base, 3) for name, f in figures.items()}
    print("median run per configuration, events/s relative to no pairing: "
          + ", ".join(f"{name} {ratio:.2f}" for name, ratio in ratios.items()))
    print(json.dumps({"events_per_s": {n: f["events_per_s"] for n, f in figures.items()},
                      "relative_to_no_pairing": ratios,
                      "batch_ms_p50": {n: f["batch_ms_p50"] for n, f in figures.items()},
                      "batch_ms_p99": {n: f["batch_ms_p99"] for n, f in figures.items()},
                      "events": args.events, "batch": args.batch, "repeats": args.repeats,
                      "spread_events_per_s": {n: [round(r["events_per_s"]) for r in rs] for n, rs in runs.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
