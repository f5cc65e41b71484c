"""Settings: YAML + environment, validated before anything connects."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from monitor.settings import HttpSettings, Settings, SettingsError, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_example_file_loads_and_env_overrides_it():
    settings = load_settings(REPO / "deploy/attnmon.example.yml",
                             environ={"ATTNMON__KAFKA__BOOTSTRAP_SERVERS": "broker-1:9092,broker-2:9092",
                                      "ATTNMON__JUDGE__MIN_SAMPLES": "300",
                                      "ATTNMON__PIPELINE__STATS__TOP_K": "5"})
    assert settings.kafka.bootstrap_list == ["broker-1:9092", "broker-2:9092"]
    assert settings.judge.min_samples == 300
    assert settings.pipeline.stats.top_k == 5
    assert [d.name for d in settings.cohorts] == ["platform", "region", "history_length"]
    assert settings.cohorts[2].edges == (10, 50, 200)


@pytest.mark.parametrize("text, words", [
    ("kafka: {bootstrap: x:1}", "unknown key"),
    ("judge: {alpha: 2}", "judge"),
    ("cohorts: [{name: platform, kind: bogus}]", "kind"),
    ("http: {port: 70000}", "http.port"),
    ("- just a list", "mapping"),
    ("kafka: {topic: 'bad topic!'}", "kafka.topic"),
])
def test_bad_settings_give_a_readable_error(tmp_path, text, words):
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=words):
        load_settings(path, environ={})


@pytest.mark.parametrize("judge_s, reference_s, refused", [(5, 9.9, True), (5, 10, False), (60, 86_400, False),
                                                           (60_000, 86_400, True)])
def test_a_reference_shorter_than_raise_after_judge_intervals_is_refused(tmp_path, judge_s, reference_s, refused):
    # A new version is judged against the previous one only while its own baseline collects: a
    # baseline that may freeze before raise_after (2) rounds leaves every update without a verdict.
    path = tmp_path / "settings.yml"
    path.write_text(f"intervals: {{judge_s: {judge_s}}}\njudge: {{reference_seconds: {reference_s}}}\n")
    if refused:
        with pytest.raises(SettingsError, match=r"settings\.yml: judge\.reference_seconds .* must be at least "
                                                r"judge\.raise_after x intervals\.judge_s \(2 x"):
            load_settings(path, environ={})
    else:
        assert load_settings(path, environ={}).judge.reference_seconds == reference_s
    with pytest.raises(SettingsError, match="ATTNMON__JUDGE__REFERENCE_SECONDS from the environment"):
        load_settings(environ={"ATTNMON__JUDGE__REFERENCE_SECONDS": "0"})  # the old default: count only


def test_the_default_reference_spans_a_day():
    assert Settings().judge.reference_seconds == 86_400.0


def test_unknown_environment_key_is_rejected():
    with pytest.raises(SettingsError, match="unknown key"):
        load_settings(environ={"ATTNMON__MODELS__ROOTT": "/x"})


SASL = {"ATTNMON__KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT", "ATTNMON__KAFKA__SASL_MECHANISM": "PLAIN",
        "ATTNMON__KAFKA__SASL_USERNAME": "agent"}


def test_a_password_of_no_stays_the_string_no():
    # Parsed as YAML (the old loader), "no" was False and the SASL settings were refused.
    settings = load_settings(REPO / "deploy/attnmon.example.yml",
                             environ={**SASL, "ATTNMON__KAFKA__SASL_PASSWORD": "no"})
    assert settings.kafka.sasl_password == "no"


def test_environment_values_are_parsed_by_the_field_type_not_as_yaml():
    # YAML would read "no" as False, "123" as an int and "1e3" as a string.
    settings = load_settings(environ={**SASL, "ATTNMON__KAFKA__SASL_PASSWORD": "no",
                                      "ATTNMON__KAFKA__CLIENT_ID": "123",
                                      "ATTNMON__KAFKA__MAX_POLL_RECORDS": "12",
                                      "ATTNMON__PIPELINE__STATS__PER_HEAD": "true",
                                      "ATTNMON__INTERVALS__JUDGE_S": "1e3"})
    assert settings.kafka.sasl_password == "no"
    assert settings.kafka.client_id == "123"
    assert settings.kafka.max_poll_records == 12
    assert settings.pipeline.stats.per_head is True
    assert settings.intervals.judge_s == 1000.0
    assert load_settings(environ={"ATTNMON__PIPELINE__STATS__PER_HEAD": "false"}).pipeline.stats.per_head is False


def test_a_bad_environment_value_is_refused_naming_the_variable():
    with pytest.raises(SettingsError, match=r"^ATTNMON__KAFKA__MAX_POLL_RECORDS: kafka\.max_poll_records: .*integer"):
        load_settings(REPO / "deploy/attnmon.example.yml", environ={"ATTNMON__KAFKA__MAX_POLL_RECORDS": "abc"})
    with pytest.raises(SettingsError, match=r"^ATTNMON__HTTP__PORT: http\.port: .*65535"):
        load_settings(environ={"ATTNMON__HTTP__PORT": "70000"})


@pytest.mark.parametrize("name, words", [
    ("ATTNMON__KAFKA__NOPE", r"^ATTNMON__KAFKA__NOPE: unknown key 'nope' in kafka .*allowed: .*bootstrap_servers"),
    ("ATTNMON__NOPE", r"^ATTNMON__NOPE: unknown key 'nope' .*allowed: .*kafka"),
    ("ATTNMON__KAFKA__TOPIC__NAME", r"^ATTNMON__KAFKA__TOPIC__NAME: kafka\.topic is a single value"),
    ("ATTNMON__PIPELINE__STATS__NOPE", r"^ATTNMON__PIPELINE__STATS__NOPE: unknown key 'nope' in pipeline\.stats"),
])
def test_a_variable_that_names_no_setting_is_refused(name, words):
    with pytest.raises(SettingsError, match=words):
        load_settings(environ={name: "1"})


def test_environment_beats_file_beats_defaults(tmp_path):
    path = tmp_path / "settings.yml"
    path.write_text("kafka: {topic: from-file, group_id: from-file}\n")
    settings = load_settings(path, environ={"ATTNMON__KAFKA__TOPIC": "from-env", "OTHER__KAFKA__GROUP_ID": "x"})
    kafka = settings.kafka
    assert (kafka.topic, kafka.group_id, kafka.client_id) == ("from-env", "from-file", "attnmon")


def test_load_settings_reads_the_process_environment_but_settings_built_in_code_do_not(monkeypatch):
    monkeypatch.setenv("ATTNMON__HTTP__PORT", "9200")
    assert load_settings().http.port == 9200
    assert Settings().http.port == 9108


def test_settings_are_frozen_and_sections_replaced_with_validation():
    settings = load_settings(REPO / "deploy/attnmon.example.yml", environ={})
    with pytest.raises(ValidationError, match="frozen"):
        settings.http = HttpSettings(port=1)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.http.port = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="kafka.topic"):
        dataclasses.replace(settings.kafka, topic="bad topic")
    moved = settings.model_copy(update={"http": dataclasses.replace(settings.http, port=9200)})
    assert (moved.http.port, settings.http.port) == (9200, 9108)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(SettingsError, match=r"missing\.yml: .*[Nn]o such"):
        load_settings(tmp_path / "missing.yml", environ={})


def test_loading_settings_does_not_import_torch():
    # A fresh interpreter: this test process may have imported torch already.
    code = ("import sys, monitor.settings; "
            "monitor.settings.load_settings('deploy/attnmon.example.yml'); "
            "print(sorted(m for m in ('torch', 'monitor.stream.pipeline') if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ATTNMON__")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
