"""monitor.stream.events: the wire contract, every rejection reason, and robustness."""

from __future__ import annotations

import json
import pickle
import random
from typing import Any

import msgspec
import pytest

from monitor.stream.events import (
    DEFAULT_LIMITS,
    MAX_ITEM_ID,
    MAX_TS_MS,
    Event,
    EventLimits,
    InvalidEvent,
    Reason,
    Recommendation,
    decode,
    decode_batch,
    encode,
)


def _event(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": "e-1",
        "ts": 1764259200000,
        "model_version": "sasrec-v1",
        "user_id": "u-42",
        "history": [1, 50, 296, 318],
        "recommended": [{"item": 593, "score": 0.91}, {"item": 2571, "score": 0.5}],
        "context": {"platform": "ios", "region": "eu"},
    }
    body.update(overrides)
    return body


def _raw(body: Any) -> bytes:
    return json.dumps(body).encode()


def _reason(raw: Any, limits: EventLimits = DEFAULT_LIMITS) -> Reason:
    with pytest.raises(InvalidEvent) as info:
        decode(raw, limits)
    return info.value.reason


def test_decode_valid_event() -> None:
    event = decode(_raw(_event()))
    assert event.event_id == "e-1"
    assert event.ts == 1764259200000
    assert event.history == (1, 50, 296, 318)
    assert event.recommended == (Recommendation(593, 0.91), Recommendation(2571, 0.5))
    assert event.context == {"platform": "ios", "region": "eu"}


def test_round_trip() -> None:
    event = decode(_raw(_event()))
    assert decode(encode(event)) == event
    built = Event("e", 1, "v", "u", (7,), (Recommendation(3, 1.5),), {"k": "v", "n": 3, "b": True, "z": None})
    assert decode(encode(built)) == built


def test_extra_fields_ignored_and_optional_fields_default() -> None:
    body = _event(future_field={"x": [1, 2]})
    body["recommended"][0]["rank"] = 1
    assert decode(_raw(body)).event_id == "e-1"
    minimal = {k: v for k, v in _event().items() if k not in ("recommended", "context")}
    event = decode(_raw(minimal))
    assert event.recommended == () and event.context == {}


def test_event_is_frozen() -> None:
    event = decode(_raw(_event()))
    with pytest.raises(AttributeError):
        event.user_id = "x"  # type: ignore[misc]


def test_context_scalars_accepted() -> None:
    event = decode(_raw(_event(context={"app_build": 1234, "beta": False, "ratio": 0.5, "region": None})))
    assert event.context == {"app_build": 1234, "beta": False, "ratio": 0.5, "region": None}


def test_not_json() -> None:
    for raw in (b"", b"{", b"not json", b"\xff\xfe\x00", None, 12):
        assert _reason(raw) is Reason.NOT_JSON, raw
    assert _reason(b'{"event_id": "\xff"}') is Reason.NOT_JSON  # invalid UTF-8 inside a string
    assert _reason(_raw(_event()) + b" trailing") is Reason.NOT_JSON
    deep = b"[" * 30000 + b"]" * 30000  # under max_bytes, over the parser's recursion limit
    assert _reason(b'{"future": ' + deep + b"}") is Reason.NOT_JSON
    assert _reason(b'{"context": {"a": ' + deep + b"}}") is Reason.SCHEMA  # rejected at the first [


@pytest.mark.parametrize(
    "body",
    [
        [1, 2, 3],
        "a string",
        {k: v for k, v in _event().items() if k != "history"},
        {k: v for k, v in _event().items() if k != "model_version"},
        _event(ts="1764259200000"),
        _event(ts=1764259200000.0),
        _event(history="1,2,3"),
        _event(history=[1, "2"]),
        _event(history=[1, 2.5]),
        _event(history=[True]),
        _event(user_id=42),
        _event(context=["ios"]),
        _event(context={"platform": {"nested": 1}}),
        _event(recommended=[{"item": 1}]),
        _event(recommended=[{"item": 1, "score": "high"}]),
        _event(recommended=[5]),
    ],
)
def test_schema(body: Any) -> None:
    assert _reason(_raw(body)) is Reason.SCHEMA


def test_number_out_of_range_is_schema() -> None:
    raw = _raw(_event()).replace(b'"score": 0.91', b'"score": 1e999')
    assert _reason(raw) is Reason.SCHEMA


def test_too_large_checked_before_parsing() -> None:
    limits = EventLimits(max_bytes=100)
    assert _reason(b"x" * 101, limits) is Reason.TOO_LARGE  # not even JSON: size wins
    assert _reason(_raw(_event(user_id="u" * 200)), limits) is Reason.TOO_LARGE


def test_history_empty() -> None:
    assert _reason(_raw(_event(history=[]))) is Reason.HISTORY_EMPTY


def test_history_too_long_rejected() -> None:
    limits = EventLimits(max_history=10)
    assert len(decode(_raw(_event(history=list(range(1, 11)))), limits).history) == 10
    assert _reason(_raw(_event(history=list(range(1, 12)))), limits) is Reason.HISTORY_TOO_LONG


@pytest.mark.parametrize("field", ["event_id", "user_id", "model_version"])
def test_field_too_long(field: str) -> None:
    limits = EventLimits(max_string_len=12)
    assert decode(_raw(_event(**{field: "x" * 12})), limits)
    assert _reason(_raw(_event(**{field: "x" * 13})), limits) is Reason.FIELD_TOO_LONG


