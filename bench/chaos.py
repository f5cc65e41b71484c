"""Chaos benchmark: the daemon (``attnmon run`` as a process) against the real broker, hurt on purpose.

Scenarios, each on topics of its own (named ``attnmon.chaos.<run>.<scenario>``):

1. **kill -9** at ``--kills`` random points while ``--events`` events are replayed over
   ``--partitions`` partitions, the daemon restarted after each; then ``--sigterms`` clean
   restarts and a last run to the end of the topic. A reference daemon (own consumer group and
   state directory) reads the same topic once, uninterrupted. *Equal state* means, for the two
   final checkpoints (``state.json``), all of:

   - the offsets are the same (the end of every partition), and no event is held;
   - the same baselines exist, keyed (model version, dimension, cohort), and each holds the same
     number of events. Cohorts are pinned (allowlists) and baselines never freeze within a run
     (``judge.reference_seconds`` is a day), so every folded event is in exactly one baseline per
     dimension whatever the order of arrival: the baselines are the cumulative counts;
   - each baseline's bin counts ``[series, strata, bins]`` and per-user-group bin counts are
     equal, except for values within float rounding of a bin edge: the chunks of a forward pass
     differ between runs and so do the last bits of a few statistics. ``bin_moves`` counts the
     observations in another bin (half the L1 distance); equal means at most
     ``BIN_MOVE_TOLERANCE`` of all observations;
   - the judge's cumulative counters (events into baselines and windows) are equal.

   Windows and verdicts are not compared: they roll at wall-clock judgement rounds. ``lost`` and
   ``folded_twice`` come from a pinned ``chunk`` context field (event index // chunk size): per
   chunk cohort, events the final state lacks against the produced count, and events it holds
   beyond it. The daemon is a static member (``kafka.group_instance_id``).
2. **broker restart**: ``deploy/stack.sh stop kafka`` / ``start kafka`` (same data directory)
   while the daemon consumes; it must recover without a restart (same pid) and lose nothing.
3. **fuzz**: ``--fuzz`` records (structure-aware JSON mutations of valid events and random
   bytes) produced by kcat (librdkafka), as files, in compressed batches of every codec. Every
   record must be accounted for: processed + dead-lettered offsets (read back from the
   dead-letter topic; an undecodable-batch letter covers its offset range) == produced, each
   letter with a reason; no crash.
4. **cohort flood**: ``--cohort-values`` events each with a distinct ``region`` (plus 10% real
   regions); the exported cohort labels of that dimension (scraped from /metrics during the
   flood) stay at or below ``max_values`` + ``other`` + ``unknown``; RSS of the daemon and its
   forward process before and after.
5. **tampered checkpoints**: a truncated ``state.json`` is refused with a reason
   (``attnmon_state_unusable_total``, kept aside as ``state.json.unusable-*``) and a published
   model version whose weights were altered is refused (``attnmon_model_load_failures_total``,
   its events dead-lettered) while the daemon keeps serving the other version.
6. **rejoin**: from a restarted daemon's "joining the consumer group" log line to its
   "assigned [" line (the log's own timestamps, as tests/e2e/test_daemon_process.py measures),
   after each kill -9 and each SIGTERM of scenario 1.

Needs the broker (``deploy/stack.sh start kafka``; scenario 2 stops and starts it with the same
script and environment) and kcat. Publishes a tiny untrained SASRec (hidden 16) under
``--workdir``. Prints a table, then one JSON line. ``--quick`` is a smaller run.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path

# `python bench/chaos.py` puts bench/ first on sys.path, where bench/model.py would shadow the
# `model` package; drop it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from model import checkpoint  # noqa: E402
from model.data import load_movielens  # noqa: E402
from model.sasrec import SASRec, SASRecConfig  # noqa: E402
from monitor.drift.judge import Judge  # noqa: E402
from monitor.settings import KafkaSettings  # noqa: E402
from monitor.stream import state as state_store  # noqa: E402
from monitor.stream.kafka import delete_topic, ensure_topic  # noqa: E402
from monitor.tools.replay import REGIONS, EventFactory, Scenario  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CODECS = ("gzip", "snappy", "lz4", "zstd")
BIN_MOVE_TOLERANCE = 1e-5  # share of observations allowed in a neighbouring bin (float rounding)
LOG_STAMP = "%Y-%m-%d %H:%M:%S,%f"


# -- the daemon as a process ----------------------------------------------------------------------


class Daemon:
    """``attnmon run`` in a process of its own, with its own log file."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.port, self.log = port, log
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "run", "--config", str(config)], cwd=REPO,
            stdout=log.open("ab"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.pid = self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def get(self, path: str, timeout_s: float = 10.0) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout_s) as response:
                return response.read().decode()
        except (OSError, urllib.error.HTTPError):
            return ""

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5) as response:
                return response.status == 200
        except (OSError, urllib.error.HTTPError):
            return False

    def samples(self) -> dict[str, float]:
        """Every sample of a scrape whose name starts with attnmon_ and is not a histogram bucket."""
        out: dict[str, float] = {}
        for line in self.get("/metrics").splitlines():
            if line.startswith("attnmon_") and "_bucket{" not in line:
                name, _, value = line.rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
        return out

    def done(self) -> float:
        """Events this process is done with: processed or dead-lettered."""
        return sum(v for k, v in self.samples().items() if k.startswith("attnmon_events_total{"))

    def wait(self, what, timeout_s: float, every_s: float = 0.3) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            if what():
                return True
            time.sleep(every_s)
        return False

    def signal(self, sig: int, timeout_s: float = 60.0) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=timeout_s)

    def rss_mib(self) -> tuple[float, float]:
        """(agent, agent + its child processes) resident set size, MiB."""
        def rss(pid: int) -> float:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
            except OSError:
                pass
            return 0.0
        children = []
        for task in Path(f"/proc/{self.pid}/task").glob("*/children"):
            children += [int(c) for c in task.read_text().split()]
        own = rss(self.pid)
        return own, own + sum(rss(c) for c in children)


