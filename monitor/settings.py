"""Settings of the agent: frozen, validated once at start-up, before anything connects.

``Settings`` is a pydantic-settings class; each section is a frozen pydantic dataclass
(``dataclasses.replace`` works and validates), or a config dataclass of the module that
uses it. ``load_settings`` reads one YAML file and ``ATTNMON__SECTION__KEY`` environment
variables (environment > file > defaults); a value is parsed as its field's type, and an
unknown key or variable, or a bad value, is a ``SettingsError`` naming where it came from.
``Settings(...)`` built in code reads neither file nor environment.

Importing this module imports neither torch nor the pipeline.
"""

from __future__ import annotations

import contextvars
import dataclasses
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic_settings
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from pydantic_settings.sources.utils import parse_env_vars

# Plain config dataclasses (no torch, no Kafka, no Prometheus).
from monitor.drift.cohorts import CohortDimension
from monitor.drift.judge import JudgeConfig
from monitor.drift.paired import PairedConfig
from monitor.stream.config import PipelineConfig

ENV_PREFIX = "ATTNMON__"  # ATTNMON__KAFKA__BOOTSTRAP_SERVERS=host:9092 sets kafka.bootstrap_servers
ENV_DELIMITER = "__"

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# OAUTHBEARER and GSSAPI need client objects or libraries a settings file cannot give.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
OFFSET_RESETS = ("earliest", "latest")

# Kafka's own rule for topic names (kafka.common.internals.Topic).
_TOPIC_RE = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
_HOST_PORT_RE = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):(?P<port>[0-9]{1,5})$")

# Sections reject unknown keys; frozen=True on each decorator makes them immutable.
_SECTION = ConfigDict(extra="forbid")


class SettingsError(ValueError):
    """A settings file or variable is wrong; the message says where and how."""


def _no_bool(value: object) -> object:
    if isinstance(value, bool):  # pydantic would take True for 1
        raise ValueError(f"must be a number, not a boolean ({value!r})")
    return value


Count = Annotated[int, BeforeValidator(_no_bool)]


# -- Kafka --------------------------------------------------------------------------------

# Allowed range of each integer Kafka setting.
_KAFKA_INTS = {
    "max_poll_records": (1, 1_000_000),
    # 1 s is the smallest the local stack's broker allows (group.min.session.timeout.ms);
    # a broker's default is 6 s, so tiny values fail there at join time.
    "session_timeout_ms": (1_000, 3_600_000),
    "max_poll_interval_ms": (1_000, 86_400_000),
    "connect_timeout_ms": (100, 600_000),
    "metadata_max_age_ms": (1_000, 86_400_000),
}


