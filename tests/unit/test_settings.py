"""Settings: YAML + environment, validated before anything connects."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.settings import SettingsError, load_settings

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


def test_unknown_environment_key_is_rejected():
    with pytest.raises(SettingsError, match="unknown key"):
        load_settings(environ={"ATTNMON__MODELS__ROOTT": "/x"})
