"""Ranking quality of the served model against two baselines, and attention-recompute speed.

Prints, for SASRec, GRU4Rec and most-popular on the same leave-one-out split of MovieLens,
mean ± std over seeds of HR@10 / NDCG@10 with full ranking (seen items excluded) and with
100 sampled negatives, and SASRec's paired per-user NDCG@10 difference to each baseline with
a bootstrap interval (is a gap more than noise?); then the attention recompute throughput of
the trained SASRec at batch 1 and batch 256, naive path (full forward, every history padded
to max_len) vs the fast path (length-sorted chunks, last-row-only last block), measured in
the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

# `python bench/model.py` puts bench/ first on sys.path, where this very file would
# shadow the `model` package; drop it (running as `python -m bench.model` needs no help).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from model.baselines import GRU4Rec, GRU4RecConfig, Popularity  # noqa: E402
from model.data import Split, leave_one_out, left_pad, load_movielens  # noqa: E402
from model.evaluate import RankingMetrics, ndcg_gains, target_ranks  # noqa: E402
from model.sasrec import SASRec, SASRecConfig  # noqa: E402
from model.train import TrainConfig, seed_everything, train  # noqa: E402
from monitor.attention.recompute import recompute  # noqa: E402
from monitor.tools.replay import timeline_steps  # noqa: E402

FIELDS = ("hr10", "ndcg10", "hr10_sampled", "ndcg10_sampled")


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def throughput(model: SASRec, histories: list[np.ndarray], batch: int, fast: bool, seconds: float = 6.0) -> float:
    """Histories per second through the naive or the fast attention path."""
    done, started = 0, time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - started < seconds:
            for start in range(0, len(histories), batch):
                chunk = histories[start : start + batch]
                if fast:
                    for _ in recompute(model, chunk, max_len=model.config.max_len, max_batch=batch):
                        pass
                else:
                    model.attention(torch.from_numpy(left_pad(chunk, model.config.max_len)))
                done += len(chunk)
                if time.perf_counter() - started >= seconds:
                    break
    return done / (time.perf_counter() - started)


def test_ranking(model: torch.nn.Module, split: Split, n_items: int, max_len: int, seed: int,
                 ) -> tuple[RankingMetrics, np.ndarray]:
    """Test-split metrics (full and sampled) and each user's NDCG@10 (full), from one ranking."""
    full, sampled = target_ranks(model, split.test_history, split.test_target, n_items=n_items, max_len=max_len,
                                 seed=seed)
    return RankingMetrics.from_ranks(full, sampled), ndcg_gains(full)


