"""KafkaSettings: defaults are valid, every bad value is refused with a message naming the field."""

from __future__ import annotations

import dataclasses

import pytest

from monitor.settings import KafkaSettings


def test_defaults_are_valid_and_frozen() -> None:
    settings = KafkaSettings()
    assert settings.topic == "attnmon.predictions"
    assert settings.dead_letter_topic == "attnmon.predictions.dlq"
    assert settings.group_id == "attnmon"
    assert settings.auto_offset_reset == "earliest"
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.topic = "other"  # type: ignore[misc]


def test_bootstrap_list_and_heartbeat() -> None:
    settings = KafkaSettings(bootstrap_servers="a:9092, b:9093", session_timeout_ms=6_000)
    assert settings.bootstrap_list == ["a:9092", "b:9093"]
    assert settings.heartbeat_interval_ms == 2_000
    assert KafkaSettings().heartbeat_interval_ms == 3_000


def test_password_is_not_in_repr() -> None:
    settings = KafkaSettings(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512", sasl_username="u", sasl_password="s3cret"
    )
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"bootstrap_servers": ""}, "bootstrap_servers"),
        ({"bootstrap_servers": "localhost"}, "not host:port"),
        ({"bootstrap_servers": "a:9092,b:99999"}, "b:99999"),
        ({"topic": "bad topic"}, "kafka.topic"),
        ({"topic": ".."}, "kafka.topic"),
        ({"dead_letter_topic": "attnmon.predictions"}, "must differ"),
        ({"group_id": " "}, "group_id"),
        ({"security_protocol": "TLS"}, "security_protocol"),
        ({"security_protocol": "SASL_SSL"}, "sasl_mechanism"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}, "sasl_username"),
        ({"sasl_mechanism": "PLAIN"}, "security_protocol is PLAINTEXT"),
        ({"ssl_cafile": "/nonexistent/ca.pem"}, "use SSL or SASL_SSL"),
        ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "no such file"),
        ({"max_poll_records": 0}, "max_poll_records"),
        ({"session_timeout_ms": 500}, "session_timeout_ms"),
        ({"max_poll_interval_ms": True}, "max_poll_interval_ms"),
        ({"auto_offset_reset": "none"}, "auto_offset_reset"),
        ({"connect_timeout_ms": 0}, "connect_timeout_ms"),
    ],
)
def test_bad_values_are_refused_readably(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KafkaSettings(**overrides)
