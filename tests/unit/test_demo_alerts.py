"""The demo names the alert a verdict fires and its Alertmanager route, from the shipped files."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.tools.alerting import PAIRED, AlertCatalogue


def test_each_verdict_kind_maps_to_its_shipped_alert_and_route():
    catalogue = AlertCatalogue()
    update = catalogue.page_for("model_update")
    assert (update.alert, update.severity, update.receiver) == (
        "AttentionDriftAfterModelUpdate", "critical", "oncall-critical")
    assert update.route == 'severity="critical"' and "pages on-call" in update.describe()
    within = catalogue.page_for("within_version")
    assert (within.alert, within.receiver) == ("AttentionDriftWithinVersion", "oncall-warning")
    paired = catalogue.page_for(PAIRED)
    assert (paired.alert, paired.severity) == ("AttentionChangedByModelUpdate", "warning")


def test_routes_follow_the_files_not_the_code(tmp_path: Path):
    (tmp_path / "attnmon.rules.yml").write_text(
        "groups:\n- name: g\n  rules:\n  - alert: Moved\n    expr: |\n"
        "      attnmon_drift_cohort_verdict{kind=\"model_update\"} == 1\n    for: 2m\n"
        "    labels: {severity: page, team: a}\n")
    (tmp_path / "alertmanager.yml").write_text(
        "route:\n  receiver: fallback\n  routes:\n  - matchers: ['team=~\"b|c\"']\n    receiver: other\n"
        "  - matchers: ['severity=\"page\"', 'team!=\"z\"']\n    receiver: pager\n")
    page = AlertCatalogue(tmp_path).page_for("model_update")
    assert (page.alert, page.for_, page.receiver) == ("Moved", "2m", "pager")
    assert AlertCatalogue(tmp_path).page_for("within_version") is None
    assert AlertCatalogue(tmp_path).route_for({"severity": "none"}) == ("default", "fallback")


def test_an_unknown_matcher_syntax_is_an_error(tmp_path: Path):
    catalogue = AlertCatalogue()
    catalogue._route = {"receiver": "x", "routes": [{"matchers": ["severity critical"], "receiver": "y"}]}
    with pytest.raises(ValueError, match="unsupported"):
        catalogue.route_for({"severity": "critical"})
