"""The prediction-event contract: a pure, typed, bounded decode of one Kafka record.

Wire format (JSON object; extend, don't break: unknown fields are ignored)::

    {"event_id": "…", "ts": 1764259200000, "model_version": "…", "user_id": "…",
     "history": [item ids, oldest first],
     "recommended": [{"item": id, "score": s}, …],
     "context": {"platform": "ios", "region": "eu", …}}

``event_id``, ``ts``, ``model_version``, ``user_id`` and ``history`` are required;
``recommended`` and ``context`` default to empty. Item ids are raw MovieLens
``movieId`` integers. Context values may be any JSON scalar (string, number,
bool, null) so a producer that adds a numeric context field does not break the
agent; nested objects/arrays there are a schema error.

:func:`decode` either returns a frozen :class:`Event` or raises
:class:`InvalidEvent` with a :class:`Reason` from a closed set, which the loop
uses as a bounded metric label and dead-letter header. Policies:

- ``too_large`` is checked on the raw size before any parsing.
- ``not_json``: malformed or truncated JSON, invalid UTF-8, a record that is
  not bytes (a Kafka tombstone), or nesting deeper than msgspec's recursion
  limit. ``schema``: valid JSON of the wrong shape (missing required field,
  wrong type, number out of float range, nested context value).
- ``history_too_long``: a history over ``max_history`` is *rejected*, not
  truncated. The limit guards memory and CPU against a broken or hostile
  producer; a legitimate long history is trimmed later by the model to its own
  maximum length, which is not an error.
- ``unknown_model_version`` and ``unknown_items`` are members of :class:`Reason`
  so the whole agent shares one label set, but :func:`decode` never raises them:
  the model registry and the item vocabulary decide those later.

Decode speed comes from one typed ``msgspec.json.Decoder`` built at import
(fixed range checks for item ids and timestamps are compiled into it), plus a
handful of ``len`` checks for the configurable limits. The structs are
``gc=False``: they hold only scalars, strings, tuples and dicts of scalars, so
they cannot be part of a reference cycle (as long as code that builds an
Event by hand puts only JSON scalars in ``context``), and leaving them out of
the cyclic GC keeps large batches from paying for repeated collections.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Final, TypeAlias

import msgspec

__all__ = [
    "DEFAULT_LIMITS",
    "ContextValue",
    "Event",
    "EventLimits",
    "InvalidEvent",
    "MAX_ITEM_ID",
    "MAX_TS_MS",
    "Reason",
    "Recommendation",
    "decode",
    "decode_batch",
    "encode",
]

MAX_ITEM_ID: Final = 2**31 - 1
"""Largest accepted item id (fits a signed 32-bit integer)."""
MAX_TS_MS: Final = 4_102_444_800_000
"""2100-01-01T00:00:00Z in epoch milliseconds; later timestamps are absurd."""

_ItemId = Annotated[int, msgspec.Meta(ge=0, le=MAX_ITEM_ID)]
_TimestampMs = Annotated[int, msgspec.Meta(gt=0, le=MAX_TS_MS)]
ContextValue: TypeAlias = str | int | float | bool | None


class Reason(enum.StrEnum):
    """Why an event was not used. Closed set: safe as a metric label value."""

    NOT_JSON = "not_json"
    SCHEMA = "schema"
    TOO_LARGE = "too_large"
    HISTORY_EMPTY = "history_empty"
    HISTORY_TOO_LONG = "history_too_long"
    FIELD_TOO_LONG = "field_too_long"
    TOO_MANY_CONTEXT_KEYS = "too_many_context_keys"
    BAD_ITEM_ID = "bad_item_id"
    BAD_TIMESTAMP = "bad_timestamp"
    TOO_MANY_RECOMMENDED = "too_many_recommended"
    # Never raised by decode(): the model registry / item vocabulary use these.
    UNKNOWN_MODEL_VERSION = "unknown_model_version"
    UNKNOWN_ITEMS = "unknown_items"
    # Never raised by decode(): the source could not decode a record batch (codec, corruption).
    UNDECODABLE_BATCH = "undecodable_batch"


class InvalidEvent(ValueError):
    """A record that cannot be used; ``reason`` is the bounded label, ``detail`` is for logs."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"


class Recommendation(msgspec.Struct, frozen=True, gc=False):
    """One served recommendation."""

    item: _ItemId
    score: float


class Event(msgspec.Struct, frozen=True, gc=False):
    """One decoded, validated prediction event (immutable)."""

    event_id: str
    ts: _TimestampMs  # epoch milliseconds
    model_version: str
    user_id: str
    history: tuple[_ItemId, ...]  # [n] raw item ids, oldest first, n >= 1
    recommended: tuple[Recommendation, ...] = ()
    context: dict[str, ContextValue] = {}


@dataclass(frozen=True)
class EventLimits:
    """Bounds applied to every event (all counts inclusive maxima)."""

    max_bytes: int = 65536  # raw record size, checked before parsing
    max_history: int = 1000  # longer histories are rejected (history_too_long)
    max_string_len: int = 128  # event_id, user_id, model_version, context keys / string values
    max_context_keys: int = 16
    max_recommended: int = 100

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_history", "max_string_len", "max_context_keys", "max_recommended"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"EventLimits.{name} must be a positive int, got {value!r}")


