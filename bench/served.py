"""Served recommendations across a model update: can they show what attention cannot?

``campaign_flood`` (a retrain on logs a promotion flooded with 5 items) is the one harmful
update family attnmon misses: its attention is a re-seed's (docs/drift.md, "Update
families"). Its harm is in what it serves. Every prediction event already carries the
served top items (``recommended``), which the agent does not read today. This bench asks
whether they would tell the update families apart, with the agent's own test of
concentration on few items (``monitor.drift.concentration.compare``: cross-fitted top
items, chi-square on effective counts, bias-corrected JS distance) applied to the served
slots instead of attention mass.

Per update (previous -> new, the detection bench's pairs on serving traffic, one traffic
seed each): the reference is the ``--before`` events the previous version served just
before the switch (a model update's reference in the agent: the previous version's recent
traffic), the window the first ``--after`` events the new version served. Each event gives
each of its recommended items ``1 / len(recommended)`` of one unit of mass; users are split
into two halves by a hash of their id; the design effects are Kish's, from the users'
event counts (an upper bound of what the agent would use). ``stable`` is the null: the
previous version keeps serving after the "switch".

A row per update and a table per family: the window's and the reference's top-10 share,
the score (JS distance) and p-value, how many updates flag at several effect floors
(flag: narrowed, p <= ``--alpha`` and score >= floor), and the concentration ratio: each
side's cross-fitted top-10 share on its *own* top items, window over reference (how much
more the new version piles onto some few items, whichever they are). Only cached scenario models are used
(none is trained); the last line is one JSON object.

    python bench/served.py --root var/models          # ~1-2 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path

import msgspec
import numpy as np
import torch

_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
sys.path.insert(0, str(_BENCH.parent))

from bench.detection import update_pairs  # noqa: E402
from bench.scenarios import DEFAULT_ROOT, UPDATE_FAMILIES, find_published, load_models  # noqa: E402
from model.data import Interactions, load_movielens  # noqa: E402
from monitor.drift.concentration import Side, compare, cross_share  # noqa: E402
from monitor.drift.items import ItemSketch  # noqa: E402
from monitor.tools.replay import EventFactory, Scenario, serving_traffic  # noqa: E402

FLOORS = (0.1, 0.15, 0.2, 0.25)
TOP_K = 10  # the judge's item_top_k


def cached_versions(root: Path, data: Interactions, recipe: str, seeds: int) -> list[str]:
    """Published versions of ``recipe`` for seeds 0.., stopping at the first one not cached."""
    out = []
    for seed in range(seeds):
        version = find_published(root, recipe, seed, n_items=data.catalog.n_items)
        if version is None:
            break
        out.append(version)
    return out


def side(events: list[dict]) -> tuple[Side, float]:
    """The served slots of ``events`` as one side of the item test, and its Kish design effect."""
    whole, halves = ItemSketch(), (ItemSketch(), ItemSketch())
    per_user: dict[str, int] = {}
    for event in events:
        items = np.array([r["item"] for r in event["recommended"]], dtype=np.int64)
        if len(items) == 0:
            continue
        mass = np.full(len(items), 1.0 / len(items))
        user = event["user_id"]
        per_user[user] = per_user.get(user, 0) + 1
        whole.add(items, mass)
        halves[zlib.crc32(user.encode()) & 1].add(items, mass)
    counts = np.array(list(per_user.values()), dtype=np.float64)
    kish = float(len(counts) * (counts**2).sum() / counts.sum() ** 2) if len(counts) else 1.0
    return Side(whole, halves, 0), kish


def replay(data: Interactions, models: dict, previous: str, new: str, seed: int, before: int,
           after: int) -> dict:
    """One update's served slots: the reference before the switch against the window after it."""
    scenario = Scenario(versions=((0, previous), (before, new)))
    factory = EventFactory(serving_traffic(data, seed), {v: models[v] for v in {previous, new}}, scenario,
                           seed=seed, batch=250)
    decoder = msgspec.json.Decoder()
    events = [decoder.decode(raw) for batch in factory.events(before + after) for raw in batch]
    reference, ref_design = side(events[:before])
    window, win_design = side(events[before:])
    out = compare([window], [reference], np.array([win_design]), np.array([ref_design]), top_k=TOP_K)
    # Concentration whatever the items: each side's cross-fitted share on its own top items.
    # A retrain serves other items (overlap ~0), so "more mass on the window's items than the
    # reference had" holds for any update; "more mass on *some* few items" need not.
    own_window, own_reference = cross_share(window, TOP_K)[0], cross_share(reference, TOP_K)[0]
    return {"previous": previous, "new": new, "seed": seed, "score": float(out.score[0]),
            "p_value": float(out.p_value[0]), "narrowed": bool(out.narrowed[0]),
            "top_share": float(out.top_share[0]), "reference_top_share": float(out.reference_top_share[0]),
            "overlap": float(out.overlap[0]), "design": [round(win_design, 2), round(ref_design, 2)],
            "concentration_ratio": own_window / max(own_reference, 1e-12)}


