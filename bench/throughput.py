"""End-to-end throughput and event-to-metric latency through the real Kafka broker.

Three measurements in one run, on the same events and the same model:

1. **max rate**: agents with the production defaults, each in its own process (with its
   forward-pass child process) and a real KafkaSource and DeadLetterSink, drain a
   pre-filled topic; events/s once every agent holds partitions, and the CPU each
   process spent per event meanwhile. Measured for one agent, and with ``--replicas``
   also for that many agents in one consumer group (for machines with more cores than
   one agent uses: docs/architecture.md, "Forward passes in a child process");
2. **latency at half the max rate**, for each of those deployments: a producer process
   sends at half its rate with each event's ts set at send time; p50/p99 of the
   agents' ``attnmon_event_to_metric_latency_seconds`` histograms, summed by bucket;
3. **naive path**: per-event ``json.loads``, a batch-1 full forward (``model.attention``),
   and one labelled ``observe`` per value with prometheus-client, on a slice of the same
   events from the same broker, in one process.

Needs the broker (``deploy/stack.sh start kafka``) and a trained model under
``--checkpoints`` (``attnmon train``). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import re
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

# `python bench/throughput.py` puts bench/ first on sys.path, where bench/model.py would
# shadow the `model` package; drop it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from prometheus_client import CollectorRegistry, Histogram  # noqa: E402

from model import checkpoint
from model.data import left_pad, load_movielens
from monitor.stream.agent import Agent
from monitor.tools.replay import EventFactory, Scenario
from monitor.settings import (IntervalSettings, KafkaSettings, ModelSettings, PollSettings, ScaleSettings, Settings,
                              StateSettings)
from monitor.stream.kafka import DeadLetterSink, EventProducer, KafkaSource, delete_topic, ensure_topic, scale_parts
from monitor.stream.replica import Replica
from monitor.attention.stats import STATISTICS, compute

TS_FIELD = re.compile(rb'"ts":\d+')


def make_events(checkpoints: Path, version: str, count: int, cache: Path) -> list[bytes]:
    """Encoded events from MovieLens timelines, cached as JSON lines between runs."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    if cache.exists():
        lines = cache.read_bytes().splitlines()
        if len(lines) >= count:
            return lines[:count]
    factory = EventFactory(load_movielens(), {version: checkpoint.load(checkpoints / version).model},
                           Scenario(versions=((0, version),)))
    events = [e for batch in factory.events(count) for e in batch]
    cache.write_bytes(b"\n".join(events))
    return events


def fill(kafka: KafkaSettings, topic: str, events: list[bytes]) -> None:
    producer = EventProducer(kafka, topic=topic, linger_ms=50)
    for i, value in enumerate(events):
        producer.send(value, key=str(i).encode())
    producer.flush()
    producer.close()


@dataclasses.dataclass(frozen=True)
class Knobs:
    """The agent settings a run varies; everything else is the production default."""

    torch_threads: int = ModelSettings.torch_threads
    poll_records: int = PollSettings.max_records
    scale_out: bool = False  # scale.mode replica: partials, one elected judge (docs/architecture.md)

    def partitions(self, replicas: int) -> int:
        return 4 if self.scale_out else max(2, replicas)


def agent_settings(kafka: KafkaSettings, topic: str, checkpoints: Path, state: Path, knobs: Knobs) -> Settings:
    # A state left by an earlier run would make this run's model look like an update of
    # that run's model (paired comparisons on every batch): always start from scratch.
    shutil.rmtree(state, ignore_errors=True)
    return Settings(
        kafka=dataclasses.replace(kafka, topic=topic, dead_letter_topic=topic + ".dlq",
                                  group_id=f"bench-{uuid.uuid4().hex[:8]}", max_poll_records=knobs.poll_records),
        models=ModelSettings(root=checkpoints, torch_threads=knobs.torch_threads),
        poll=PollSettings(max_records=knobs.poll_records),
        state=StateSettings(directory=state),
        intervals=IntervalSettings(),  # production defaults: judge every 5 s, checkpoint every 10 s
        scale=scale_settings(topic) if knobs.scale_out else ScaleSettings(),
    )


def scale_settings(topic: str) -> ScaleSettings:
    """One run's scale-out topics and election group, named after its events topic."""
    return ScaleSettings(mode="replica", partials_topic=f"{topic}.partials", state_topic=f"{topic}.state",
                         control_topic=f"{topic}.judge", judge_group_id=f"{topic}.judge")


