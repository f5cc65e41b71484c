"""The alert rules and the Alertmanager config: valid, unit-tested, documented, routed.

promtool and amtool come from the Debian packages (deploy/stack.sh install); the
``promtool``/``amtool`` fixtures skip these tests when the tools are missing, and
fail them under CI=true.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "alerts"
RULES = ALERTS / "attnmon.rules.yml"
RULE_TESTS = ALERTS / "attnmon.rules.test.yml"
ALERTMANAGER = ALERTS / "alertmanager.yml"
RUNBOOK = REPO / "docs" / "runbook.md"


def run(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


def alert_rules() -> list[dict]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


ALERT_NAMES = [rule["alert"] for rule in alert_rules()]


# ---------------------------------------------------------------------------------- tools


def test_promtool_check_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    # Run from alerts/ so the test file's rule_files path resolves as written.
    result = run(promtool, "test", "rules", RULE_TESTS.name, cwd=ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_check_config(amtool: str) -> None:
    result = run(amtool, "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=AttentionDriftAfterModelUpdate"], "oncall-critical"),
        (["severity=warning", "alertname=AttentionDriftAfterModelUpdate"], "oncall-warning"),
        (["severity=warning", "alertname=AttentionDriftWithinVersion"], "oncall-warning"),
        (["alertname=SomethingWithoutSeverity"], "oncall-warning"),
    ],
)
def test_alertmanager_routes_by_severity(amtool: str, labels: list[str], receiver: str) -> None:
    result = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [receiver]


# ---------------------------------------------------------------------------------- content


@pytest.mark.parametrize("rule", alert_rules(), ids=ALERT_NAMES)
def test_every_alert_is_labelled_and_documented(rule: dict) -> None:
    labels, annotations = rule["labels"], rule["annotations"]
    # A literal severity, or a template choosing between literals (promtool tests render it).
    severity = labels["severity"]
    outcomes = set(re.findall(r"\}\}(\w+)\{\{", severity)) if "{{" in severity else {severity}
    assert outcomes and outcomes <= {"critical", "warning"}
    assert labels["team"] == "recsys-oncall"
    assert {"summary", "description", "runbook", "runbook_url"} <= set(annotations)
    anchor = annotations["runbook_url"].removeprefix("docs/runbook.md#")
    assert anchor == rule["alert"].lower(), annotations["runbook_url"]
    if rule["alert"].startswith("Attention"):  # cohort alerts name version and cohort
        for label in ("model_version", "dimension", "cohort"):
            assert f"$labels.{label}" in annotations["summary"], label


def test_the_update_alert_pages_unless_the_paired_comparison_judged_without_confirming() -> None:
    """AttentionDriftAfterModelUpdate: one expression, whose value is the paired state (0 not
    judged, 1 judged, not confirming, nothing flagged, 2 confirms or its last window flagged), split by its last comparison into a
    critical rule (0 and 2) and a warning rule (1); the promtool cases pin the behaviour."""
    rules = [rule for rule in alert_rules() if rule["alert"] == "AttentionDriftAfterModelUpdate"]
    by_severity = {rule["labels"]["severity"]: rule for rule in rules}
    assert len(rules) == 2 and set(by_severity) == {"critical", "warning"}

    def split(expr: str) -> tuple[str, str]:
        lines = [line.strip() for line in expr.strip().splitlines()]
        filters = [line for line in lines if re.fullmatch(r"(==|!=)\s*1", line)]
        assert len(filters) == 1, expr
        return "\n".join(line for line in lines if line not in filters), filters[0].replace(" ", "")

    critical, warning = split(by_severity["critical"]["expr"]), split(by_severity["warning"]["expr"])
    assert critical[0] == warning[0], "the two rules must share the expression but for the value filter"
    assert (critical[1], warning[1]) == ("!=1", "==1")
    assert by_severity["warning"]["for"] == by_severity["critical"]["keep_firing_for"] == "1m"
    assert "does not confirm" in by_severity["warning"]["annotations"]["summary"]
    assert "49 of 50" in by_severity["warning"]["annotations"]["description"]
    # Alertmanager: the page covers the warning of the same cohort while both fire (1 -> 2).
    inhibit = yaml.safe_load(ALERTMANAGER.read_text())["inhibit_rules"]
    assert {
        "source_matchers": ['alertname="AttentionDriftAfterModelUpdate"', 'severity="critical"'],
        "target_matchers": ['alertname="AttentionDriftAfterModelUpdate"', 'severity="warning"'],
        "equal": ["model_version", "dimension", "cohort"],
    } in inhibit
    assert not any(r["source_matchers"] == ['alertname="AttentionDriftAfterModelUpdate"', 'severity="warning"']
                   for r in inhibit), "the warning must not hold back the page"


def test_alerts_sharing_a_name_differ_in_severity() -> None:
    seen: dict[str, set[str]] = {}
    for rule in alert_rules():
        severities = seen.setdefault(rule["alert"], set())
        assert rule["labels"]["severity"] not in severities, f"two {rule['alert']} rules of one severity"
        severities.add(rule["labels"]["severity"])


def test_runbook_has_a_section_per_alert() -> None:
    headings = re.findall(r"^## (\S+)\s*$", RUNBOOK.read_text(), re.M)
    anchors = {h.lower() for h in headings}  # GitHub's anchor of a one-word heading
    missing = [name for name in ALERT_NAMES if name.lower() not in anchors]
    assert not missing, f"docs/runbook.md has no section for {missing}"


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    document = yaml.safe_load(RULE_TESTS.read_text())
    fires, silent = set(), set()
    for case in document["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    assert set(ALERT_NAMES) <= fires, f"no firing case: {set(ALERT_NAMES) - fires}"
    assert set(ALERT_NAMES) <= silent, f"no not-firing case: {set(ALERT_NAMES) - silent}"


def test_alertmanager_inhibitions_name_real_alerts_and_receivers_stay_on_loopback() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    assert config["route"]["group_by"] == ["alertname", "model_version", "dimension", "cohort"]
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            name, op, value = re.fullmatch(r'(\w+)\s*(=~|=)\s*"(.*)"', matcher).groups()
            if name == "alertname":
                for alternative in value.split("|"):
                    assert alternative in ALERT_NAMES, f"inhibit rule names unknown alert {alternative}"
    agent_down = next(r for r in config["inhibit_rules"] if r["source_matchers"] == ['alertname="AgentDown"'])
    assert agent_down["equal"] == ["job", "instance"]
    urls = {r["name"]: r["webhook_configs"][0]["url"] for r in config["receivers"]}
    assert urls == {
        "oncall-critical": "http://127.0.0.1:19095/alerts/critical",
        "oncall-warning": "http://127.0.0.1:19095/alerts/warning",
    }
