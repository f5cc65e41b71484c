"""deploy/k8s validates against the Kubernetes and prometheus-operator schemas, offline.

deploy/k8s/validate.sh runs kubeconform (-strict -summary) with schemas made from the
k8s.io/kubernetes and prometheus-operator modules; ``deploy/stack.sh install`` installs
them under var/k8s. Missing, these tests skip, and fail under CI=true. The broken
manifests prove the validator rejects what it should: an unknown field, a wrong type, a
custom resource missing a required field, and a kind it has no schema for.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import require_service

REPO = Path(__file__).resolve().parents[2]
VALIDATE = REPO / "deploy" / "k8s" / "validate.sh"
KINDS = {"ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"}


def validate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VALIDATE), "check", *args], capture_output=True, text=True, timeout=120,
                          check=False, cwd=REPO)


@pytest.fixture(scope="module", autouse=True)
def kubeconform() -> None:
    require_service(
        "kubeconform",
        lambda: subprocess.run([str(VALIDATE), "status"], timeout=30, check=False).returncode == 0,
        hint="deploy/stack.sh install (or deploy/k8s/validate.sh install)",
    )


def test_manifests_are_valid() -> None:
    result = validate()
    assert result.returncode == 0, result.stdout + result.stderr
    summary = re.search(r"Summary: (\d+) resources found in \d+ files - Valid: (\d+), Invalid: 0, "
                        r"Errors: 0, Skipped: 0", result.stdout)
    assert summary, result.stdout
    assert summary[1] == summary[2] == str(len(KINDS))


def test_every_kind_is_checked_against_its_schema() -> None:
    result = validate("-output", "json", "-verbose", str(REPO / "deploy" / "k8s"))
    assert result.returncode == 0, result.stdout + result.stderr
    statuses = {r["kind"]: r["status"] for r in json.loads(result.stdout)["resources"]}
    assert statuses == dict.fromkeys(KINDS, "statusValid")


BROKEN = {
    "unknown_field.yaml": ("""\
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: attnmon}
spec:
  serviceName: attnmon
  replica: 2
  selector: {matchLabels: {app: attnmon}}
  template:
    metadata: {labels: {app: attnmon}}
    spec:
      containers: [{name: attnmon, image: attnmon}]
""", "additional properties 'replica' not allowed"),
    "wrong_type.yaml": ("""\
apiVersion: v1
kind: Service
metadata: {name: attnmon}
spec:
  ports: [{name: metrics, port: "9108"}]
""", "got string, want integer"),
    "crd_field.yaml": ("""\
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: attnmon}
spec:
  selector: {matchLabels: {app: attnmon}}
  endpoints: [{port: metrics, intervall: 15s}]
""", "additional properties 'intervall' not allowed"),
    "crd_required.yaml": ("""\
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata: {name: attnmon}
spec:
  groups: [{name: attnmon.alerts, rules: [{alert: AgentDown}]}]
""", "missing property 'expr'"),
    "no_schema.yaml": ("""\
apiVersion: example.com/v1
kind: Widget
metadata: {name: attnmon}
""", "could not find schema for Widget"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_manifest_is_rejected(name: str, tmp_path: Path) -> None:
    text, error = BROKEN[name]
    (tmp_path / name).write_text(text)
    result = validate(str(tmp_path))
    assert result.returncode != 0, result.stdout
    assert error in result.stdout, result.stdout
    assert re.search(r"Valid: 0, Invalid: \d, Errors: \d, Skipped: 0", result.stdout), result.stdout


def test_a_duplicate_key_is_rejected(tmp_path: Path) -> None:
    # -strict also refuses a key given twice (YAML would keep the last one silently).
    (tmp_path / "duplicate.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, name: b}\n")
    result = validate(str(tmp_path))
    assert result.returncode != 0, result.stdout
    assert 'key "name" already set' in result.stdout, result.stdout
