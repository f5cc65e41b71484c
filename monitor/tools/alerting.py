"""Which shipped alert a verdict would fire, and where Alertmanager would route it.

Read from the files the project ships (``alerts/attnmon.rules.yml`` and
``alerts/alertmanager.yml``), not restated here, so the demo names what production
would do. A verdict is matched to the alert whose expression *fires on* that verdict:
the first line of its ``expr`` (the term the rest joins, adds to or excludes from)
selects ``attnmon_drift_cohort_verdict`` of the verdict's kind (aggregated over replicas
or not), or, for the paired
comparison alone, tests ``attnmon_update_paired_verdict``.
Several rules may fire on one verdict kind, told apart by the alert's value: a line of the
expression that is only a comparison with a number (``!= 1``, ``== 1``) filters the value
the lines above compute. The model-update alert's value is the paired comparison's state
(``PAIRED_NONE`` 0: not judged; ``PAIRED_UNCONFIRMED`` 1: judged, not confirming, last window
unflagged; ``PAIRED_CONFIRMS`` 2: confirms, or its last window flagged), and the shipped rules
page on 0 and 2 and warn on 1. Without a value, the first rule of the kind is taken.
The route is Alertmanager's: the first child route whose matchers all match the alert's
labels (``continue`` is not used by the shipped file), else the root's receiver.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

ALERTS_DIR = Path(__file__).resolve().parents[2] / "alerts"
RULES_FILE = "attnmon.rules.yml"
ALERTMANAGER_FILE = "alertmanager.yml"
PAIRED = "paired"  # the kind of a paired-comparison-only verdict
# The model-update alert's value: what the paired comparison says about the cohort.
PAIRED_NONE, PAIRED_UNCONFIRMED, PAIRED_CONFIRMS = 0, 1, 2

_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"(.*)"\s*$')
_VALUE_FILTER = re.compile(r"^\s*(==|!=|>=|<=|>|<)\s*(-?[0-9]+(?:\.[0-9]+)?)\s*$")
_COMPARE = {"==": float.__eq__, "!=": float.__ne__, ">=": float.__ge__, "<=": float.__le__,
            ">": float.__gt__, "<": float.__lt__}


@dataclasses.dataclass(frozen=True)
class Page:
    """The alert a verdict would fire and the Alertmanager route it would take."""

    alert: str
    severity: str
    for_: str  # how long the condition must hold before the alert fires
    route: str  # the matchers of the route taken ("default" for the root)
    receiver: str

    def describe(self) -> str:
        pages = "pages on-call" if self.severity == "critical" else "does not page (ticket / chat)"
        return (f"alert {self.alert} (severity {self.severity}, after {self.for_}) -> Alertmanager route "
                f"{self.route} -> receiver {self.receiver}: {pages}")


class AlertCatalogue:
    """The shipped rules and route tree, for looking verdicts up."""

    def __init__(self, directory: Path = ALERTS_DIR) -> None:
        rules = yaml.safe_load((directory / RULES_FILE).read_text())
        self._alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
        self._route = yaml.safe_load((directory / ALERTMANAGER_FILE).read_text())["route"]

    def alerts_for(self, kind: str) -> list[dict]:
        """The rules that fire on a cohort verdict of ``kind`` (``within_version``, ``model_update``, ``paired``)."""
        # The verdict == 1, possibly aggregated first (max without (instance, pod) (...) == 1).
        selector = re.compile(re.escape("attnmon_update_paired_verdict") if kind == PAIRED
                              else re.escape(f'attnmon_drift_cohort_verdict{{kind="{kind}"}}') + r"\)?\s*== 1")
        out = []
        for rule in self._alerts:
            fires_on = next((line for line in str(rule["expr"]).splitlines() if line.strip()), "")
            if selector.search(fires_on):
                out.append(rule)
        return out

    def alert_for(self, kind: str, value: float | None = None) -> dict | None:
        """The rule that fires on a verdict of ``kind`` whose alert has ``value`` (None: any value)."""
        return next((rule for rule in self.alerts_for(kind) if value is None or _admits(rule, value)), None)

    def route_for(self, labels: dict[str, str]) -> tuple[str, str]:
        """(the matchers of the route taken, its receiver) for an alert's labels."""
        for child in self._route.get("routes", []):
            matchers = child.get("matchers", [])
            if all(_matches(m, labels) for m in matchers):
                return ", ".join(matchers), child.get("receiver", self._route["receiver"])
        return "default", self._route["receiver"]

    def page_for(self, kind: str, value: float | None = None) -> Page | None:
        """The page for a verdict of ``kind``; for ``model_update``, ``value`` is the paired state
        (``PAIRED_NONE``, ``PAIRED_UNCONFIRMED``, ``PAIRED_CONFIRMS``), which picks the rule."""
        rule = self.alert_for(kind, value)
        if rule is None:
            return None
        labels = {"alertname": rule["alert"], **{k: str(v) for k, v in rule.get("labels", {}).items()}}
        route, receiver = self.route_for(labels)
        return Page(rule["alert"], labels.get("severity", "none"), str(rule.get("for", "0s")), route, receiver)


def _admits(rule: dict, value: float) -> bool:
    """Whether the rule's value filters (lines that are only a comparison) let ``value`` through."""
    for line in str(rule["expr"]).splitlines():
        found = _VALUE_FILTER.match(line)
        if found is not None and not _COMPARE[found.group(1)](float(value), float(found.group(2))):
            return False
    return True


def _matches(matcher: str, labels: dict[str, str]) -> bool:
    found = _MATCHER.match(matcher)
    if found is None:
        raise ValueError(f"unsupported Alertmanager matcher {matcher!r}")
    name, op, value = found.groups()
    actual = labels.get(name, "")
    if op == "=":
        return actual == value
    if op == "!=":
        return actual != value
    full = re.fullmatch(value, actual) is not None
    return full if op == "=~" else not full
