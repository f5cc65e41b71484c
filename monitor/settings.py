"""Settings of the agent: frozen, validated once at start-up, before anything connects.

Each group of settings is a frozen dataclass whose ``__post_init__`` rejects a
bad value with a ``ValueError`` that names the field and says what is allowed.
``load_settings`` reads one YAML file, overlays ``ATTNMON__SECTION__KEY``
environment variables, rejects unknown keys and builds the frozen ``Settings``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# OAUTHBEARER and GSSAPI need client objects or libraries a settings file cannot give.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
OFFSET_RESETS = ("earliest", "latest")

# Kafka's own rule for topic names (kafka.common.internals.Topic).
_TOPIC_RE = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
_HOST_PORT_RE = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):(?P<port>[0-9]{1,5})$")


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Where the prediction events come from, and how the agent joins its group."""

    # Comma-separated host:port list of brokers to bootstrap from.
    bootstrap_servers: str = "localhost:9092"
    # Topic the serving system writes prediction events to.
    topic: str = "attnmon.predictions"
    # Consumer group: replicas of the agent share it and split the partitions.
    group_id: str = "attnmon"
    # Where undecodable / invalid records go, with the reason.
    dead_letter_topic: str = "attnmon.predictions.dlq"
    # Shows up in broker logs and quotas.
    client_id: str = "attnmon"
    security_protocol: str = "PLAINTEXT"
    # Required for SASL_*, with username and password.
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    # PEM files for SSL / SASL_SSL; None uses the system trust store, no client cert.
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    # Upper bound on records one poll returns (the agent micro-batches them).
    max_poll_records: int = 500
    # The broker drops a member that sends no heartbeat for this long.
    session_timeout_ms: int = 45_000
    # ... or that does not poll for this long (the agent polls while paused).
    max_poll_interval_ms: int = 300_000
    # Where a group with no committed offset (and no checkpoint) starts.
    auto_offset_reset: str = "earliest"
    # How long a client waits at start-up for the first broker to answer.
    connect_timeout_ms: int = 30_000

    def __post_init__(self) -> None:
        _check_bootstrap(self.bootstrap_servers)
        for name in ("topic", "dead_letter_topic"):
            _check_topic(name, getattr(self, name))
        if self.topic == self.dead_letter_topic:
            raise ValueError(
                f"kafka.dead_letter_topic must differ from kafka.topic (both are {self.topic!r})"
            )
        for name in ("group_id", "client_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"kafka.{name} must be a non-empty string, got {value!r}")
        self._check_security()
        _check_int("max_poll_records", self.max_poll_records, 1, 1_000_000)
        # 1 s is the smallest the local stack's broker allows (group.min.session.timeout.ms);
        # a broker's default is 6 s, so tiny values fail there at join time.
        _check_int("session_timeout_ms", self.session_timeout_ms, 1_000, 3_600_000)
        _check_int("max_poll_interval_ms", self.max_poll_interval_ms, 1_000, 86_400_000)
        _check_int("connect_timeout_ms", self.connect_timeout_ms, 100, 600_000)
        if self.auto_offset_reset not in OFFSET_RESETS:
            raise ValueError(
                f"kafka.auto_offset_reset must be one of {', '.join(OFFSET_RESETS)}, "
                f"got {self.auto_offset_reset!r}"
            )

    @property
    def bootstrap_list(self) -> list[str]:
        """The brokers as a list of "host:port" strings."""
        return [s.strip() for s in self.bootstrap_servers.split(",")]

    @property
    def heartbeat_interval_ms(self) -> int:
        """A third of the session timeout, as Kafka recommends, capped at its 3 s default."""
        return max(100, min(3_000, self.session_timeout_ms // 3))

    def _check_security(self) -> None:
        protocol = self.security_protocol
        if protocol not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"kafka.security_protocol must be one of {', '.join(SECURITY_PROTOCOLS)}, "
                f"got {protocol!r}"
            )
        if protocol.startswith("SASL_"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ValueError(
                    f"kafka.sasl_mechanism must be one of {', '.join(SASL_MECHANISMS)} "
                    f"with security_protocol {protocol}, got {self.sasl_mechanism!r}"
                )
            if not (self.sasl_username and self.sasl_password):
                raise ValueError(
                    f"kafka.sasl_username and kafka.sasl_password are required "
                    f"for sasl_mechanism {self.sasl_mechanism}"
                )
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password:
            raise ValueError(
                f"kafka.sasl_* is set but security_protocol is {protocol}; "
                "use SASL_PLAINTEXT or SASL_SSL, or drop the sasl_* settings"
            )
        ssl_files = {
            "ssl_cafile": self.ssl_cafile,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
        }
        given = {k: v for k, v in ssl_files.items() if v is not None}
        if given and not protocol.endswith("SSL"):
            raise ValueError(
                f"kafka.{', kafka.'.join(given)} set but security_protocol is {protocol}; "
                "use SSL or SASL_SSL"
            )
        for name, path in given.items():
            if not os.path.isfile(path):
                raise ValueError(f"kafka.{name}: no such file: {path}")
        if (self.ssl_keyfile is None) != (self.ssl_certfile is None):
            raise ValueError("kafka.ssl_certfile and kafka.ssl_keyfile go together: set both or neither")


def _check_bootstrap(value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"kafka.bootstrap_servers must be a non-empty 'host:port[,host:port...]' string, got {value!r}"
        )
    for server in value.split(","):
        match = _HOST_PORT_RE.match(server.strip())
        if match is None or not 1 <= int(match["port"]) <= 65535:
            raise ValueError(
                f"kafka.bootstrap_servers: {server.strip()!r} is not host:port with a port in 1..65535"
            )


def _check_topic(name: str, value: object) -> None:
    if not isinstance(value, str) or not _TOPIC_RE.match(value) or value in (".", ".."):
        raise ValueError(
            f"kafka.{name} must be 1-249 characters of [a-zA-Z0-9._-] (and not '.' or '..'), got {value!r}"
        )


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"kafka.{name} must be an integer in {low}..{high}, got {value!r}")


# -- the whole agent ----------------------------------------------------------------------
# Imports below the Kafka section keep that section readable on its own; they are plain
# config dataclasses (no Kafka, no Prometheus).
import dataclasses  # noqa: E402
import typing  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from monitor.drift.cohorts import CohortDimension  # noqa: E402
from monitor.drift.judge import JudgeConfig  # noqa: E402
from monitor.drift.paired import PairedConfig  # noqa: E402
from monitor.stream.config import PipelineConfig  # noqa: E402

ENV_PREFIX = "ATTNMON__"  # ATTNMON__KAFKA__BOOTSTRAP_SERVERS=host:9092 sets kafka.bootstrap_servers


@dataclass(frozen=True)
class ModelSettings:
    root: Path = Path("checkpoints")  # one directory per published version
    max_loaded: int = 3  # versions kept in memory (LRU)
    retry_after_s: float = 10.0  # how often a missing/broken version is looked for again
    # torch intra-op threads per forward pass (the forward process inherits it). 1 on purpose:
    # the passes are small (~64 x 50 x 64); OpenMP threads spin between kernels and starved
    # the poll thread: p99 latency 2.5 s vs 0.2 s on 2 cores (docs/architecture.md).
    torch_threads: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.max_loaded < 1 or self.retry_after_s < 0 or self.torch_threads < 1:
            raise ValueError("models.max_loaded and models.torch_threads must be >= 1, models.retry_after_s >= 0")


@dataclass(frozen=True)
class StateSettings:
    directory: Path = Path("var/state")  # checkpoint of windows, baselines, cohorts and offsets

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", Path(self.directory))


@dataclass(frozen=True)
class HttpSettings:
    host: str = "127.0.0.1"  # bind address of /metrics, /healthz, /readyz
    port: int = 9108

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"http.port must be in 0..65535, got {self.port}")


@dataclass(frozen=True)
class PollSettings:
    max_records: int = 512  # micro-batch bound by size ...
    timeout_ms: int = 100  # ... and by wait time

    def __post_init__(self) -> None:
        if self.max_records < 1 or self.timeout_ms < 0:
            raise ValueError("poll.max_records must be >= 1 and poll.timeout_ms >= 0")


@dataclass(frozen=True)
class IntervalSettings:
    judge_s: float = 5.0  # how often windows are judged against baselines
    checkpoint_s: float = 10.0  # how often state is checkpointed and offsets committed
    lag_s: float = 5.0  # how often consumer lag is exported
    stall_s: float = 120.0  # /healthz fails when the main loop has not ticked for this long

    def __post_init__(self) -> None:
        if min(self.judge_s, self.checkpoint_s, self.lag_s, self.stall_s) <= 0:
            raise ValueError("intervals must be > 0")


DEFAULT_COHORTS = (
    CohortDimension(name="platform"),
    CohortDimension(name="region"),
    CohortDimension(name="history_length", kind="history_length", edges=(10, 50, 200)),
)


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings = KafkaSettings()
    models: ModelSettings = ModelSettings()
    state: StateSettings = StateSettings()
    http: HttpSettings = HttpSettings()
    poll: PollSettings = PollSettings()
    intervals: IntervalSettings = IntervalSettings()
    pipeline: PipelineConfig = PipelineConfig()
    cohorts: tuple[CohortDimension, ...] = DEFAULT_COHORTS
    judge: JudgeConfig = JudgeConfig()
    paired: PairedConfig = PairedConfig()


class SettingsError(ValueError):
    """A settings file or variable is wrong; the message says where and how."""


def _build(cls: type, values: object, where: str) -> object:
    """Build a (nested) config dataclass from a mapping, rejecting unknown keys."""
    if not isinstance(values, dict):
        raise SettingsError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise SettingsError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            kwargs[name] = _build(hint, value, f"{where}.{name}")
        elif name == "cohorts":
            if not isinstance(value, list):
                raise SettingsError(f"{where}.cohorts: expected a list of dimensions")
            kwargs[name] = tuple(_build(CohortDimension, item, f"{where}.cohorts[{i}]") for i, item in enumerate(value))
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise SettingsError(f"{where}: {err}") from err


def _merge_env(values: dict, environ: typing.Mapping[str, str]) -> dict:
    """Overlay ATTNMON__SECTION__KEY=value variables (values parsed as YAML scalars)."""
    merged = dict(values)
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in key[len(ENV_PREFIX):].split("__") if part]
        if not path:
            continue
        node = merged
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SettingsError(f"{key}: {part} is not a section")
        node[path[-1]] = yaml.safe_load(raw)
    return merged


def load_settings(path: Path | None = None, environ: typing.Mapping[str, str] | None = None) -> Settings:
    """Settings from a YAML file (optional) overlaid by environment variables; validated."""
    values: object = {}
    if path is not None:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise SettingsError(f"{path}: cannot read settings ({err})") from err
    if not isinstance(values, dict):
        raise SettingsError(f"{path}: the top level must be a mapping")
    values = _merge_env(values, os.environ if environ is None else environ)
    built = _build(Settings, values, str(path or "settings"))
    assert isinstance(built, Settings)
    return built