def delete_topics(kafka: KafkaSettings, topic: str, knobs: Knobs) -> None:
    delete_topic(kafka, topic)
    if knobs.scale_out:
        scale = scale_settings(topic)
        for name in (scale.partials_topic, scale.state_topic, scale.control_topic):
            delete_topic(kafka, name)


def processed(agent: Agent) -> float:
    """Events the agent is done with: folded or dead-lettered.

    Reads the one counter, not the whole registry: collecting every histogram 50 times a
    second would cost the agent a tenth of its CPU, like a scrape every 20 ms.
    """
    return sum(s.value for m in agent.metrics.events.collect() for s in m.samples
               if s.name == "attnmon_events_total")


@dataclasses.dataclass(frozen=True)
class ReplicaSpec:
    """What a replica process needs to build its agent (picklable: replicas are spawned)."""

    bootstrap: str
    topic: str
    group_id: str
    checkpoints: Path
    state: Path
    knobs: Knobs


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds so far of this process and of its live children (the forward process)."""
    ticks = os.sysconf("SC_CLK_TCK")
    children = 0.0
    for child in multiprocessing.active_children():
        try:
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # not Linux, or the child just ended
            continue
        children += (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return time.process_time(), children


@dataclasses.dataclass(frozen=True)
class ReplicaResult:
    samples: list[tuple[float, float]]  # (time.monotonic(), events processed so far)
    cpu: tuple[float, float, float]  # events, agent-process and forward-process CPU seconds while processing
    stages: dict[str, float]  # stage -> seconds (attnmon_stage_duration_seconds sums)
    latency_buckets: list[tuple[float, float]]  # (le, cumulative count) of the event-to-metric histogram


@dataclasses.dataclass
class Shared:
    """Progress the parent reads while replicas run (multiprocessing shared memory)."""

    counts: Any  # Array("d", replicas): events processed per replica
    ready: Any  # Array("b", replicas): partitions assigned and a model loaded
    stop: Any  # Event: the parent says stop


def histogram_buckets(agent: Agent, name: str) -> list[tuple[float, float]]:
    return sorted((float(s.labels["le"]), s.value) for m in agent.registry.collect() if m.name == name
                  for s in m.samples if s.name == name + "_bucket")


def stage_seconds(agent: Agent) -> dict[str, float]:
    return {s.labels["stage"]: s.value for m in agent.registry.collect() if m.name == "attnmon_stage_duration_seconds"
            for s in m.samples if s.name.endswith("_sum")}


def run_replica(index: int, spec: ReplicaSpec, shared: Shared, results: Queue) -> None:
    """One agent process with the production defaults, as a deployment would run it."""
    kafka = KafkaSettings(bootstrap_servers=spec.bootstrap)
    settings = agent_settings(kafka, spec.topic, spec.checkpoints, spec.state, spec.knobs)
    settings = settings.model_copy(update={"kafka": dataclasses.replace(settings.kafka, group_id=spec.group_id)})
    def source(a, r):
        return KafkaSource(settings.kafka, on_assigned=a, on_revoked=r)

    if spec.knobs.scale_out:
        agent: Agent = Replica(settings, source, DeadLetterSink(kafka), scale_parts(settings.kafka, settings.scale))
    else:
        agent = Agent(settings, source, DeadLetterSink(kafka))
    thread = threading.Thread(target=agent.run)
    thread.start()
    samples = []
    cpu_from: tuple[float, float, float] | None = None
    while not shared.stop.is_set():
        done = processed(agent)
        if done and cpu_from is None:
            cpu_from = (done, *cpu_seconds())
        samples.append((time.monotonic(), done))
        shared.counts[index] = done
        shared.ready[index] = agent.ready()[0]
        time.sleep(0.02)
    cpu_to = (processed(agent), *cpu_seconds())
    cpu = tuple(b - a for a, b in zip(cpu_from or cpu_to, cpu_to, strict=True))
    agent.stop()
    thread.join()
    results.put((index, ReplicaResult(samples, cpu, stage_seconds(agent),
                                      histogram_buckets(agent, "attnmon_event_to_metric_latency_seconds"))))


def run_replicas(kafka: KafkaSettings, topic: str, replicas: int, checkpoints: Path, work: Path, knobs: Knobs,
                 total: int, *, produce: Callable[[], None] | None = None,
                 timeout_s: float = 600) -> tuple[list[ReplicaResult], float]:
    """Run ``replicas`` agent processes in one new consumer group until they have processed
    ``total`` events; with ``produce``, call it once every replica is ready. Returns each
    replica's result and when the last event was done."""
    spawn = multiprocessing.get_context("spawn")
    shared = Shared(spawn.Array("d", replicas), spawn.Array("b", replicas), spawn.Event())
    results: Queue = spawn.Queue()
    group = f"bench-{uuid.uuid4().hex[:8]}"
    processes = [spawn.Process(target=run_replica, args=(i, ReplicaSpec(
        kafka.bootstrap_servers, topic, group, checkpoints, work / "state" / f"{topic}-{i}", knobs), shared, results))
        for i in range(replicas)]
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout_s
    try:
        if produce is not None:
            while not all(shared.ready) and time.monotonic() < deadline:
                time.sleep(0.05)
            produce()
        while sum(shared.counts) < total and time.monotonic() < deadline:
            time.sleep(0.02)
        finished = time.monotonic()
        done = sum(shared.counts)
    finally:
        shared.stop.set()
        collected = dict(results.get(timeout=120) for _ in processes)
        for process in processes:
            process.join()
        for i in range(replicas):
            shutil.rmtree(work / "state" / f"{topic}-{i}", ignore_errors=True)
    if done < total:
        raise SystemExit(f"{replicas} replica(s) processed {done:.0f} of {total} events within {timeout_s:.0f}s")
    return [collected[i] for i in range(replicas)], finished