def paired_difference(a: list[np.ndarray], b: list[np.ndarray], resamples: int = 10_000) -> tuple[float, float, float, float]:
    """Mean per-user NDCG difference a - b, its bootstrap 95% CI over users, and a's win share.

    Users, not seeds, are the unit: the same 671 test users appear in every seed, so
    treating seeds as independent samples would overstate the evidence.
    """
    diff = np.mean(a, axis=0) - np.mean(b, axis=0)
    rng = np.random.default_rng(0)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    differ = diff != 0
    wins = float((diff[differ] > 0).mean()) if differ.any() else 0.5
    return float(diff.mean()), float(low), float(high), wins


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--time-budget", type=float, default=1e9, help="training seconds per model and seed")
    parser.add_argument("--max-epochs", type=int, default=40, help="epochs cap (results then do not depend on "
                        "machine load); early stopping on validation NDCG@10 usually ends sooner")
    parser.add_argument("--out", type=Path, default=Path("var/bench/model.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)

    data = load_movielens()
    split = leave_one_out(data.sequences)
    n = data.catalog.n_items
    results: dict[str, list[RankingMetrics]] = {"SASRec": [], "GRU4Rec": [], "most popular": []}
    training: dict[str, list[tuple[float, int]]] = {"SASRec": [], "GRU4Rec": []}
    gains: dict[str, list[np.ndarray]] = {"SASRec": [], "GRU4Rec": [], "most popular": []}  # per user, per seed
    served: SASRec | None = None
    for seed in args.seeds:
        config = TrainConfig(seed=seed, time_budget_s=args.time_budget, max_epochs=args.max_epochs)
        for name, build in (("SASRec", lambda: SASRec(SASRecConfig(n_items=n))),
                            ("GRU4Rec", lambda: GRU4Rec(GRU4RecConfig(n_items=n)))):
            seed_everything(seed, config.threads)
            model = build()
            result = train(model, split, n_items=n, max_len=model.config.max_len, config=config)
            metrics, per_user = test_ranking(model, split, n, model.config.max_len, seed)
            results[name].append(metrics)
            gains[name].append(per_user)
            training[name].append((result.seconds, result.best_epoch))
            print(f"seed {seed} {name:<8} {result.epochs} epochs (best {result.best_epoch}) in {result.seconds:.0f}s: "
                  f"test HR@10 {metrics.hr10:.4f} NDCG@10 {metrics.ndcg10:.4f}", flush=True)
            if name == "SASRec" and served is None:
                served = model
        popular = Popularity(n, split.train)
        metrics, per_user = test_ranking(popular, split, n, 50, seed)
        results["most popular"].append(metrics)
        gains["most popular"].append(per_user)

    print(f"\nMovieLens (dslabs), leave-one-out, {len(split.test_target)} users, {len(args.seeds)} seed(s); "
          "mean ± std")
    print(f"{'model':<14}{'HR@10 full':>20}{'NDCG@10 full':>20}{'HR@10 sampled':>20}{'NDCG@10 sampled':>20}")
    for name, runs in results.items():
        cells = [fmt([getattr(r, f) for r in runs]) for f in FIELDS]
        print(f"{name:<14}" + "".join(f"{c:>20}" for c in cells))
    for name, runs in training.items():
        print(f"{name} training: {statistics.mean(s for s, _ in runs):.0f}s mean, best epochs {[e for _, e in runs]}")
    print("\nSASRec minus baseline, NDCG@10 full, paired over the same users (seeds averaged per user), "
          "bootstrap 95% CI:")
    for baseline in ("GRU4Rec", "most popular"):
        mean, low, high, wins = paired_difference(gains["SASRec"], gains[baseline])
        print(f"  vs {baseline:<13} {mean:+.4f}  [{low:+.4f}, {high:+.4f}]  SASRec ranks the target higher "
              f"for {wins:.0%} of users where they differ")

    assert served is not None
    served.eval()
    steps = timeline_steps(data)
    rng = np.random.default_rng(0)
    picked = steps[rng.choice(len(steps), size=4096, replace=False)]
    histories = [data.sequences[u][:t] for u, t in picked]
    print(f"\nattention recompute, SASRec d={served.config.hidden} L={served.config.max_len} "
          f"layers={served.config.layers} heads={served.config.heads}, replayed MovieLens histories "
          f"(mean {np.mean([min(len(h), served.config.max_len) for h in histories]):.0f} items):")
    print(f"{'batch':>6}{'naive events/s':>18}{'fast events/s':>18}{'fast / naive':>14}")
    speeds = {}
    for batch in (1, 256):
        sample = histories[:512] if batch == 1 else histories
        naive = throughput(served, sample, batch, fast=False)
        fast = throughput(served, sample, batch, fast=True)
        speeds[batch] = (naive, fast)
        print(f"{batch:>6}{naive:>18,.0f}{fast:>18,.0f}{fast / naive:>13.2f}x")
    print(f"batch 256 fast path vs batch 1 naive path: {speeds[256][1] / speeds[1][0]:.1f}x")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    figures = {
        "ranking": {k: [dataclasses.asdict(r) for r in v] for k, v in results.items()},
        "training": training,
        "paired_ndcg10_vs": {b: paired_difference(gains["SASRec"], gains[b])[:3] for b in ("GRU4Rec", "most popular")},
        "throughput": {str(k): {"naive": v[0], "fast": v[1]} for k, v in speeds.items()},
    }
    args.out.write_text(json.dumps(figures, indent=1))
    print(json.dumps({"throughput": figures["throughput"], "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
