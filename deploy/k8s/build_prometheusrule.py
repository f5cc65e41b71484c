"""deploy/k8s/prometheusrule.yaml from alerts/attnmon.rules.yml: the same rules as a PrometheusRule.

The rules file's ``groups:`` block is copied as text, indented under ``spec:``, so the
PrometheusRule keeps its comments and layout and a rule change shows up as the same diff in
both files. ``tests/unit/test_k8s_deploy.py`` checks that the committed file is what this
writes, and that it parses to the same groups.

    python deploy/k8s/build_prometheusrule.py           # rewrite deploy/k8s/prometheusrule.yaml
    python deploy/k8s/build_prometheusrule.py --check   # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "attnmon.rules.yml"
OUT = ROOT / "deploy" / "k8s" / "prometheusrule.yaml"

HEADER = """\
# Generated from alerts/attnmon.rules.yml by deploy/k8s/build_prometheusrule.py; do not edit
# (`make prometheusrule` rewrites it). The rules, their promtool tests and their runbook live
# beside the rules file. Add the label your Prometheus' ruleSelector asks for (e.g. release: ...).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: attnmon
  labels: {app: attnmon}
spec:
"""


def render(rules_text: str) -> str:
    """The PrometheusRule for a Prometheus rules file: its ``groups:`` block under ``spec:``.

    Comments before ``groups:`` (the file's own header) are left out; everything from it on is
    kept, indented by two spaces. The file must hold nothing but ``groups``.

    >>> print(render("# header\\ngroups:\\n  - name: g\\n    rules: []\\n"), end="")  # doctest: +ELLIPSIS
    # Generated from ...
    spec:
      groups:
        - name: g
          rules: []
    """
    lines = rules_text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("groups:")]
    if len(starts) != 1:
        raise ValueError("the rules file must have exactly one top-level 'groups:' key")
    body = lines[starts[0]:]
    for line in lines[: starts[0]] + body[1:]:
        if line and not line[0].isspace() and not line.startswith("#"):
            raise ValueError(f"the rules file has a top-level key besides 'groups': {line!r}")
    return HEADER + "".join(f"  {line}\n" if line.strip() else "\n" for line in body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file is out of date")
    args = parser.parse_args(argv)
    text = render(RULES.read_text())
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is out of date; run: python deploy/k8s/build_prometheusrule.py",
                  file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