def steady_rate(results: list[ReplicaResult], finished: float) -> float:
    """Events/s from the moment every replica is processing to the last event.

    A new consumer group assigns every partition to the first member to join, then
    rebalances as the others join; the rate is measured once all of them hold partitions.
    """
    starts = [next(t for t, n in r.samples if n > 0) for r in results]
    start = max(starts)
    at_start = sum(max((n for t, n in r.samples if t <= start), default=0.0) for r in results)
    at_end = sum(r.samples[-1][1] for r in results)
    return (at_end - at_start) / (finished - start)


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Linear interpolation inside the bucket, as Prometheus' histogram_quantile does."""
    total = buckets[-1][1]
    target = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= target:
            if bound == float("inf"):
                return previous_bound
            span = count - previous_count
            return previous_bound + (bound - previous_bound) * ((target - previous_count) / span if span else 0)
        previous_bound, previous_count = bound, count
    return float("nan")


def merged_latency(results: list[ReplicaResult]) -> list[tuple[float, float]]:
    """Sum the replicas' histograms bucket by bucket, as Prometheus' sum by (le) does."""
    merged: dict[float, float] = {}
    for result in results:
        for bound, count in result.latency_buckets:
            merged[bound] = merged.get(bound, 0.0) + count
    return sorted(merged.items())


def bench_max_rate(kafka: KafkaSettings, checkpoints: Path, events: list[bytes], work: Path, knobs: Knobs,
                   replicas: int) -> tuple[float, dict[str, float], tuple[float, float, float]]:
    """Max events/s of ``replicas`` agents draining a pre-filled topic; stage seconds and
    (events, agent-process CPU, forward-process CPU) summed over the replicas."""
    topic = f"bench.max.{uuid.uuid4().hex[:6]}"
    ensure_topic(kafka, topic, knobs.partitions(replicas))
    fill(kafka, topic, events)
    results, finished = run_replicas(kafka, topic, replicas, checkpoints, work, knobs, len(events))
    delete_topics(kafka, topic, knobs)
    stages: dict[str, float] = {}
    for result in results:
        for stage, seconds in result.stages.items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    cpu = tuple(sum(values) for values in zip(*(result.cpu for result in results), strict=True))
    return steady_rate(results, finished), stages, cpu


def send_paced(kafka: KafkaSettings, topic: str, events: list[bytes], rate: float, sent_rate: Synchronized) -> None:
    """Producer process: send at ``rate`` with each event's ts set at send time."""
    producer = EventProducer(kafka, topic=topic, linger_ms=5)
    started = time.monotonic()
    for i, value in enumerate(events):
        pause = started + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        stamped = TS_FIELD.sub(b'"ts":%d' % int(time.time() * 1000), value, count=1)
        producer.send(stamped, key=str(i).encode())
    producer.flush()
    sent_rate.value = len(events) / (time.monotonic() - started)
    producer.close()


