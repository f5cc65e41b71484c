"""The live page at ``/``: a server-rendered HTML view of a :mod:`monitor.export.live` snapshot.

No script, no external resource: inline SVG for the charts and the heatmap, a
``<meta http-equiv="refresh">`` to follow the agent, and ``/api/state`` for the same
snapshot as JSON. Every string that can come from events (cohort labels, user and event
ids, model versions, item titles) goes through :func:`html.escape`.

Sections: the judge's verdicts (score, threshold, p-values), the latest model update's
paired comparison, the statistics of every cohort over time against the reference the
judge holds, a recent event's attention heatmap (as ``attnmon explain`` computes it),
and the items that collect the most attention per cohort (layer 0), now and in the reference.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

REFRESH_S = 5
_SPARK_W, _SPARK_H = 150, 36

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em 2em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;
vertical-align:top}th{background:#eee}.num{text-align:right;font-variant-numeric:tabular-nums}
.drift{background:#fdd;font-weight:bold}.ok{color:#276}.muted{color:#777}.conf{color:#a00;font-weight:bold}
svg{display:block}pre{background:#fff;border:1px solid #ddd;padding:.5em;overflow:auto;font-size:12px}
.legend span{margin-right:1.2em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}"


def render(state: dict[str, Any], *, title: str = "attnmon") -> str:
    """The whole page for one snapshot."""
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="refresh" content="{REFRESH_S}">',
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(title)}: attention monitor</h1>",
        f'<p class=muted>judge round {_e(state.get("round", 0))} · {int(state.get("events", 0)):,} events '
        f"folded · refreshes every {REFRESH_S}s · <a href=/api/state>/api/state</a> · <a href=/metrics>/metrics</a></p>",
        _story(state.get("story")),
        _verdicts(state.get("verdicts") or []),
        _update(state.get("update")),
        _series(state.get("series") or [], state.get("statistics") or []),
        _heatmap(state.get("heatmap")),
        _top_items(state.get("top_items")),
        "</body></html>",
    ]
    return "\n".join(parts)


def _story(story: dict | None) -> str:
    if not story:
        return ""
    phases = "".join(
        f"<li{' class=drift' if p.get('current') else ''}>{_e(p['title'])}: {_e(p['description'])}</li>"
        for p in story.get("phases", []))
    return f"<h2 id=story>The demo's story</h2><ol>{phases}</ol>"


def _verdicts(verdicts: Sequence[dict]) -> str:
    rows = []
    for v in verdicts:
        series = v.get("series") or []
        top = series[0] if series else None
        paired = v.get("paired")
        paired_text = "-" if paired is None else paired["status"]
        cls = " class=drift" if v["drifting"] else ""
        state = ("DRIFTING" if v["drifting"] else "stable") + (" (final)" if v.get("final") else "")
        named = [f"{s} L{layer}" for s, layer in v.get("drifting_series", [])]
        drifting = (f"{len(named)}: " + ", ".join(named[:3]) + (", …" if len(named) > 3 else "")) if named else "-"
        rows.append(
            f"<tr{cls} data-cohort=\"{_e(v['dimension'])}={_e(v['cohort'])}\"><td>{_e(v['dimension'])}="
            f"{_e(v['cohort'])}</td><td>{_e(v['kind'])}</td><td>{_e(v['model_version'])}</td>"
            f"<td>{_e(v['reference_version'])}</td><td>{state}</td><td>{_e(drifting)}</td>"
            + (f"<td>{_e(top['statistic'])} L{_e(top['layer'])}</td><td class=num>{_num(top['score'])}</td>"
               f"<td class=num>{_num(top['threshold'], 2)}</td><td class=num>{_p(top['p_value'])}</td>"
               f"<td class=num>{_p(top['p_adjusted'])}</td>" if top else "<td colspan=5>-</td>")
            + f"<td>{_e(paired_text)}</td></tr>")
    if not rows:
        body = "<p id=verdicts class=muted>No verdict yet: baselines are collecting.</p>"
    else:
        body = ("<table id=verdicts><tr><th>cohort</th><th>kind</th><th>version</th><th>reference</th>"
                "<th>verdict</th><th>drifting series</th><th>top series</th><th>score (JS)</th><th>threshold</th>"
                "<th>p-value</th><th>p adj. (BH)</th><th>paired</th></tr>" + "".join(rows) + "</table>")
    return "<h2>Verdicts</h2>" + body


def _update(update: dict | None) -> str:
    if not update:
        return "<h2>Latest model update</h2><p id=update class=muted>No model update seen yet.</p>"
    rows = "".join(
        f"<tr{' class=drift' if r['model_caused'] else ''}><td>{_e(r['dimension'])}={_e(r['cohort'])}</td>"
        f"<td class=num>{_e(r['layer'])}</td><td class=num>{_e(r['pairs'])}</td>"
        f"<td class=num>{_num(r['effective_users'], 0)}</td><td class=num>{_num(r['mean_js'])}</td>"
        f"<td class=num>{r['share_above']:.0%}</td><td class=num>{_p(r['p_adjusted'])}</td>"
        f"<td class=num>{'-' if r.get('agreement') is None else _num(r['agreement'])}</td>"
        f"<td class=num>{'-' if r.get('served_ratio') is None else _num(r['served_ratio'], 1) + 'x'}</td>"
        f"<td>{'CONFIRMS a model-caused change' if r['model_caused'] else 'no model-caused change'}</td></tr>"
        for r in update["results"])
    cutoff = update["results"][0] if update["results"] else None
    note = (f"rows past per-event JS {cutoff['cutoff']:.2f}, against a benign share of {cutoff['benign_fraction']:.0%}; "
            "per-event agreement of the last layer, a change below 0.2 (benign retrains: 0.31 or more); "
            "lists each version would serve there, the new ones' concentration over the previous ones', "
            "a change from 2x (benign retrains: 1.3x or less)"
            if cutoff else "no paired window judged yet (too few pairs or users)")
    return (f"<h2>Latest model update</h2><p id=update>{_e(update['new_version'])} replaced "
            f"{_e(update['previous_version'])}: paired comparison on the same events ({_e(note)}).</p>"
            + ("<table><tr><th>cohort</th><th>layer</th><th>pairs</th><th>eff. users</th><th>mean JS</th>"
               "<th>share past cutoff</th><th>p adj.</th><th>agreement</th><th>served lists</th><th>verdict</th></tr>" + rows + "</table>" if rows else ""))


def _sparkline(points: Sequence[dict], statistic: str) -> str:
    values = [p["values"].get(statistic) for p in points]
    refs = [(p.get("reference") or {}).get(statistic) for p in points]
    known = [v for v in values + refs if v is not None]
    if not known:
        return "<svg width=150 height=36></svg>"
    low, high = min(known), max(known)
    pad = max(0.02, (high - low) * 0.1)
    low, high = low - pad, high + pad
    n = max(len(points) - 1, 1)

    def xy(i: int, v: float) -> str:
        return f"{i * (_SPARK_W - 2) / n + 1:.1f},{_SPARK_H - 1 - (v - low) / (high - low) * (_SPARK_H - 2):.1f}"

    def path(series: list[float | None]) -> str:
        out, pen = [], "M"
        for i, v in enumerate(series):
            if v is None:
                pen = "M"
                continue
            out.append(pen + xy(i, v))
            pen = "L"
        return " ".join(out)

    switches = "".join(
        f'<line x1="{i * (_SPARK_W - 2) / n + 1:.1f}" y1="0" x2="{i * (_SPARK_W - 2) / n + 1:.1f}" '
        f'y2="{_SPARK_H}" stroke="#c80" stroke-width="1"/>'
        for i in range(1, len(points)) if points[i]["version"] != points[i - 1]["version"])
    last = values[-1]
    dot = ""
    if last is not None:  # the latest value, also when there is one point only
        cx, cy = xy(len(points) - 1, last).split(",")
        dot = f'<circle cx="{cx}" cy="{cy}" r="2" fill="#17c"/>'
    return (f'<svg width="{_SPARK_W}" height="{_SPARK_H}" role="img" aria-label="{_e(statistic)}">'
            f'<rect width="100%" height="100%" fill="#fff"/>{switches}'
            f'<path d="{path(refs)}" fill="none" stroke="#999" stroke-dasharray="3,2"/>'
            f'<path d="{path(values)}" fill="none" stroke="#17c" stroke-width="1.5"/>{dot}'
            f"<title>{_e(statistic)}: now {_num(last)}, reference {_num(refs[-1])}</title></svg>")


def _series(series: Sequence[dict], statistics: Sequence[str]) -> str:
    if not series:
        return "<h2>Attention statistics over time</h2><p id=series class=muted>No events folded yet.</p>"
    head = "".join(f"<th>{_e(s)}</th>" for s in statistics)
    rows = []
    for entry in series:
        points = entry["points"]
        last = points[-1]
        cells = "".join(f"<td>{_sparkline(points, s)}</td>" for s in statistics)
        rows.append(f"<tr data-cohort=\"{_e(entry['dimension'])}={_e(entry['cohort'])}\"><td>"
                    f"{_e(entry['dimension'])}={_e(entry['cohort'])}<br><span class=muted>{_e(last['version'])}"
                    f"</span></td>{cells}</tr>")
    return ("<h2>Attention statistics over time</h2><p class='legend muted'><span style='color:#17c'>── "
            "mean per judge round (last layer)</span><span>- - reference the judge compares with</span>"
            "<span style='color:#c80'>│ model version switch</span></p>"
            f"<table id=series><tr><th>cohort</th>{head}</tr>" + "".join(rows) + "</table>")


def _colour(weight: float, peak: float) -> str:
    """viridis-like ramp from dark blue to yellow."""
    t = 0.0 if peak <= 0 else max(0.0, min(1.0, weight / peak))
    stops = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]
    x = t * (len(stops) - 1)
    i = min(int(x), len(stops) - 2)
    f = x - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(stops[i], stops[i + 1]))
    return f"#{r:02x}{g:02x}{b:02x}"


def _top_items(rows: list[dict] | None) -> str:
    """Per cohort, the items collecting the most attention (layer 0): share now and in the reference."""
    head = "<h2 id=top-items>Top attended items</h2>"
    if not rows:
        return head + "<p id=top-items-empty class=muted>No cohort's item attention judged yet.</p>"
    out = [head, "<table id=top-items-table><tr><th>cohort</th><th>kind</th><th>version</th><th>top items "
           "(share now / in the reference)</th><th>top share</th><th>narrowed</th></tr>"]
    for row in rows:
        items = "; ".join(
            f"{_e(item['title'] or item['item'])} {_num(100 * item['share'], 1)}% / "
            f"{_num(100 * item['reference_share'], 1)}%" for item in row["items"])
        out.append(
            f"<tr><td>{_e(row['dimension'])}={_e(row['cohort'])}</td><td>{_e(row['kind'])}</td>"
            f"<td>{_e(row['model_version'])}</td><td>{items}</td>"
            f"<td>{_num(100 * row['top_share'], 1)}% (was {_num(100 * row['reference_top_share'], 1)}%)</td>"
            f"<td>{'NARROWED' if row['narrowed'] else 'no'}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _heatmap(heatmap: dict | None) -> str:
    if not heatmap:
        return "<h2>A recent event's attention</h2><p id=heatmap class=muted>No event explained yet.</p>"
    matrix, rows, columns = heatmap["matrix"], heatmap["rows"], heatmap["columns"]
    cell, left, top = 16, 70, 10
    peak = max((max(r) for r in matrix if r), default=1.0)
    width = left + cell * len(columns) + 10
    label_h = 170
    height = top + cell * len(rows) + label_h
    rects = []
    for i, row in enumerate(matrix):
        rects.append(f'<text x="{left - 4}" y="{top + i * cell + 12}" text-anchor="end" font-size="10">'
                     f"{_e(rows[i])}</text>")
        for j, w in enumerate(row):
            col = columns[j]
            rects.append(f'<rect x="{left + j * cell}" y="{top + i * cell}" width="{cell}" height="{cell}" '
                         f'fill="{_colour(w, peak)}"><title>{_e(rows[i])} · {_e(col["title"])} · {w:.3f}'
                         f"</title></rect>")
    base = top + cell * len(rows) + 4
    for j, col in enumerate(columns):
        x = left + j * cell + 11
        label = col["title"] if len(col["title"]) <= 26 else col["title"][:25] + "…"
        rects.append(f'<text x="{x}" y="{base}" font-size="9" transform="rotate(90 {x} {base})">{_e(label)}</text>')
    hidden = f"; {heatmap['hidden']} earlier positions hidden" if heatmap.get("hidden") else ""
    return (f"<h2>A recent event's attention</h2><p>event {_e(heatmap['event_id'])} · user "
            f"{_e(heatmap['user_id'])} · model {_e(heatmap['model_version'])} · last-position attention per layer "
            f"and head, and the head average (most recent item on the right{_e(hidden)})</p>"
            f'<svg id=heatmap width="{width}" height="{height}" role="img" aria-label="attention heatmap">'
            + "".join(rects) + "</svg>"
            f"<details><summary>as <code>attnmon explain</code> prints it</summary><pre>{_e(heatmap['text'])}</pre>"
            "</details>")