def rejoin_seconds(log: Path) -> float | None:
    """From 'joining the consumer group' to the first 'assigned [' line of one daemon's log."""
    joined = assigned = None
    for line in log.read_text(errors="replace").splitlines():
        if joined is None and "joining the consumer group" in line:
            joined = datetime.strptime(line[:23], LOG_STAMP)
        elif joined is not None and "INFO monitor.stream.agent: assigned [" in line:
            assigned = datetime.strptime(line[:23], LOG_STAMP)
            break
    return None if joined is None or assigned is None else (assigned - joined).total_seconds()


def log_problems(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines()
            if "Traceback" in line or " CRITICAL " in line]


# -- set-up ---------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = uuid.uuid4().hex[:6]
        self.work = Path(args.workdir).resolve() / self.run_id
        self.work.mkdir(parents=True)
        self.kafka = KafkaSettings(bootstrap_servers=args.bootstrap, client_id="attnmon-chaos")
        self.rng = random.Random(args.seed)
        self.topics: list[str] = []
        self.data = load_movielens()
        self.models = self.work / "models"
        torch.manual_seed(0)
        self.tiny = SASRec(SASRecConfig(n_items=self.data.catalog.n_items, max_len=50, hidden=16, layers=2, heads=2))
        self.version = checkpoint.save(self.tiny, self.data.catalog, {}, self.models, label="chaos")
        self.port = 29200 + random.Random().randrange(500)

    def topic(self, name: str, partitions: int) -> str:
        topic = f"attnmon.chaos.{self.run_id}.{name}"
        ensure_topic(self.kafka, topic, partitions)
        self.topics.append(topic)
        return topic

    def cleanup(self) -> None:
        for topic in self.topics:
            for t in (topic, topic + ".dlq"):
                try:
                    delete_topic(self.kafka, t)
                except Exception:  # noqa: BLE001 -- best effort
                    pass

    def config(self, name: str, topic: str, *, group: str, instance: str | None = None, grace_s: float = 30.0,
               cohorts: list[dict] | None = None, models: Path | None = None) -> Path:
        kafka = {"bootstrap_servers": self.kafka.bootstrap_servers, "topic": topic, "dead_letter_topic": topic + ".dlq",
                 "group_id": group, "session_timeout_ms": 10_000}
        if instance is not None:
            kafka["group_instance_id"] = instance
        document = {
            "kafka": kafka,
            "models": {"root": str(models or self.models), "retry_after_s": 0.5},
            "state": {"directory": str(self.work / name / "state")},
            "http": {"host": "127.0.0.1", "port": self.port},
            "intervals": {"judge_s": 1.0, "checkpoint_s": 1.0, "lag_s": 0.5},
            "pipeline": {"unknown_version_grace_s": grace_s},
        }
        if cohorts is not None:
            document["cohorts"] = cohorts
        path = self.work / name / "attnmon.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(document))
        return path

    def daemon(self, config: Path, log_name: str) -> Daemon:
        return Daemon(config, self.port, config.parent / log_name)

    def events(self, count: int, models: dict | None = None, scenario: Scenario | None = None,
               seed: int = 0) -> list[bytes]:
        factory = EventFactory(self.data, models or {self.version: self.tiny},
                               scenario or Scenario(versions=((0, self.version),)), seed=seed, recommend=False,
                               history_limit=60)
        return [e for batch in factory.events(count) for e in batch]

    def kcat_lines(self, topic: str, values: list[bytes], keys: bool = True, codec: str = "lz4") -> None:
        """Produce newline-free values through kcat's stdin (librdkafka, fast), keyed by index."""
        body = b"".join((b"%d\t" % i if keys else b"") + v + b"\n" for i, v in enumerate(values))
        command = ["kcat", "-P", "-b", self.kafka.bootstrap_servers, "-t", topic, "-z", codec,
                   "-X", "linger.ms=50", "-X", "batch.num.messages=5000"] + (["-K", "\t"] if keys else [])
        subprocess.run(command, input=body, check=True, timeout=900)

    def end_offsets(self, topic: str, partitions: int) -> int:
        """Records in the topic: the sum of its partitions' end offsets (what the broker took)."""
        query = [w for p in range(partitions) for w in ("-t", f"{topic}:{p}:-1")]
        out = subprocess.run(["kcat", "-Q", "-b", self.kafka.bootstrap_servers, *query], capture_output=True,
                             text=True, timeout=60, check=True).stdout
        return sum(int(m) for m in re.findall(r"offset (\d+)", out))

    def read_topic(self, topic: str) -> list[bytes]:
        out = subprocess.run(["kcat", "-C", "-b", self.kafka.bootstrap_servers, "-t", topic, "-o", "beginning",
                              "-e", "-q", "-f", "%s\\n"], capture_output=True, timeout=300)
        return [line for line in out.stdout.splitlines() if line]