def bench_latency(kafka: KafkaSettings, checkpoints: Path, events: list[bytes], work: Path, rate: float,
                  knobs: Knobs, replicas: int) -> tuple[float, float, float]:
    """Event-to-metric p50/p99 of ``replicas`` agents while a producer sends at ``rate``."""
    topic = f"bench.lat.{uuid.uuid4().hex[:6]}"
    ensure_topic(kafka, topic, knobs.partitions(replicas))
    # The load generator is a separate process, as upstream services are: in an agent's
    # process its Python send loop would hold the GIL the agent needs.
    spawn = multiprocessing.get_context("spawn")
    sent_rate = spawn.Value("d", 0.0)

    def produce() -> None:
        time.sleep(1.0)  # let the group settle after the last join
        producer = spawn.Process(target=send_paced, args=(kafka, topic, events, rate, sent_rate))
        producer.start()
        producer.join()

    results, _ = run_replicas(kafka, topic, replicas, checkpoints, work, knobs, len(events), produce=produce)
    delete_topics(kafka, topic, knobs)
    buckets = merged_latency(results)
    return sent_rate.value, quantile(buckets, 0.5), quantile(buckets, 0.99)


def bench_naive(kafka: KafkaSettings, checkpoints: Path, version: str, events: list[bytes]) -> float:
    """The obvious implementation: one event at a time, end to end."""
    topic = f"bench.naive.{uuid.uuid4().hex[:6]}"
    ensure_topic(kafka, topic, 2)
    fill(kafka, topic, events)
    loaded = checkpoint.load(checkpoints / version)
    model, catalog = loaded.model, loaded.catalog
    genre_matrix = catalog.genre_matrix()
    registry = CollectorRegistry()
    histograms = {s: Histogram(f"naive_{s}", s, ("model_version", "dimension", "cohort", "layer"), registry=registry,
                               buckets=[round(0.05 * i, 2) for i in range(1, 21)]) for s in STATISTICS}
    source = KafkaSource(dataclasses.replace(kafka, topic=topic, group_id=f"naive-{uuid.uuid4().hex[:6]}"),
                         on_assigned=lambda p: {}, on_revoked=lambda p: None)
    done = 0
    first = None
    with torch.inference_mode():
        while done < len(events):
            for record in source.poll(100, 500):
                if first is None:
                    first = time.monotonic()
                event = json.loads(record.value)
                indices = [i for i in (catalog.index_of(x) for x in event["history"]) if i is not None]
                padded = torch.from_numpy(left_pad([np.asarray(indices)], model.config.max_len))
                weights = model.attention(padded).weights.numpy()
                n = min(len(indices), model.config.max_len)
                values = compute(weights[:, :, :, -n:], np.asarray([n]), padded.numpy()[:, -n:], genre_matrix)[0]
                cohorts = [("all", "all"), ("platform", event["context"].get("platform", "unknown")),
                           ("region", event["context"].get("region", "unknown")),
                           ("history_length", "1-9" if n < 10 else "10-49" if n < 50 else "50-199" if n < 200 else "200+")]
                for s_index, statistic in enumerate(STATISTICS):
                    for layer in range(values.shape[1]):
                        for dimension, cohort in cohorts:
                            histograms[statistic].labels(version, dimension, cohort, str(layer)).observe(
                                float(values[s_index, layer]))
                done += 1
    rate = (done - 1) / (time.monotonic() - first)
    source.close()
    delete_topic(kafka, topic)
    return rate