DEFAULT_LIMITS: Final = EventLimits()

_DECODER: Final = msgspec.json.Decoder(Event)
_ENCODER: Final = msgspec.json.Encoder()


def encode(event: Event) -> bytes:
    """Serialise an event back to the wire format (``decode(encode(e)) == e``)."""
    return _ENCODER.encode(event)


def decode(raw: bytes | bytearray | memoryview, limits: EventLimits = DEFAULT_LIMITS) -> Event:
    """Decode and validate one record; raise :class:`InvalidEvent` on anything unusable.

    >>> event = decode(b'{"event_id": "e1", "ts": 1764259200000, "model_version": "v7", '
    ...                b'"user_id": "u42", "history": [1, 50, 260], "context": {"platform": "ios"}}')
    >>> event.model_version, event.history, event.context, event.recommended
    ('v7', (1, 50, 260), {'platform': 'ios'}, ())
    >>> decode(encode(event)) == event
    True
    >>> decode(b'{"event_id": "e1", "history": [1]}')
    Traceback (most recent call last):
    ...
    monitor.stream.events.InvalidEvent: schema: Object missing required field `ts`
    """
    try:
        size = len(raw)
    except TypeError:  # e.g. a Kafka tombstone (value None)
        raise InvalidEvent(Reason.NOT_JSON, f"record is {type(raw).__name__}, not bytes") from None
    if size > limits.max_bytes:
        raise InvalidEvent(Reason.TOO_LARGE, f"{size} bytes > {limits.max_bytes}")
    try:
        event = _DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(_classify(str(exc)), str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError, TypeError, RecursionError) as exc:
        # malformed or truncated JSON, invalid UTF-8 inside a string, a
        # non-buffer record, or nesting deeper than the parser's recursion limit
        raise InvalidEvent(Reason.NOT_JSON, str(exc)) from None

    n = len(event.history)
    if n == 0:
        raise InvalidEvent(Reason.HISTORY_EMPTY, "history is empty")
    if n > limits.max_history:
        raise InvalidEvent(Reason.HISTORY_TOO_LONG, f"history has {n} items > {limits.max_history}")
    max_len = limits.max_string_len
    if len(event.event_id) > max_len or len(event.user_id) > max_len or len(event.model_version) > max_len:
        raise InvalidEvent(Reason.FIELD_TOO_LONG, f"event_id/user_id/model_version longer than {max_len}")
    context = event.context
    if context:
        if len(context) > limits.max_context_keys:
            raise InvalidEvent(
                Reason.TOO_MANY_CONTEXT_KEYS, f"{len(context)} context keys > {limits.max_context_keys}"
            )
        for key, value in context.items():
            if len(key) > max_len or (type(value) is str and len(value) > max_len):
                raise InvalidEvent(Reason.FIELD_TOO_LONG, f"context entry {key[:32]!r} longer than {max_len}")
    if len(event.recommended) > limits.max_recommended:
        raise InvalidEvent(
            Reason.TOO_MANY_RECOMMENDED, f"{len(event.recommended)} recommended > {limits.max_recommended}"
        )
    return event


def decode_batch(
    raws: Iterable[bytes | bytearray | memoryview | None], limits: EventLimits = DEFAULT_LIMITS
) -> tuple[list[Event], list[tuple[int, InvalidEvent]]]:
    """Decode many records; never raises.

    Returns ``(events, failures)``: the good events in input order, and
    ``(index into raws, error)`` for each bad one so the caller can dead-letter
    the original record.

    >>> good = b'{"event_id": "e1", "ts": 1764259200000, "model_version": "v7", "user_id": "u", "history": [3]}'
    >>> events, failures = decode_batch([good, None, b'{"event_id": '])
    >>> [e.event_id for e in events], [(i, err.reason.value) for i, err in failures]
    (['e1'], [(1, 'not_json'), (2, 'not_json')])
    """
    events: list[Event] = []
    failures: list[tuple[int, InvalidEvent]] = []
    append = events.append
    for i, raw in enumerate(raws):
        try:
            append(decode(raw, limits))  # type: ignore[arg-type]
        except InvalidEvent as exc:
            failures.append((i, exc))
        except Exception as exc:  # a decoder bug must not stop the batch; keep it visible in detail
            failures.append((i, InvalidEvent(Reason.NOT_JSON, f"unexpected {type(exc).__name__}: {exc}")))
    return events, failures


def _classify(message: str) -> Reason:
    """Map a msgspec ValidationError message to a Reason (rare path, not hot).

    Type errors read "Expected `int`, got `str` - at `$.ts`"; range errors from
    the compiled constraints read "Expected `int` >= 0 - at `$.history[3]`".
    Anything unrecognised is a schema error.
    """
    expected, _, where = message.partition(" - at ")
    if not expected.startswith("Expected `int` ") or ", got " in expected:
        return Reason.SCHEMA
    if where == "`$.ts`":
        return Reason.BAD_TIMESTAMP
    if where.startswith("`$.history[") or (where.startswith("`$.recommended[") and where.endswith("].item`")):
        return Reason.BAD_ITEM_ID
    return Reason.SCHEMA