def test_context_key_or_value_too_long() -> None:
    limits = EventLimits(max_string_len=12)
    assert decode(_raw(_event(context={"k" * 12: "v" * 12})), limits)
    assert _reason(_raw(_event(context={"k" * 13: "ios"})), limits) is Reason.FIELD_TOO_LONG
    assert _reason(_raw(_event(context={"platform": "v" * 13})), limits) is Reason.FIELD_TOO_LONG


def test_too_many_context_keys() -> None:
    context = {f"k{i}": "v" for i in range(17)}
    assert _reason(_raw(_event(context=context))) is Reason.TOO_MANY_CONTEXT_KEYS
    del context["k0"]
    assert decode(_raw(_event(context=context))).context == context


@pytest.mark.parametrize(
    "body",
    [
        _event(history=[1, -1]),
        _event(history=[MAX_ITEM_ID + 1]),
        _event(history=[10**30]),
        _event(recommended=[{"item": -5, "score": 0.1}]),
        _event(recommended=[{"item": 2**31, "score": 0.1}]),
    ],
)
def test_bad_item_id(body: Any) -> None:
    assert _reason(_raw(body)) is Reason.BAD_ITEM_ID


def test_item_id_bounds_inclusive() -> None:
    assert decode(_raw(_event(history=[0, MAX_ITEM_ID]))).history == (0, MAX_ITEM_ID)


@pytest.mark.parametrize("ts", [0, -1, MAX_TS_MS + 1, 10**20])
def test_bad_timestamp(ts: int) -> None:
    assert _reason(_raw(_event(ts=ts))) is Reason.BAD_TIMESTAMP


def test_too_many_recommended() -> None:
    recommended = [{"item": i, "score": 0.0} for i in range(101)]
    assert _reason(_raw(_event(recommended=recommended))) is Reason.TOO_MANY_RECOMMENDED


def test_every_decode_reason_is_reachable_and_labels_are_closed() -> None:
    never_from_decode = {Reason.UNKNOWN_MODEL_VERSION, Reason.UNKNOWN_ITEMS}
    assert {r.value for r in Reason} >= {
        "not_json", "schema", "too_large", "history_empty", "history_too_long", "field_too_long",
        "too_many_context_keys", "bad_item_id", "bad_timestamp", "too_many_recommended",
        "unknown_model_version", "unknown_items",
    }  # fmt: skip
    assert all(isinstance(r.value, str) and r.value == r for r in Reason)
    assert never_from_decode <= set(Reason)


def test_invalid_event_carries_reason_and_pickles() -> None:
    exc = InvalidEvent(Reason.SCHEMA, "bad")
    assert str(exc) == "schema: bad"
    copy = pickle.loads(pickle.dumps(exc))
    assert copy.reason is Reason.SCHEMA and copy.detail == "bad"


def test_limits_validated() -> None:
    with pytest.raises(ValueError):
        EventLimits(max_history=0)
    with pytest.raises(ValueError):
        EventLimits(max_bytes=1.5)  # type: ignore[arg-type]


def test_decode_batch_never_raises_and_indexes_failures() -> None:
    raws = [_raw(_event()), b"{", None, _raw(_event(history=[])), _raw(_event(event_id="e-2"))]
    events, failures = decode_batch(raws)  # type: ignore[arg-type]
    assert [e.event_id for e in events] == ["e-1", "e-2"]
    assert [(i, exc.reason) for i, exc in failures] == [
        (1, Reason.NOT_JSON),
        (2, Reason.NOT_JSON),
        (3, Reason.HISTORY_EMPTY),
    ]


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63, 10**30, rng.randrange(-(10**6), 10**6)])
    if kind == 3:
        return rng.choice([0.5, -1e300, 1e-300, rng.random()])
    if kind == 4:
        return "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(0, 40)))
    if kind == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    if kind == 6:
        return {str(rng.randrange(100)): _random_json(rng, depth + 1) for _ in range(rng.randrange(0, 5))}
    # a mutated valid event: one field replaced by a random value
    body = _event()
    body[rng.choice(list(body))] = _random_json(rng, depth + 1)
    return body


def test_fuzz_only_invalid_event_escapes() -> None:
    rng = random.Random(1234)
    valid = _raw(_event())
    for _ in range(3000):
        choice = rng.randrange(4)
        if choice == 0:
            raw = rng.randbytes(rng.randrange(0, 200))
        elif choice == 1:
            raw = _raw(_random_json(rng))
        elif choice == 2:  # flip bytes of a valid event
            buf = bytearray(valid)
            for _ in range(rng.randrange(1, 6)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            raw = bytes(buf)
        else:  # truncate a valid event
            raw = valid[: rng.randrange(len(valid))]
        try:
            event = decode(raw)
        except InvalidEvent as exc:
            assert isinstance(exc.reason, Reason)
        else:
            assert isinstance(event, Event) and len(event.history) >= 1


def test_msgspec_validation_messages_still_classified() -> None:
    """Guards the message parsing in _classify against msgspec wording changes."""
    with pytest.raises(msgspec.ValidationError, match=r"Expected `int` >= 0 - at `\$\.history\[0\]`"):
        msgspec.json.decode(_raw(_event(history=[-1])), type=Event)
