"""The dashboards and rules as data: push them to Grafana, list their PromQL, run it.

- :func:`push_dashboards` upserts ``dashboards/*.json`` into a Grafana folder through
  Grafana's HTTP API (grafana-client), for where file provisioning
  (``dashboards/provisioning/``) is not an option. ``attnmon dashboards push`` calls it.
- :func:`dashboard_queries` and :func:`rule_expressions` list every PromQL expression
  the dashboards and the rule file hold, so tests can check them (metric names exist,
  recording rules are defined) without a Grafana.
- :func:`run_queries` runs dashboard queries as instant queries against a real
  Prometheus, Grafana's variables substituted, so a live test can assert that every
  panel returns data.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "GrafanaPushError",
    "PromQLError",
    "dashboard_queries",
    "load_dashboards",
    "promql_of",
    "push_dashboards",
    "recording_rules",
    "rule_expressions",
    "run_queries",
]

# What Grafana's built-in interval variables become outside Grafana: a rate window
# covering several scrapes, the default step, the default time range.
BUILTIN_VARIABLES: Mapping[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
# ``$name``, ``${name}``, ``${name:format}`` and the deprecated ``[[name]]`` (not ``$1``,
# label_replace's capture reference).
_VARIABLE = re.compile(r"\$\{([A-Za-z_]\w*)(?::\w+)?\}|\$([A-Za-z_]\w*)|\[\[([A-Za-z_]\w*)(?::\w+)?\]\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*)\)\s*$", re.S)
_FOLDER_UID = re.compile(r"[^A-Za-z0-9_-]+")


class GrafanaPushError(RuntimeError):
    """Grafana refused or could not be reached; the message says which call and why."""


class PromQLError(RuntimeError):
    """Prometheus rejected a query (or could not be reached)."""


# ---------------------------------------------------------------------------------- push


def load_dashboards(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every ``*.json`` dashboard in ``directory`` (sorted), checked for a uid and a title."""
    directory = Path(directory)
    if not directory.is_dir():
        raise GrafanaPushError(f"dashboard directory not found: {directory}")
    out = []
    for path in sorted(directory.glob("*.json")):
        try:
            dashboard = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise GrafanaPushError(f"{path}: not valid JSON: {error}") from error
        if not isinstance(dashboard, dict) or not dashboard.get("uid") or not dashboard.get("title"):
            raise GrafanaPushError(f"{path}: a dashboard needs a 'uid' and a 'title'")
        out.append((path, dashboard))
    return out


def push_dashboards(
    url: str,
    token: str | None,
    directory: Path,
    folder: str = "attnmon",
    basic_auth: tuple[str, str] | None = None,
    *,
    timeout: float = 10.0,
) -> list[str]:
    """Create ``folder`` if missing and upsert every dashboard of ``directory`` into it.

    Args:
        url: Grafana's base URL, e.g. ``http://grafana:3000`` (a sub-path is kept).
        token: service-account token (sent as a bearer token), or None.
        directory: folder of dashboard JSON files (``dashboards/``).
        folder: title of the Grafana folder; found by title, else created.
        basic_auth: (user, password) instead of a token.
        timeout: seconds per HTTP request.

    Returns:
        The uids of the pushed dashboards, in file-name order.

    Raises:
        GrafanaPushError: on any HTTP failure or unreadable dashboard, before or during the push.
    """
    from grafana_client import GrafanaApi  # imported here: only this command needs it

    dashboards = load_dashboards(directory)  # fail on a bad file before touching Grafana
    if not dashboards:
        raise GrafanaPushError(f"no dashboards (*.json) in {directory}")
    credential: str | tuple[str, str] | None = basic_auth if basic_auth is not None else token
    api = GrafanaApi.from_url(url, credential=credential, timeout=timeout)
    folder_uid = _ensure_folder(api, url, folder)
    pushed = []
    for path, dashboard in dashboards:
        payload = {
            # id None: match by uid, so the same file lands on the same dashboard in any Grafana.
            "dashboard": {**dashboard, "id": None},
            "folderUid": folder_uid,
            "overwrite": True,
            "message": f"attnmon dashboards push ({path.name})",
        }
        _call(url, f"save dashboard {dashboard['uid']!r} from {path.name}", api.dashboard.update_dashboard, payload)
        pushed.append(str(dashboard["uid"]))
    return pushed


def _ensure_folder(api: Any, url: str, title: str) -> str:
    """The uid of the top-level folder titled ``title``, created if there is none."""
    for existing in _call(url, "list folders", api.folder.get_all_folders):
        if existing.get("title") == title:
            return str(existing["uid"])
    uid = _FOLDER_UID.sub("-", title).strip("-")[:40] or "attnmon"
    created = _call(url, f"create folder {title!r}", api.folder.create_folder, title, uid=uid)
    return str(created["uid"])