# -- scenario 1: kill -9 ----------------------------------------------------------------------------


def with_chunk(events: list[bytes], chunk: int) -> list[bytes]:
    """Add a pinned ``chunk`` context field (index // chunk); the context is the last key."""
    return [v[:-2] + b',"chunk":"c%03d"}}' % (i // chunk) for i, v in enumerate(events)]


def state_summary(directory: Path) -> dict:
    pipeline_state, offsets = state_store.load(directory)
    judge = Judge.from_state(pipeline_state["judge"])
    baselines = {}
    for key in judge.baselines:
        sample = judge.baselines.get(key).sample
        baselines[(key.model_version, key.dimension, key.cohort)] = (sample.events, sample.counts.copy(),
                                                                     sample.by_group.copy())
    return {"offsets": offsets, "baselines": baselines, "held": len(pipeline_state.get("held", [])),
            "counts": {k: judge.counts[k] for k in ("baseline_events", "window_events")}}


def compare(reference: dict, chaos: dict) -> dict:
    keys_equal = set(reference["baselines"]) == set(chaos["baselines"])
    events_equal = all(reference["baselines"][k][0] == chaos["baselines"].get(k, (None,))[0]
                       for k in reference["baselines"])
    moves = observations = 0
    for key, (events, counts, groups) in reference["baselines"].items():
        other = chaos["baselines"].get(key)
        if other is None or other[1].shape != counts.shape:
            continue
        moves += int(np.abs(other[1] - counts).sum() + np.abs(other[2] - groups).sum()) // 2
        observations += int(counts.sum() + groups.sum())
    offsets_equal = reference["offsets"] == chaos["offsets"]
    counts_equal = reference["counts"] == chaos["counts"]
    within = moves <= BIN_MOVE_TOLERANCE * max(observations, 1)
    return {"state_identical": bool(keys_equal and events_equal and offsets_equal and counts_equal and within
                                    and reference["held"] == chaos["held"] == 0),
            "baseline_keys_equal": keys_equal, "baseline_events_equal": events_equal,
            "offsets_equal": offsets_equal, "judge_counts_equal": counts_equal, "bin_moves": moves,
            "bin_observations": observations}


def chunk_accounting(summary: dict, version: str, expected: dict[str, int]) -> tuple[int, int]:
    """(lost, folded twice) from the pinned chunk cohorts of the final state."""
    lost = twice = 0
    for label, count in expected.items():
        got = summary["baselines"].get((version, "chunk", label), (0,))[0]
        lost += max(0, count - got)
        twice += max(0, got - count)
    return lost, twice


def until_drained(daemon: Daemon, total: int, timeout_s: float) -> bool:
    """Lag 0 on every partition the daemon reports (and at least one reported), then a checkpoint."""
    def drained() -> bool:
        s = daemon.samples()
        lags = [v for k, v in s.items() if k.startswith("attnmon_consumer_lag_records{")]
        return bool(lags) and sum(lags) == 0
    ok = daemon.wait(drained, timeout_s, every_s=0.5)
    time.sleep(2.5)  # a periodic checkpoint (every 1 s) after the last fold
    return ok


def kill_scenario(bench: Bench) -> dict:
    a = bench.args
    n, parts = a.events, a.partitions
    chunk = max(1, -(-n // 40))
    labels = [f"c{i:03d}" for i in range(-(-n // chunk))]
    expected = {label: min(chunk, n - i * chunk) for i, label in enumerate(labels)}
    cohorts = [{"name": "chunk", "max_values": len(labels), "allowlist": labels},
               {"name": "platform", "max_values": 3, "allowlist": ["ios", "android", "web"]},
               {"name": "region", "max_values": len(REGIONS), "allowlist": list(REGIONS)},
               {"name": "history_length", "kind": "history_length", "edges": [10, 50, 200]}]
    t0 = time.monotonic()
    events = with_chunk(bench.events(n), chunk)
    made_s = time.monotonic() - t0
    topic = bench.topic("kill", parts)
    t0 = time.monotonic()
    bench.kcat_lines(topic, events)
    produce_s = time.monotonic() - t0
    del events

    # The reference: one uninterrupted daemon over the same topic.
    ref_config = bench.config("reference", topic, group=f"chaos-ref-{bench.run_id}", cohorts=cohorts)
    t0 = time.monotonic()
    ref = bench.daemon(ref_config, "daemon.log")
    ref_ok = until_drained(ref, n, 900)
    ref_exit = ref.signal(signal.SIGTERM)
    ref_s = time.monotonic() - t0
    reference = state_summary(ref_config.parent / "state")

    config = bench.config("chaos", topic, group=f"chaos-{bench.run_id}", instance=f"chaos-{bench.run_id}-0",
                          cohorts=cohorts)
    state_dir = config.parent / "state"
    t0 = time.monotonic()
    kills, mid_stream, rejoin_kill, rejoin_term, exits = 0, 0, [], [], []
    previous = None  # how the last daemon ended: None (first start), "kill", "term"
    run = 0

    def start() -> Daemon:
        nonlocal run
        run += 1
        return bench.daemon(config, f"daemon-{run:02d}.log")

    def note_rejoin(daemon: Daemon) -> None:
        seconds = rejoin_seconds(daemon.log)
        if seconds is not None and previous == "kill":
            rejoin_kill.append(seconds)
        elif seconds is not None and previous == "term":
            rejoin_term.append(seconds)

    while mid_stream < a.kills and kills < 3 * a.kills:  # a kill after the end of the topic does not count
        loaded = state_store.load(state_dir) if (state_dir / "state.json").exists() else None
        checkpointed = sum(loaded[1].values()) if loaded else 0
        remaining = max(1, n - checkpointed)
        daemon = start()
        # A random point: a random count of events this process finishes, then up to 0.3 s more,
        # so the kill lands anywhere between and inside checkpoints, folds and polls.
        target = bench.rng.randint(1, max(1, remaining // (a.kills - mid_stream + 1)))
        if not daemon.wait(lambda: daemon.done() >= target, 600, every_s=0.25):
            exits.append(daemon.process.poll())
        time.sleep(bench.rng.uniform(0.0, 0.3))
        mid_stream += int(daemon.done() < remaining)
        daemon.signal(signal.SIGKILL)
        kills += 1
        note_rejoin(daemon)
        previous = "kill"
    for _ in range(a.sigterms):
        daemon = start()
        daemon.wait(lambda: daemon.done() >= 1 or daemon.ready(), 300)
        time.sleep(bench.rng.uniform(0.5, 2.0))
        exits.append(daemon.signal(signal.SIGTERM))
        note_rejoin(daemon)
        previous = "term"
    daemon = start()
    drained = until_drained(daemon, n, 900)
    exits.append(daemon.signal(signal.SIGTERM))
    note_rejoin(daemon)
    chaos_s = time.monotonic() - t0
    chaos = state_summary(state_dir)
    lost, twice = chunk_accounting(chaos, bench.version, expected)
    ref_lost, ref_twice = chunk_accounting(reference, bench.version, expected)
    problems = sum(len(log_problems(p)) for p in config.parent.glob("daemon-*.log"))
    return {
        "events": n, "partitions": parts, "kills": kills, "kills_mid_stream": mid_stream, "sigterms": a.sigterms,
        "lost": lost, "folded_twice": twice, "reference_lost": ref_lost, "reference_folded_twice": ref_twice,
        **compare(reference, chaos),
        "state_offsets_total": sum(chaos["offsets"].values()),
        "reference_drained": ref_ok and ref_exit == 0, "chaos_drained": drained,
        "clean_exits": all(e == 0 for e in exits), "kill_tracebacks": problems,
        "rejoin_after_kill9_s": max(rejoin_kill) if rejoin_kill else None,
        "rejoin_after_kill9_median_s": float(np.median(rejoin_kill)) if rejoin_kill else None,
        "rejoin_after_sigterm_s": max(rejoin_term) if rejoin_term else None,
        "rejoin_after_sigterm_median_s": float(np.median(rejoin_term)) if rejoin_term else None,
        "rejoins_measured": [len(rejoin_kill), len(rejoin_term)],
        "events_made_s": round(made_s, 1), "produce_s": round(produce_s, 1), "reference_s": round(ref_s, 1),
        "chaos_s": round(chaos_s, 1),
    }


# -- scenario 2: broker restart ----------------------------------------------------------------------


def stack(*words: str) -> None:
    subprocess.run([str(REPO / "deploy" / "stack.sh"), *words], check=True, timeout=300,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def broker_scenario(bench: Bench) -> dict:
    n = bench.args.broker_events
    first = n * 3 // 4  # produced before the broker stops; the rest after it restarts
    events = bench.events(n, seed=1)
    topic = bench.topic("broker", 2)
    config = bench.config("broker", topic, group=f"chaos-broker-{bench.run_id}")
    bench.kcat_lines(topic, events[:first])
    daemon = bench.daemon(config, "daemon.log")
    daemon.wait(lambda: daemon.done() >= first // 10, 300)
    pid = daemon.pid
    before = daemon.done()
    t0 = time.monotonic()
    stack("stop", "kafka")
    time.sleep(3.0)
    stack("start", "kafka")
    outage_s = time.monotonic() - t0
    bench.kcat_lines(topic, events[first:])
    recovered = until_drained(daemon, n, 600)
    same_pid = daemon.alive() and daemon.pid == pid
    exit_status = daemon.signal(signal.SIGTERM) if daemon.alive() else daemon.process.returncode
    summary = state_summary(config.parent / "state")
    folded = summary["baselines"].get((bench.version, "all", "all"), (0,))[0]
    return {"broker_events": n, "broker_lag_at_stop": first - before, "broker_outage_s": round(outage_s, 1),
            "broker_restart_lost": n - folded if folded <= n else 0,
            "broker_restart_folded_twice": max(0, folded - n), "broker_same_pid": same_pid,
            "broker_recovered": recovered, "broker_exit": exit_status,
            "broker_tracebacks": len(log_problems(daemon.log))}


# -- scenario 3: fuzz ------------------------------------------------------------------------------


def mutate(rng: random.Random, event: dict) -> bytes:
    """One structure-aware mutation of a valid event (some stay valid)."""
    e = json.loads(json.dumps(event))
    keys = list(e)
    kind = rng.randrange(16)
    if kind == 0:
        del e[rng.choice(keys)]
    elif kind == 1:
        e[rng.choice(keys)] = rng.choice([None, 1, -1, 1.5, "x", [], {}, True, "9" * 400, [None], {"a": [1]}])
    elif kind == 2:
        e["history"] = [rng.choice([0, -1, 2**63, 2**64 + 1, 1.5, "12", None, [], {}, True]) for _ in range(5)]
    elif kind == 3:
        e["history"] = e["history"] * rng.randint(20, 200)
    elif kind == 4:
        e["context"] = {f"k{i}": rng.choice(["v", 1, None, [1], {"n": 1}, "é" * 80]) for i in range(rng.randint(1, 80))}
    elif kind == 5:
        e["ts"] = rng.choice([-1, 0, 2**70, 1e300, "now", None, 10**13 * 9])
    elif kind == 6:
        e["model_version"] = rng.choice(["", "../../etc", "sasrec-" + "0" * 16, "x" * 300, "\u0000", "sasrec-zz"])
    elif kind == 7:
        e["recommended"] = [{"item": rng.randint(-5, 10**6), "score": rng.choice([1.0, "x", None, float("1e308")])}
                            for _ in range(rng.randint(0, 400))]
    elif kind == 8:
        e["user_id"] = rng.choice(["", "u" * 1000, 7, None, "\ud800" if False else "\u202e"])
    elif kind == 9:
        e[f"extra{rng.randint(0, 9)}"] = {"nested": [[[[[1]]]]] * 5}
    elif kind == 10:
        return json.dumps(e).encode()[: rng.randint(1, 200)]  # truncated
    elif kind == 11:
        return b"[" * rng.randint(1, 5000) + b"]" * rng.randint(0, 5000)  # deep nesting
    elif kind == 12:
        raw = bytearray(json.dumps(e).encode())
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw)
    elif kind == 13:
        return json.dumps(e).encode() + b" " * rng.randint(0, 3) + rng.choice([b"", b"x", b"{}", b"\x00"])
    elif kind == 14:
        return json.dumps([e]).encode()
    # 15: unchanged (a valid event among the mutants)
    return json.dumps(e, ensure_ascii=rng.random() < 0.5).encode()


def fuzz_records(bench: Bench, count: int) -> list[bytes]:
    rng = random.Random(bench.args.seed + 3)
    valid = [json.loads(v) for v in bench.events(200, seed=3)]
    out = []
    for i in range(count):
        if rng.random() < 0.3:
            out.append(bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 7, 64, 512, 4096]))))
        else:
            out.append(mutate(rng, rng.choice(valid)))
    return out


def fuzz_scenario(bench: Bench) -> dict:
    count, parts = bench.args.fuzz, 4
    records = fuzz_records(bench, count)
    topic = bench.topic("fuzz", parts)
    config = bench.config("fuzz", topic, group=f"chaos-fuzz-{bench.run_id}", grace_s=1.0)
    daemon = bench.daemon(config, "daemon.log")
    files = Path(tempfile.mkdtemp(prefix="fuzz-", dir=bench.work))
    per_codec = -(-count // len(CODECS))
    t0 = time.monotonic()
    for c, codec in enumerate(CODECS):
        mine = records[c * per_codec:(c + 1) * per_codec]
        for p in range(parts):
            paths = []
            for j, value in enumerate(mine[p::parts]):
                path = files / f"{codec}-{p}-{j:05d}"
                path.write_bytes(value)
                paths.append(str(path))
            if paths:  # each file is one message; kcat batches and compresses them
                subprocess.run(["kcat", "-P", "-b", bench.kafka.bootstrap_servers, "-t", topic, "-p", str(p),
                                "-z", codec, "-X", "linger.ms=50", *paths], check=True, timeout=300,
                               stdout=subprocess.DEVNULL)
        # Null values (tombstones): with -K and -Z, kcat sends a keyed empty value as NULL (files and
        # lines that are empty it does not send at all).
        subprocess.run(["kcat", "-P", "-b", bench.kafka.bootstrap_servers, "-t", topic, "-p", str(c), "-z", codec,
                        "-K", "\t", "-Z", "-X", "linger.ms=50"], input=b"".join(b"null-%d\t\n" % i for i in range(25)),
                       check=True, timeout=300)
    produce_s = time.monotonic() - t0
    sent = count
    count = bench.end_offsets(topic, parts)  # kcat skips empty files: what the broker holds counts

    def accounted() -> float:
        s = daemon.samples()
        processed = s.get('attnmon_events_total{outcome="processed",reason="ok"}', 0.0)
        dead = sum(v for k, v in s.items() if k.startswith('attnmon_events_total{outcome="dead_lettered"')
                   and 'reason="undecodable_batch"' not in k)
        return processed + dead + s.get("attnmon_kafka_skipped_offsets_total", 0.0)

    daemon.wait(lambda: accounted() >= count, 600, every_s=0.5)
    time.sleep(2.5)
    crashed = not daemon.alive()
    samples = daemon.samples()
    processed = int(samples.get('attnmon_events_total{outcome="processed",reason="ok"}', 0))
    reasons = {re.search(r'reason="([^"]*)"', k).group(1): int(v) for k, v in samples.items()
               if k.startswith('attnmon_events_total{outcome="dead_lettered"') and v}
    replacements = int(samples.get("attnmon_forward_pool_replacements_total", 0))
    exit_status = daemon.signal(signal.SIGTERM) if daemon.alive() else daemon.process.returncode
    covered: set[tuple[int, int]] = set()
    letters = without_reason = 0
    for line in bench.read_topic(topic + ".dlq"):
        letter = json.loads(line)
        letters += 1
        if not letter.get("reason"):
            without_reason += 1
        if letter.get("reason") == "undecodable_batch":
            first, last = map(int, re.search(r"offsets (\d+)\.\.(\d+)", letter["detail"]).groups())
            covered.update((letter["partition"], o) for o in range(first, last + 1))
        else:
            covered.add((letter["partition"], letter["offset"]))
            assert base64.b64decode(letter["original_b64"]) is not None
    return {"fuzzed": count, "fuzz_files": sent, "fuzz_codecs": list(CODECS), "fuzz_processed": processed,
            "fuzz_dead_lettered": len(covered), "fuzz_letters": letters, "fuzz_reasons": reasons,
            "undead_lettered": count - processed - len(covered) + without_reason,
            "crashes": int(crashed) + replacements + len(log_problems(daemon.log)),
            "fuzz_exit": exit_status, "fuzz_produce_s": round(produce_s, 1)}


# -- scenario 4: cohort flood ----------------------------------------------------------------------------


def cohort_scenario(bench: Bench) -> dict:
    n = bench.args.cohort_values
    base = [json.loads(v) for v in bench.events(1000, seed=4)]
    rng = random.Random(5)
    values = []
    for i in range(n + n // 10):
        e = dict(base[i % len(base)])
        e["history"] = e["history"][-20:]
        region = REGIONS[i % len(REGIONS)] if i % 11 == 10 else f"r{i:07d}"  # 1 in 11: a real region
        e["context"] = {"platform": e["context"]["platform"], "region": region}
        values.append(json.dumps(e, separators=(",", ":")).encode())
    rng.shuffle(values)
    distinct = len({v for v in values if b'"region":"r' in v})
    topic = bench.topic("cohorts", 2)
    config = bench.config("cohorts", topic, group=f"chaos-cohorts-{bench.run_id}")
    daemon = bench.daemon(config, "daemon.log")
    daemon.wait(daemon.ready, 300)
    bench.kcat_lines(topic, values[:5000])
    daemon.wait(lambda: daemon.done() >= 5000, 300)
    rss_before = daemon.rss_mib()
    t0 = time.monotonic()
    bench.kcat_lines(topic, values[5000:])
    labels_max = 0
    cohort = re.compile(r'[{,]cohort="([^"]*)"')

    def scrape() -> int:
        body = daemon.get("/metrics", timeout_s=60)
        (config.parent / "last-scrape.txt").write_text(body)
        return len({m.group(1) for line in body.splitlines() if 'dimension="region"' in line
                    for m in [cohort.search(line)] if m})

    deadline = time.monotonic() + 1800
    while daemon.alive() and daemon.done() < len(values) and time.monotonic() < deadline:
        labels_max = max(labels_max, scrape())
        time.sleep(5.0)
    labels_max = max(labels_max, scrape())
    flood_s = time.monotonic() - t0
    rss_after = daemon.rss_mib()
    done = daemon.done()
    exit_status = daemon.signal(signal.SIGTERM) if daemon.alive() else daemon.process.returncode
    return {"cohort_values": distinct, "cohort_events": len(values), "cohort_events_done": int(done),
            "cohort_series_max": labels_max, "cohort_cap": 10 + 2,
            "rss_before_mib": [round(x) for x in rss_before], "rss_after_mib": [round(x) for x in rss_after],
            "cohort_flood_s": round(flood_s, 1), "cohort_exit": exit_status}


# -- scenario 5: tampered checkpoints --------------------------------------------------------------------


def tamper_scenario(bench: Bench) -> dict:
    torch.manual_seed(1)
    other = SASRec(SASRecConfig(n_items=bench.data.catalog.n_items, max_len=50, hidden=16, layers=2, heads=2))
    models = bench.work / "tamper" / "models"  # its own root: the other scenarios never see the broken version
    shutil.copytree(bench.models / bench.version, models / bench.version)
    broken = checkpoint.save(other, bench.data.catalog, {}, models, label="tampered")
    events = bench.events(600, models={bench.version: bench.tiny, broken: other},
                          scenario=Scenario(versions=((0, bench.version), (200, broken), (400, bench.version))),
                          seed=6)
    weights = models / broken / checkpoint.WEIGHTS
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte of the weights
    weights.write_bytes(bytes(raw))
    topic = bench.topic("tamper", 1)
    config = bench.config("tamper", topic, group=f"chaos-tamper-{bench.run_id}", grace_s=1.0,
                          models=models)
    state_dir = config.parent / "state"
    # A checkpoint from an earlier run of this daemon, cut short (a torn copy, a full disk).
    state_store.save(state_dir, {"judge": {}, "paired": {}, "cohorts": {}}, {(topic, 0): 0})
    text = (state_dir / "state.json").read_text()
    (state_dir / "state.json").write_text(text[: len(text) // 2])
    bench.kcat_lines(topic, events)
    daemon = bench.daemon(config, "daemon.log")
    daemon.wait(lambda: daemon.done() >= len(events), 300)
    time.sleep(1.5)
    s = daemon.samples()
    exit_status = daemon.signal(signal.SIGTERM) if daemon.alive() else daemon.process.returncode
    log = daemon.log.read_text(errors="replace")
    return {"state_unusable": int(s.get("attnmon_state_unusable_total", 0)),
            "state_set_aside": len(list(state_dir.glob("state.json.unusable-*"))),
            "state_reason_logged": "cannot be restored" in log,
            "model_load_failures": int(sum(v for k, v in s.items()
                                           if k.startswith("attnmon_model_load_failures_total"))),
            "tampered_version_dead_lettered": int(s.get(
                'attnmon_events_total{outcome="dead_lettered",reason="unknown_model_version"}', 0)),
            "other_version_processed": int(s.get('attnmon_events_total{outcome="processed",reason="ok"}', 0)),
            "other_version_expected": 400, "tamper_exit": exit_status}


# -- main ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=f"127.0.0.1:{os.environ.get('ATTNMON_KAFKA_PORT', '19092')}")
    parser.add_argument("--events", type=int, default=150_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--sigterms", type=int, default=3)
    parser.add_argument("--broker-events", type=int, default=40_000)
    parser.add_argument("--fuzz", type=int, default=10_000)
    parser.add_argument("--cohort-values", type=int, default=1_000_000)
    parser.add_argument("--scenarios", default="kill,broker,fuzz,cohorts,tamper")
    parser.add_argument("--quick", action="store_true", help="a smaller run (not the issue's sizes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=str(REPO / "var" / "chaos"))
    parser.add_argument("--keep", action="store_true", help="keep the topics (default: deleted at the end)")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.kills, args.sigterms = 20_000, 5, 2
        args.broker_events, args.fuzz, args.cohort_values = 10_000, 2_000, 50_000
    started = time.monotonic()
    bench = Bench(args)
    result: dict = {"quick": args.quick, "run": bench.run_id}
    scenarios = {"kill": kill_scenario, "broker": broker_scenario, "fuzz": fuzz_scenario,
                 "cohorts": cohort_scenario, "tamper": tamper_scenario}
    try:
        for name in args.scenarios.split(","):
            t0 = time.monotonic()
            part = scenarios[name](bench)
            result.update(part)
            print(f"\n== {name} ({time.monotonic() - t0:.0f} s)")
            for key, value in part.items():
                print(f"  {key:32s} {value}")
            sys.stdout.flush()
    finally:
        if not args.keep:
            bench.cleanup()
    result["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