@dataclass(frozen=True, config=_SECTION)
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
    max_poll_records: Count = 500
    # The broker drops a member that sends no heartbeat for this long.
    session_timeout_ms: Count = 45_000
    # ... or that does not poll for this long (the agent polls while paused).
    max_poll_interval_ms: Count = 300_000
    # Where a group with no committed offset (and no checkpoint) starts.
    auto_offset_reset: str = "earliest"
    # How long a client waits at start-up for the first broker to answer.
    connect_timeout_ms: Count = 30_000
    # How often the topic's metadata is refreshed: partitions added to it are taken up (a
    # rebalance) within this long.
    metadata_max_age_ms: Count = 300_000
    # Static group membership (KIP-345): a stable identity of this replica, e.g. the pod name
    # of a StatefulSet (ATTNMON__KAFKA__GROUP_INSTANCE_ID=$(POD_NAME)). A replica restarted
    # with the same id gets its partitions back at once, without waiting for the session
    # timeout or a rebalance. None: dynamic membership.
    group_instance_id: str | None = None
    # Leave the group on a clean shutdown (SIGTERM), so the partitions move at once; a static
    # member does not leave by itself. False keeps them unassigned until the session timeout,
    # which avoids two rebalances when a rolling restart brings the same id back quickly.
    leave_group_on_shutdown: bool = True

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(
                f"kafka.bootstrap_servers must be a non-empty 'host:port[,host:port...]' string, got {value!r}"
            )
        for server in value.split(","):
            match = _HOST_PORT_RE.match(server.strip())
            if match is None or not 1 <= int(match["port"]) <= 65535:
                raise ValueError(
                    f"kafka.bootstrap_servers: {server.strip()!r} is not host:port with a port in 1..65535"
                )
        return value

    @field_validator("topic", "dead_letter_topic")
    @classmethod
    def _check_topic(cls, value: str, info: Any) -> str:
        if not _TOPIC_RE.match(value) or value in (".", ".."):
            raise ValueError(
                f"kafka.{info.field_name} must be 1-249 characters of [a-zA-Z0-9._-] (and not '.' or '..'), "
                f"got {value!r}"
            )
        return value

    @field_validator("group_instance_id")
    @classmethod
    def _check_instance_id(cls, value: str | None) -> str | None:
        if value is not None and (not _TOPIC_RE.match(value) or value in (".", "..")):
            raise ValueError(
                f"kafka.group_instance_id must be 1-249 characters of [a-zA-Z0-9._-], got {value!r}"
            )
        return value

    @field_validator("group_id", "client_id")
    @classmethod
    def _check_name(cls, value: str, info: Any) -> str:
        if not value.strip():
            raise ValueError(f"kafka.{info.field_name} must be a non-empty string, got {value!r}")
        return value

    @field_validator(*_KAFKA_INTS)
    @classmethod
    def _check_int(cls, value: int, info: Any) -> int:
        low, high = _KAFKA_INTS[info.field_name]
        if not low <= value <= high:
            raise ValueError(f"kafka.{info.field_name} must be an integer in {low}..{high}, got {value!r}")
        return value

    @field_validator("security_protocol")
    @classmethod
    def _check_protocol(cls, value: str) -> str:
        if value not in SECURITY_PROTOCOLS:
            raise ValueError(f"kafka.security_protocol must be one of {', '.join(SECURITY_PROTOCOLS)}, got {value!r}")
        return value

    @field_validator("auto_offset_reset")
    @classmethod
    def _check_offset_reset(cls, value: str) -> str:
        if value not in OFFSET_RESETS:
            raise ValueError(f"kafka.auto_offset_reset must be one of {', '.join(OFFSET_RESETS)}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_together(self) -> KafkaSettings:
        if self.topic == self.dead_letter_topic:
            raise ValueError(f"kafka.dead_letter_topic must differ from kafka.topic (both are {self.topic!r})")
        self._check_security()
        return self

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


# -- the other sections -------------------------------------------------------------------


@dataclass(frozen=True, config=_SECTION)
class ModelSettings:
    root: Path = Path("checkpoints")  # one directory per published version
    max_loaded: Annotated[Count, Field(ge=1)] = 3  # versions kept in memory (LRU)
    # how often a missing/broken version is looked for again
    retry_after_s: Annotated[float, Field(ge=0)] = 10.0
    # torch intra-op threads per forward pass (the forward process inherits it). 1 on purpose:
    # the passes are small (~64 x 50 x 64); OpenMP threads spin between kernels and starved
    # the poll thread: p99 latency 2.5 s vs 0.2 s on 2 cores (docs/architecture.md).
    torch_threads: Annotated[Count, Field(ge=1)] = 1


@dataclass(frozen=True, config=_SECTION)
class StateSettings:
    directory: Path = Path("var/state")  # checkpoint of windows, baselines, cohorts and offsets
    # A checkpoint that cannot be read or restored is kept aside (state.json.unusable-*), then:
    # "start_empty" runs on from empty state (the group's committed offsets still hold), "exit"
    # stops the agent with status 3 for an operator to decide. Never a crash loop.
    on_unusable: Literal["start_empty", "exit"] = "start_empty"


@dataclass(frozen=True, config=_SECTION)
class HttpSettings:
    host: str = "127.0.0.1"  # bind address of /metrics, /healthz, /readyz
    port: Annotated[Count, Field(ge=0, le=65535)] = 9108


@dataclass(frozen=True, config=_SECTION)
class PollSettings:
    max_records: Annotated[Count, Field(ge=1)] = 512  # micro-batch bound by size ...
    timeout_ms: Annotated[Count, Field(ge=0)] = 100  # ... and by wait time


@dataclass(frozen=True, config=_SECTION)
class IntervalSettings:
    judge_s: Annotated[float, Field(gt=0)] = 5.0  # how often windows are judged against baselines
    checkpoint_s: Annotated[float, Field(gt=0)] = 10.0  # how often state is checkpointed and offsets committed
    lag_s: Annotated[float, Field(gt=0)] = 5.0  # how often consumer lag is exported
    stall_s: Annotated[float, Field(gt=0)] = 120.0  # /healthz fails when the main loop has not ticked for this long


@dataclass(frozen=True, config=_SECTION)
class ScaleSettings:
    """Scale-out (docs/architecture.md, "Scale-out"). ``single``: one agent judges its own
    partitions' traffic (the default, and what a group of one needs). ``replica``: this
    process folds its partitions into partials per event-time window (``intervals.judge_s``
    wide), publishes them to ``partials_topic``, and competes through ``control_topic`` to
    be the one judge that merges them, keeping its state in ``state_topic``."""

    mode: Literal["single", "replica"] = "single"
    partials_topic: str = "attnmon.partials"  # compacted, one partition: partials + progress per partition
    state_topic: str = "attnmon.judge-state"  # compacted, one partition: the judge's state
    control_topic: str = "attnmon.judge"  # one partition: its owner in judge_group_id judges
    judge_group_id: str = "attnmon-judge"  # the election's consumer group (every replica joins it)
    # A partition at its log end for this long seals its open window, so the judge does not
    # wait for it (events arriving later open a later window: docs/architecture.md).
    idle_s: Annotated[float, Field(gt=0)] = 30.0

    @field_validator("partials_topic", "state_topic", "control_topic")
    @classmethod
    def _check_topic(cls, value: str, info: Any) -> str:
        if not _TOPIC_RE.match(value) or value in (".", ".."):
            raise ValueError(f"scale.{info.field_name} must be 1-249 characters of [a-zA-Z0-9._-], got {value!r}")
        return value

    @field_validator("judge_group_id")
    @classmethod
    def _check_group(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"scale.judge_group_id must be a non-empty string, got {value!r}")
        return value


DEFAULT_COHORTS = (
    CohortDimension(name="platform"),
    CohortDimension(name="region"),
    CohortDimension(name="history_length", kind="history_length", edges=(10, 50, 200)),
)


# -- the whole agent ----------------------------------------------------------------------

# (YAML path or None, environment) while load_settings builds a Settings; None otherwise.
_LOADING: contextvars.ContextVar[tuple[Path | None, Mapping[str, str]] | None] = contextvars.ContextVar(
    "attnmon_settings_loading", default=None
)


class Settings(BaseSettings):
    """Every setting of the agent. ``load_settings`` fills it from a file and the environment;
    built in code (tests, benches, the demo) it takes only its arguments and the defaults."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_DELIMITER, extra="forbid", frozen=True
    )

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
    scale: ScaleSettings = ScaleSettings()

    @model_validator(mode="after")
    def _check_reference_outlasts_update_judgement(self) -> Settings:
        # A new version is judged against the one it replaced only while its own baseline
        # collects; a reference that can freeze before raise_after judge rounds have passed
        # leaves every model update without a verdict (docs/drift.md, "reference_seconds").
        judge, every = self.judge, self.intervals.judge_s
        if judge.reference_seconds < judge.raise_after * every:
            raise ValueError(
                f"judge.reference_seconds ({judge.reference_seconds:g} s) must be at least judge.raise_after x "
                f"intervals.judge_s ({judge.raise_after} x {every:g} s = {judge.raise_after * every:g} s): "
                "a new version's own baseline would freeze before a model update could be judged "
                f"{judge.raise_after} times, so no update could ever raise a verdict"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        loading = _LOADING.get()
        if loading is None:
            return (init_settings,)
        path, environ = loading
        sources: list[PydanticBaseSettingsSource] = [init_settings, _Environment(settings_cls, environ)]
        if path is not None:
            sources.append(_YamlFile(settings_cls, path))
        return tuple(sources)  # highest priority first


class _Environment(EnvSettingsSource):
    """Environment variables from the mapping ``load_settings`` was given, not always ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


class _YamlFile(YamlConfigSettingsSource):
    """One YAML file that must exist and hold a mapping of sections."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        if not path.is_file():
            raise SettingsError(f"{path}: no such settings file")
        super().__init__(settings_cls, yaml_file=path)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            values = yaml.safe_load(file_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise SettingsError(f"{file_path}: cannot read settings ({err})") from err
        if values is None:
            return {}
        if not isinstance(values, dict):
            raise SettingsError(
                f"{file_path}: the top level must be a mapping of sections, got a {type(values).__name__}"
            )
        return values


# -- loading ------------------------------------------------------------------------------


def _fields(owner: object) -> dict[str, object] | None:
    """Field name -> type of a settings class or config dataclass; None for a plain value."""
    if isinstance(owner, type) and issubclass(owner, BaseModel):
        return {name: info.annotation for name, info in owner.model_fields.items()}
    if isinstance(owner, type) and dataclasses.is_dataclass(owner):
        hints = typing.get_type_hints(owner, include_extras=False)
        return {f.name: hints[f.name] for f in dataclasses.fields(owner)}
    return None


def _dotted(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _env_paths(environ: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Setting path -> variable, for every ATTNMON__ variable; one naming no setting is an error."""
    paths: dict[tuple[str, ...], str] = {}
    for name in environ:
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = tuple(name[len(ENV_PREFIX):].lower().split(ENV_DELIMITER))
        owner: object = Settings
        for depth, part in enumerate(parts):
            fields = _fields(owner)
            if fields is None:
                raise SettingsError(
                    f"{name}: {_dotted(parts[:depth])} is a single value, not a section "
                    f"(set {ENV_PREFIX}{ENV_DELIMITER.join(parts[:depth]).upper()} instead)"
                )
            if part not in fields:
                where = f"in {_dotted(parts[:depth])} " if depth else ""
                raise SettingsError(
                    f"{name}: unknown key {part!r} {where}(expected {ENV_PREFIX}SECTION{ENV_DELIMITER}KEY; "
                    f"allowed: {', '.join(sorted(fields))})"
                )
            owner = fields[part]
        paths[parts] = name
    return paths


def _problem(error: Mapping[str, Any]) -> str:
    """One pydantic error as 'where: what is wrong / allowed'."""
    loc = tuple(error["loc"])
    where = _dotted(loc) or "settings"
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        owner: object = Settings
        for part in loc[:-1]:
            fields = _fields(owner) or {}
            owner = fields.get(part) if isinstance(part, str) else typing.get_args(owner)[0]
        allowed = _fields(owner)
        return f"{where}: unknown key" + (f"; allowed: {', '.join(sorted(allowed))}" if allowed else "")
    message = str(error["msg"]).removeprefix("Value error, ")
    if not loc or message.startswith((where + ".", where + " ", where + ":")):
        return message  # it names the fields already (a check across sections has no location)
    if error["type"] != "value_error":
        shown = "'***'" if "password" in where else repr(error.get("input"))
        message += f", got {shown[:80]}"
    return f"{where}: {message}"


def _explain(err: ValidationError, path: Path | None, env: dict[tuple[str, ...], str]) -> SettingsError:
    """One readable message: each problem with the variable or file it came from."""
    problems = []
    for error in err.errors():
        loc = tuple(error["loc"])
        # The environment wins over the file, so a variable at or above the key set the value.
        source = next((name for p, name in env.items() if loc[: len(p)] == p), None)
        text = _problem(error)
        if source is None:
            below = sorted(name for p, name in env.items() if p[: len(loc)] == loc)
            source = str(path) if path is not None else "settings"
            if below:
                text += f" (with {', '.join(below)} from the environment)"
        problems.append(f"{source}: {text}")
    if len(problems) == 1:
        return SettingsError(problems[0])
    return SettingsError(f"{len(problems)} problems in the settings: " + "; ".join(problems))


def load_settings(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from a YAML file (optional) overlaid by ``ATTNMON__`` variables; validated.

    ``environ`` replaces ``os.environ`` (tests). Raises ``SettingsError`` with a readable message.
    """
    path = Path(path) if path is not None else None
    environ = os.environ if environ is None else environ
    env = _env_paths(environ)
    token = _LOADING.set((path, environ))
    try:
        return Settings()
    except ValidationError as err:
        raise _explain(err, path, env) from None
    except pydantic_settings.SettingsError as err:  # a variable that is not the JSON its key takes
        match = re.search(r'field "([^"]+)"', str(err))
        names = [name for p, name in env.items() if match and p == (match[1],)] or ["the environment"]
        raise SettingsError(f"{', '.join(names)}: {err} ({err.__cause__}); "
                            "a section or list set whole takes JSON") from err
    finally:
        _LOADING.reset(token)