def _call(url: str, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one grafana-client call; any failure becomes a GrafanaPushError that says what and why."""
    import niquests
    from grafana_client.client import GrafanaException

    try:
        return function(*args, **kwargs)
    except GrafanaException as error:
        status = f"HTTP {error.status_code}" if error.status_code else "no response"
        raise GrafanaPushError(f"Grafana at {url}: could not {what}: {status}: {error.message}") from error
    except niquests.exceptions.RequestException as error:
        raise GrafanaPushError(f"Grafana at {url}: could not {what}: {error}") from error


# ---------------------------------------------------------------------------------- listing


def dashboard_queries(directory: Path) -> list[tuple[str, str, str]]:
    """Every PromQL expression of every dashboard: (dashboard file stem, where, expr).

    ``where`` is the panel title, ``variable <name>`` for a query variable (its
    ``label_values(...)`` text as written) or ``annotation <name>``.
    """
    out: list[tuple[str, str, str]] = []
    for path, dashboard in load_dashboards(Path(directory)):
        name = path.stem
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("type") != "query":
                continue
            query = variable.get("query")
            if isinstance(query, dict):
                query = query.get("query")
            if query:
                out.append((name, f"variable {variable['name']}", str(query)))
        for annotation in dashboard.get("annotations", {}).get("list", []):
            if annotation.get("expr"):
                out.append((name, f"annotation {annotation['name']}", str(annotation["expr"])))
        for panel in _panels(dashboard.get("panels", [])):
            for target in panel.get("targets", []):
                if target.get("expr") and not target.get("hide"):
                    out.append((name, str(panel.get("title", "")), str(target["expr"])))
    return out


def _panels(panels: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def rule_expressions(path: Path) -> list[tuple[str, str]]:
    """(alert or record name, expr) of every rule in a Prometheus rule file."""
    document = yaml.safe_load(Path(path).read_text())
    return [
        (str(rule.get("alert") or rule.get("record")), str(rule["expr"]))
        for group in document.get("groups", [])
        for rule in group.get("rules", [])
    ]


def recording_rules(path: Path) -> set[str]:
    """Names of the recording rules a rule file defines."""
    document = yaml.safe_load(Path(path).read_text())
    return {str(r["record"]) for g in document.get("groups", []) for r in g.get("rules", []) if "record" in r}


# ---------------------------------------------------------------------------------- running


def promql_of(query: str, values: Mapping[str, str] | None = None) -> str:
    """A dashboard query as plain PromQL.

    Grafana variables become ``values[name]`` (default ``.+``: dashboards use them in
    ``=~`` matchers), the built-in intervals become :data:`BUILTIN_VARIABLES`, and a
    variable query ``label_values(selector, label)`` becomes ``group by (label) (selector)``.
    """
    values = dict(values or {})

    def replace(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name in values:
            return values[name]
        if name in BUILTIN_VARIABLES:
            return BUILTIN_VARIABLES[name]
        return ".+"

    expr = _VARIABLE.sub(replace, query)
    label_values = _LABEL_VALUES.match(expr)
    if label_values:
        selector, _, label = label_values.group(1).rpartition(",")
        if not selector.strip():
            raise PromQLError(f"label_values without a metric cannot be run as a query: {query!r}")
        expr = f"group by ({label.strip()}) ({selector.strip()})"
    return expr


def run_queries(
    prometheus_url: str,
    queries: Iterable[str],
    time: float | None = None,
    values: Mapping[str, str] | None = None,
    *,
    timeout: float = 10.0,
) -> dict[str, int]:
    """Run each dashboard query as an instant query; {query as written: number of results}.

    ``values`` fixes variables (e.g. ``{"model_version": "sasrec-..."}``); others match
    anything. A scalar or string result counts as 1. Raises PromQLError naming the query
    on the first one Prometheus rejects.
    """
    endpoint = prometheus_url.rstrip("/") + "/api/v1/query"
    counts: dict[str, int] = {}
    for query in queries:
        expr = promql_of(query, values)
        form: dict[str, str] = {"query": expr}
        if time is not None:
            form["time"] = f"{time:.3f}"
        request = urllib.request.Request(endpoint, data=urllib.parse.urlencode(form).encode(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("error", detail)
            except ValueError:
                pass
            raise PromQLError(f"Prometheus rejected {expr!r} (from {query!r}): HTTP {error.code}: {detail}") from error
        except OSError as error:
            raise PromQLError(f"Prometheus at {prometheus_url} did not answer {expr!r}: {error}") from error
        data = body.get("data", {})
        result = data.get("result", [])
        counts[query] = len(result) if data.get("resultType") in ("vector", "matrix") else 1
    return counts
