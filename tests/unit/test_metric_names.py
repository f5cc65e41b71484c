"""Dashboards and rules query only metrics the agent exports (monitor/export/metrics.py).

Metric names are read out of the PromQL text: string literals, label matchers,
grouping label lists and range brackets are blanked first, then every identifier
that is not a function call or a keyword is a metric name. Histogram series
(``_bucket``, ``_sum``, ``_count``) count as their family. Names with a colon are
recording rules and must be defined in alerts/attnmon.rules.yml.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from monitor.tools.grafana import BUILTIN_VARIABLES, dashboard_queries, promql_of, recording_rules, rule_expressions
from monitor.export.metrics import all_metric_names

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "dashboards"
RULES = REPO / "alerts" / "attnmon.rules.yml"

KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?=\s*([({\[)\s,]|$))")
_HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")


def metric_names(expr: str) -> set[str]:
    """Metric (and recording rule) names a PromQL expression selects."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("{}", text)
    text = _GROUPING.sub("", text)  # "sum by (a) (x)" -> "sum (x)": a call
    text = _RANGE.sub("[]", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, follower = match.group(1), match.group(2)
        if follower == "(" or name.lower() in KEYWORDS:
            continue  # a function call, an aggregation, or an operator
        names.add(name)
    return names


def family(name: str, known: set[str]) -> str:
    """attnmon_x_bucket -> attnmon_x when attnmon_x is a known histogram family."""
    stripped = _HISTOGRAM_SERIES.sub("", name)
    return stripped if stripped != name and stripped in known else name


def unknown_names(exprs: list[tuple[str, str]]) -> list[str]:
    known = all_metric_names()
    recorded = recording_rules(RULES)
    problems = []
    for where, expr in exprs:
        for name in sorted(metric_names(promql_of(expr))):
            if ":" in name:
                if name not in recorded:
                    problems.append(f"{where}: recording rule {name} is not defined in {RULES.name}")
            elif name != "up" and family(name, known) not in known:
                problems.append(f"{where}: {name} is not exported (monitor/export/metrics.py)")
    return problems


def annotation_queries() -> list[tuple[str, str]]:
    """PromQL inside the rules' annotation templates (printf `...` | query), %s filled in."""
    document = yaml.safe_load(RULES.read_text())
    out = []
    for group in document["groups"]:
        for rule in group["rules"]:
            for key, text in rule.get("annotations", {}).items():
                for query in re.findall(r"printf `([^`]*)`", text):
                    out.append((f"{rule['alert']} annotation {key}", query.replace("%s", "x")))
    return out


def test_the_parser_finds_metrics_and_skips_functions_labels_and_strings() -> None:
    expr = (
        'histogram_quantile(0.5, sum by (job, le) (rate(attnmon_attention_entropy_ratio_bucket{cohort=~"a|b"}[5m])))'
        ' > 0.8 and on (job) up{job="attnmon"} == 1 or absent(foo_total) unless label_replace(bar, "x", "$1", "y", "(.*)")'
        " + cohort_layer:x:p50_rate5m offset 5m + sum without (instance) (baz) / 1e-3"
    )
    assert metric_names(expr) == {
        "attnmon_attention_entropy_ratio_bucket", "up", "foo_total", "bar", "cohort_layer:x:p50_rate5m", "baz",
    }  # fmt: skip
    assert metric_names(promql_of("label_values(attnmon_model_info{model_version=~\"$v\"}, label)")) == {
        "attnmon_model_info"
    }


def test_dashboards_query_only_exported_metrics_and_defined_recording_rules() -> None:
    queries = dashboard_queries(DASHBOARDS)
    assert len(queries) > 30, "expected the three dashboards' queries"
    assert not unknown_names([(f"{d} / {where}", expr) for d, where, expr in queries])


def test_rules_query_only_exported_metrics() -> None:
    assert not unknown_names([(f"rule {name}", expr) for name, expr in rule_expressions(RULES)])


def test_alert_annotation_queries_use_only_exported_metrics() -> None:
    queries = annotation_queries()
    assert queries, "the drift and pipeline alerts render numbers from queries"
    assert not unknown_names(queries)


def test_every_dashboard_uses_recording_rules_that_exist() -> None:
    used = {n for _, _, e in dashboard_queries(DASHBOARDS) for n in metric_names(promql_of(e)) if ":" in n}
    assert used, "the dashboards read the p50/p90 recording rules"
    assert used <= recording_rules(RULES)


def _dashboards() -> list[tuple[str, dict]]:
    return [(p.stem, json.loads(p.read_text())) for p in sorted(DASHBOARDS.glob("*.json"))]


@pytest.mark.parametrize(("name", "dashboard"), _dashboards(), ids=[n for n, _ in _dashboards()])
def test_dashboard_variables_are_defined_and_used_as_regex_matchers(name: str, dashboard: dict) -> None:
    defined = {v["name"] for v in dashboard["templating"]["list"]} | set(BUILTIN_VARIABLES)
    for _, where, expr in (q for q in dashboard_queries(DASHBOARDS) if q[0] == name):
        for variable in re.findall(r"\$\{?([A-Za-z_]\w*)", expr):
            assert variable in defined, f"{name} / {where}: ${variable} is not a dashboard variable"
        # Multi-value variables expand to a|b, which only a regex matcher accepts.
        for matcher in re.findall(r'\w+\s*(!?[=~]+)\s*"[^"]*\$(?!__)', expr):
            assert matcher in ("=~", "!~"), f"{name} / {where}: a variable in a {matcher} matcher"


@pytest.mark.parametrize(("name", "dashboard"), _dashboards(), ids=[n for n, _ in _dashboards()])
def test_dashboard_shape(name: str, dashboard: dict) -> None:
    assert dashboard["uid"] == f"attnmon-{name}"
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]
    # Every dashboard marks model updates at the time the agent recorded for them.
    updates = [a for a in dashboard["annotations"]["list"] if "attnmon_model_update_timestamp_seconds" in a.get("expr", "")]
    assert updates and updates[0]["useValueForTime"] is True


def test_the_exported_names_list_every_metric_the_agent_registers() -> None:
    """``all_metric_names`` is what rules and dashboards are checked against: a metric
    registered but missing there could not be used in a rule without failing this suite."""
    from prometheus_client import CollectorRegistry

    from monitor.export.metrics import AgentMetrics

    registry = CollectorRegistry()
    AgentMetrics(registry)
    registered = set()
    for metric in registry.collect():
        name = metric.name + ("_total" if metric.type == "counter" else "")
        if metric.samples or metric.type != "histogram":
            registered.add(name)
    assert registered - all_metric_names() == set()