def _deployment(replicas: int, scale_out: bool = False) -> str:
    if scale_out:
        return (f"{replicas} replica{'s' if replicas > 1 else ''} with scale.mode replica on 4 partitions: "
                "partials published, one elected judge among them")
    if replicas == 1:
        return "one agent: a process and its forward-pass child"
    return f"{replicas} agents in one consumer group, a partition each"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    parser.add_argument("--version", help="model version (default: the newest under --checkpoints)")
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--naive-events", type=int, default=1_500)
    parser.add_argument("--work", type=Path, default=Path("var/bench"))
    parser.add_argument("--replicas", type=int, default=1,
                        help="also measure this many agents in one consumer group (1: only one); each agent "
                             "is a process and its forward-pass child, so more pay off only beyond 2 cores")
    parser.add_argument("--poll-records", type=int, default=PollSettings.max_records,
                        help="poll.max_records (and kafka max_poll_records) for the agents")
    parser.add_argument("--torch-threads", type=int, default=ModelSettings.torch_threads,
                        help="models.torch_threads for the agent (the naive path uses the same)")
    parser.add_argument("--scale-out", action="store_true",
                        help="run the agents with scale.mode replica (partials, one elected judge) on a "
                             "4-partition topic; with --replicas N, N of them")
    args = parser.parse_args()
    version = args.version or checkpoint.list_versions(args.checkpoints)[-1].name
    loaded = checkpoint.load(args.checkpoints / version)
    kafka = KafkaSettings(bootstrap_servers=args.bootstrap)
    events = make_events(args.checkpoints, version, args.events, args.work / f"events-{version}.jsonl")
    lengths = [min(len(json.loads(e)["history"]), loaded.config.max_len) for e in events[:5000]]
    print(f"model {version}: d={loaded.config.hidden} L={loaded.config.max_len} layers={loaded.config.layers} "
          f"heads={loaded.config.heads}; {len(events):,} events, mean history {np.mean(lengths):.0f} items "
          f"(after truncation to L)")

    knobs = Knobs(torch_threads=args.torch_threads, poll_records=args.poll_records, scale_out=args.scale_out)
    print(f"torch threads: {args.torch_threads} (agent and naive path); poll.max_records {args.poll_records}; "
          "otherwise the agents' production defaults")
    rates: dict[int, float] = {}
    summary: dict[str, Any] = {"model": version, "events": len(events), "scale_out": args.scale_out, "replicas": {}}
    for replicas in sorted({1, args.replicas}):
        # More replicas drain a larger topic, so that the steady part after the group's
        # rebalance is long enough to measure.
        topic_events = events * replicas
        rate, stages, (cpu_events, agent_cpu, forward_cpu) = bench_max_rate(
            kafka, args.checkpoints, topic_events, args.work, knobs, replicas)
        rates[replicas] = rate
        busy = stages.get("batch", 0.0)
        print(f"\nmax rate, {replicas} replica{'s' if replicas > 1 else ''} ({_deployment(replicas, args.scale_out)}): "
              f"{rate:,.0f} events/s")
        if replicas == 1:
            print(f"  where the time goes (wall seconds; the fold worker was busy {busy:.2f}s of "
                  f"{len(topic_events) / rate:.2f}s):")
            print(f"    {'decode':<10} {stages.get('decode', 0.0):7.2f}s  on the poll thread, overlapping the worker")
            for stage, what in (("recompute", ", waiting for the forward process"), ("stats", ""), ("fold", "")):
                share = stages.get(stage, 0.0) / busy if busy else 0.0
                print(f"    {stage:<10} {stages.get(stage, 0.0):7.2f}s  {share:6.1%} of the worker's time{what}")
            for stage, what in (("judge", "drift judgements (every intervals.judge_s)"),
                                ("checkpoint", "checkpoints (every intervals.checkpoint_s)")):
                print(f"    {stage:<10} {stages.get(stage, 0.0):7.2f}s  {what}")
        else:
            print(f"  {rate / rates[1]:.2f}x one replica")
        if cpu_events:
            print(f"  CPU per event while processing: agent process {agent_cpu / cpu_events * 1e6:.0f} us "
                  f"(poll, decode, statistics, fold), forward process {forward_cpu / cpu_events * 1e6:.0f} us")
        summary["replicas"][str(replicas)] = {
            "events_per_s": round(rate),
            "agent_cpu_us_per_event": round(agent_cpu / cpu_events * 1e6, 1) if cpu_events else None,
            "forward_cpu_us_per_event": round(forward_cpu / cpu_events * 1e6, 1) if cpu_events else None,
        }

    for replicas, rate in rates.items():
        target = rate / 2
        n_latency = min(len(events), int(target * 20))  # ~20 s of traffic
        sent_rate, p50, p99 = bench_latency(kafka, args.checkpoints, events[:n_latency], args.work, target,
                                           knobs, replicas)
        print(f"\nlatency at half the max rate, {replicas} replica{'s' if replicas > 1 else ''} "
              f"({sent_rate:,.0f} events/s sent, {n_latency:,} events): "
              f"event-to-metric p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
        summary["replicas"][str(replicas)].update(
            half_rate_sent_per_s=round(sent_rate), latency_p50_ms=round(p50 * 1000), latency_p99_ms=round(p99 * 1000))

    torch.set_num_threads(args.torch_threads)
    naive = bench_naive(kafka, args.checkpoints, version, events[: args.naive_events])
    print(f"\nnaive path (json, batch-1 full forward, per-value labelled observe): {naive:,.0f} events/s")
    print(f"speed-up over the naive path: one replica {rates[1] / naive:.1f}x"
          + "".join(f"; {r} replicas {rate / naive:.1f}x" for r, rate in rates.items() if r > 1)
          + " (the naive path is one process)")
    summary["naive_events_per_s"] = round(naive)
    summary["speedup_vs_naive"] = round(rates[1] / naive, 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
