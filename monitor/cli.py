"""``attnmon`` command line: one subcommand per job, each returning an exit code.

Ctrl-C exits 0; any other exception is logged with its traceback and exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger("attnmon")

DEFAULT_CHECKPOINTS = Path("checkpoints")


def _cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from model.recipe import train_sasrec
    from model.train import TrainConfig

    overrides = {k: v for k, v in {"layers": args.layers, "heads": args.heads, "hidden": args.hidden,
                                   "max_len": args.max_len, "dropout": args.dropout}.items() if v is not None}
    train_config = TrainConfig(seed=args.seed, time_budget_s=args.time_budget, max_epochs=args.epochs, lr=args.lr)
    with tqdm(total=train_config.max_epochs, unit="epoch", disable=args.quiet) as bar:
        def on_epoch(epoch: int, loss: float, ndcg: float | None) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", **({"valid_ndcg10": f"{ndcg:.4f}"} if ndcg is not None else {}))

        published = train_sasrec(args.checkpoints, model_config=overrides, train_config=train_config,
                                 label=args.label, on_epoch=on_epoch)
    print(json.dumps({"version": published.version, "path": str(published.path),
                      "epochs": published.train.epochs, "best_epoch": published.train.best_epoch,
                      "train_seconds": round(published.train.seconds, 1), "test": published.test.as_dict()}, indent=1))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from model.recipe import evaluate_version

    directory = args.version if args.version.is_dir() else args.checkpoints / args.version
    print(json.dumps({"version": directory.name, "test": evaluate_version(directory).as_dict()}, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnmon", description="Monitor the attention of a sequential recommender.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a SASRec version on MovieLens and publish a checkpoint")
    train.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS, help="checkpoint root directory")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--label", default="", help="human label stored in the manifest (part of the version hash)")
    train.add_argument("--time-budget", type=float, default=420.0, help="seconds of training before stopping")
    train.add_argument("--epochs", type=int, default=400, help="maximum epochs")
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--layers", type=int)
    train.add_argument("--heads", type=int)
    train.add_argument("--hidden", type=int)
    train.add_argument("--max-len", type=int)
    train.add_argument("--dropout", type=float)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_cmd_train)

    evaluate = sub.add_parser("evaluate", help="evaluate a published version on the test split")
    evaluate.add_argument("version", type=Path, help="version id (under --checkpoints) or a version directory")
    evaluate.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS)
    evaluate.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 0
    except Exception:  # noqa: BLE001 - the CLI boundary: log with traceback, exit 1
        log.exception("attnmon %s failed", args.command)
        return 1


if __name__ == "__main__":
    sys.exit(main())