def family_summary(kind: str, rows: list[dict], alpha: float) -> dict:
    scores = [r["score"] for r in rows]
    ratios = [r["concentration_ratio"] for r in rows]
    return {"kind": kind, "updates": len(rows),
            "score_min": round(min(scores), 3) if rows else None, "score_max": round(max(scores), 3) if rows else None,
            "ratio_min": round(min(ratios), 2) if rows else None, "ratio_max": round(max(ratios), 2) if rows else None,
            "flagged_at": {f"{floor:g}": sum(r["narrowed"] and r["p_value"] <= alpha and r["score"] >= floor
                                               for r in rows) for floor in FLOORS}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="scenario model root (cached models only)")
    parser.add_argument("--updates", type=int, default=10, help="updates per family")
    parser.add_argument("--models", type=int, default=2, help="cached models per recipe, seeds 0..")
    parser.add_argument("--before", type=int, default=2000, help="reference: events served before the switch")
    parser.add_argument("--after", type=int, default=500, help="window: events served after it")
    parser.add_argument("--alpha", type=float, default=0.01)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    data = load_movielens()
    base = cached_versions(args.root, data, "base", max(args.models, 2))
    if len(base) < 2:
        parser.error(f"needs base models s0 and s1 cached under {args.root} (make test trains them)")
    families: dict[str, tuple[str, list[tuple[str, str]]]] = {
        "stable": ("null", [(base[i % len(base)], base[i % len(base)]) for i in range(args.updates)])}
    for family in UPDATE_FAMILIES:
        new = base if family.recipe == "base" else cached_versions(args.root, data, family.recipe, args.models)
        if not new:
            print(f"  {family.name}: no cached {family.recipe} model, skipped", flush=True)
            continue
        families[family.name] = (family.kind, update_pairs(base, new, args.updates, reseed=family.recipe == "base"))
    models = load_models(args.root, sorted({v for _, pairs in families.values() for pair in pairs for v in pair}))

    summary = {}
    print(f"{'family':<17} {'kind':<8} {'seed':>4} {'top10 win':>9} {'ref':>6} {'overlap':>7} {'score':>6} "
          f"{'p':>8} {'conc.':>6}  design (win, ref)")
    for name, (kind, pairs) in families.items():
        rows = []
        for i, (previous, new) in enumerate(pairs):
            row = replay(data, models, previous, new, 100 + i, args.before, args.after)
            rows.append(row)
            print(f"{name:<17} {kind:<8} {row['seed']:>4} {row['top_share']:>9.3f} {row['reference_top_share']:>6.3f} "
                  f"{row['overlap']:>7.2f} {row['score']:>6.3f} {row['p_value']:>8.1e} {row['concentration_ratio']:>6.2f}  "
                  f"{row['design']}", flush=True)
        summary[name] = family_summary(kind, rows, args.alpha)
    print()
    print(f"{'family':<17} {'kind':<8} {'updates':>7} {'score range':>13} {'conc. range':>12}  "
          + "  ".join(f"flag@{f:g}" for f in FLOORS))
    for name, s in summary.items():
        print(f"{name:<17} {s['kind']:<8} {s['updates']:>7} {s['score_min']:>6.3f}-{s['score_max']:<6.3f} "
              f"{s['ratio_min']:>5.2f}-{s['ratio_max']:<6.2f}  "
              + "  ".join(f"{s['flagged_at'][f'{f:g}']:>7}" for f in FLOORS))
    print(json.dumps({"families": summary, "before": args.before, "after": args.after, "alpha": args.alpha,
                      "top_k": TOP_K, "seconds": round(time.perf_counter() - started, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
