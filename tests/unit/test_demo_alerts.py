"""The demo names the alert a verdict fires and its Alertmanager route, from the shipped files."""

from __future__ import annotations

import io
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from monitor.tools.alerting import PAIRED, PAIRED_CONFIRMS, PAIRED_NONE, PAIRED_UNCONFIRMED, AlertCatalogue


def test_each_verdict_kind_maps_to_its_shipped_alert_and_route():
    catalogue = AlertCatalogue()
    update = catalogue.page_for("model_update")
    assert (update.alert, update.severity, update.receiver) == (
        "AttentionDriftAfterModelUpdate", "critical", "oncall-critical")
    assert update.route == 'severity="critical"' and "pages on-call" in update.describe()
    # The paired state picks the rule: no verdict yet and confirmed page, judged-not-confirming warns.
    for value in (PAIRED_NONE, PAIRED_CONFIRMS):
        assert catalogue.page_for("model_update", value) == update
    unconfirmed = catalogue.page_for("model_update", PAIRED_UNCONFIRMED)
    assert (unconfirmed.alert, unconfirmed.severity, unconfirmed.for_, unconfirmed.route, unconfirmed.receiver) == (
        "AttentionDriftAfterModelUpdate", "warning", "1m", 'severity="warning"', "oncall-warning")
    assert "does not page" in unconfirmed.describe()
    assert len(catalogue.alerts_for("model_update")) == 2
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


def test_a_value_filter_line_picks_the_rule_and_none_takes_the_first(tmp_path: Path):
    expr = '      attnmon_drift_cohort_verdict{kind="model_update"} == 1\n'
    (tmp_path / "attnmon.rules.yml").write_text(
        "groups:\n- name: g\n  rules:\n"
        f"  - alert: Big\n    expr: |\n{expr}      > 1\n    labels: {{severity: critical}}\n"
        f"  - alert: Small\n    expr: |\n{expr}      <= 1\n    labels: {{severity: warning}}\n")
    (tmp_path / "alertmanager.yml").write_text("route:\n  receiver: r\n")
    catalogue = AlertCatalogue(tmp_path)
    assert [catalogue.alert_for("model_update", v)["alert"] for v in (0, 1, 2)] == ["Small", "Small", "Big"]
    assert catalogue.alert_for("model_update")["alert"] == "Big"


# ---------------------------------------------------------------------------------- the narration


def _layer(share: float, agreement: float | None = None) -> dict:
    return {"layer": 1, "share_above": share, "cutoff": 0.8, "benign_fraction": 0.1, "pairs": 240,
            "effective_users": 90.0, "p_adjusted": 0.5, "agreement": agreement, "agreement_se": 0.05,
            "agreement_p_adjusted": 0.9, "served_ratio": None}


def _drift(paired: dict | None) -> dict:
    return {"what": "drift", "kind": "model_update", "model_version": "new", "reference_version": "old",
            "dimension": "history_length", "cohort": "50-199", "drifting": True, "paired": paired,
            "series": [{"statistic": "topk_mass", "layer": 1, "drifting": True, "score": 0.657, "threshold": 0.65,
                        "p_value": 1e-4, "p_adjusted": 1e-3}]}


def _narrator(verdicts: list[dict]):
    from monitor.tools.demo import Narrator

    live = SimpleNamespace(snapshot=lambda: {"verdicts": verdicts})
    out = io.StringIO()
    agent = SimpleNamespace(pipeline=SimpleNamespace(live=live))
    return Narrator(agent, None, None, (), AlertCatalogue(), out, time.monotonic()), out


def test_the_demo_names_the_warning_route_for_a_drift_the_paired_comparison_judged_and_does_not_confirm():
    narrator, out = _narrator([])
    narrator._change(_drift({"status": "does not confirm", "layers": [_layer(0.0, 0.34)]}))
    text = out.getvalue()
    assert "paired comparison does not confirm a model-caused change" in text
    assert ("would fire: alert AttentionDriftAfterModelUpdate (severity warning, after 1m) -> Alertmanager route "
            'severity="warning" -> receiver oncall-warning: does not page') in text
    assert "oncall-critical" not in text and narrator.paged == []


def test_the_demo_tells_the_update_alert_move_between_page_and_warning_as_the_paired_verdict_comes():
    verdicts: list[dict] = []
    narrator, out = _narrator(verdicts)
    narrator._change(_drift(None))  # no paired verdict yet: pages
    assert "paired comparison: no verdict yet" in out.getvalue() and "receiver oncall-critical" in out.getvalue()
    assert narrator.paged == ["AttentionDriftAfterModelUpdate history_length=50-199 new"]

    # 0 -> 1: the paired comparison judged without confirming (no change-log entry: read from the snapshot)
    narrator._paired_judged()
    assert "judged, does not confirm" not in out.getvalue()  # nothing judged yet
    verdicts.append({**_drift({"status": "does not confirm", "layers": [_layer(0.0, 0.34)]}), "final": False})
    narrator._paired_judged()
    told = out.getvalue().split("judged, does not confirm a model-caused change: history_length=50-199")[1]
    assert ("its value is now 1: AttentionDriftAfterModelUpdate (critical) ends; would fire: alert "
            "AttentionDriftAfterModelUpdate (severity warning") in told
    narrator._paired_judged()  # told once
    assert out.getvalue().count("its value is now 1") == 1

    # 1 -> 2: it confirms: pages again
    narrator._change({"what": "paired", "model_version": "new", "previous_version": "old",
                      "dimension": "history_length", "cohort": "50-199", "model_caused": True,
                      "layers": [_layer(0.62, 0.12)]})
    assert ("its value is now 2: AttentionDriftAfterModelUpdate (warning) ends; would fire: alert "
            "AttentionDriftAfterModelUpdate (severity critical") in out.getvalue()
    assert len(narrator.paged) == 2


def test_a_confirmation_of_a_drift_already_paged_is_told_as_such():
    narrator, out = _narrator([])
    narrator._change(_drift(None))
    narrator._change({"what": "paired", "model_version": "new", "previous_version": "old",
                      "dimension": "history_length", "cohort": "50-199", "model_caused": True,
                      "layers": [_layer(0.9)]})
    assert "confirms the AttentionDriftAfterModelUpdate page above (its value 2: paired confirms)" in out.getvalue()
    assert len(narrator.paged) == 1


def test_a_first_flagged_paired_window_pages_as_a_confirmation_on_its_way():
    """A harmful update's cohort may drift when its paired comparison has flagged one window: not
    confirmed yet, but the alert's value is 2 (the demo's context cut), so it pages; a judged window
    that flagged nothing is the warning."""
    narrator, out = _narrator([])
    narrator._change(_drift({"status": "does not confirm", "layers": [{**_layer(0.93, 0.17), "flagged": True}]}))
    text = out.getvalue()
    assert "severity critical" in text and "severity warning" not in text
    assert "a second flagged window in a row confirms; the alert is critical meanwhile" in text
    assert narrator.paged == ["AttentionDriftAfterModelUpdate history_length=50-199 new"]
    narrator, out = _narrator([])
    narrator._change(_drift({"status": "does not confirm", "layers": [{**_layer(0.0, 0.34), "flagged": False}]}))
    assert "a second flagged window" not in out.getvalue() and "severity warning" in out.getvalue()
    assert narrator.paged == []


def test_a_paired_window_flagged_after_the_warning_turns_it_into_a_page():
    """Told as a warning (judged, nothing flagged); the next window flags: the page, read from the
    snapshot, as no confirmation is in the change log yet."""
    verdicts: list[dict] = []
    narrator, out = _narrator(verdicts)
    narrator._change(_drift({"status": "does not confirm", "layers": [{**_layer(0.0, 0.34), "flagged": False}]}))
    assert narrator.paged == []
    verdicts.append({**_drift({"status": "does not confirm", "layers": [{**_layer(0.9, 0.15), "flagged": True}]}),
                     "final": False})
    narrator._paired_judged()
    told = out.getvalue().split("flags a model-caused change in its last window, not yet confirmed")[1]
    assert ("its value is now 2: AttentionDriftAfterModelUpdate (warning) ends; would fire: alert "
            "AttentionDriftAfterModelUpdate (severity critical") in told
    assert narrator.paged == ["AttentionDriftAfterModelUpdate history_length=50-199 new"]
    narrator._paired_judged()  # told once
    assert out.getvalue().count("its value is now 2") == 1
