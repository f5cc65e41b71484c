"""deploy/k8s: the manifests agree with the agent, the alert rules and each other.

No cluster and no tool: the YAML is read here. Schema validation with kubeconform is
tests/integration/test_k8s_manifests.py.
"""

from __future__ import annotations

import doctest
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from monitor.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
RULES = REPO / "alerts" / "attnmon.rules.yml"
PROMETHEUSRULE = K8S / "prometheusrule.yaml"
SCRIPTS = ("build_prometheusrule", "jsonschemas")


def script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"k8s_{name}", K8S / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resources() -> dict[str, dict]:
    """Kind -> resource, over every manifest in deploy/k8s (one of each kind)."""
    found: dict[str, dict] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            assert document["kind"] not in found, f"two {document['kind']}s"
            found[document["kind"]] = document
    return found


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict]:
    return resources()


def container(k8s: dict[str, dict]) -> dict:
    (only,) = k8s["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    return only


# --------------------------------------------------------------------- PrometheusRule


def test_prometheusrule_is_what_the_script_generates_from_the_rules_file() -> None:
    expected = script("build_prometheusrule").render(RULES.read_text())
    assert PROMETHEUSRULE.read_text() == expected, (
        "deploy/k8s/prometheusrule.yaml is out of date; run: make prometheusrule")


def test_prometheusrule_holds_the_rules_files_groups() -> None:
    rule = yaml.safe_load(PROMETHEUSRULE.read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_build_script_check_mode_agrees() -> None:
    result = subprocess.run([sys.executable, str(K8S / "build_prometheusrule.py"), "--check"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_render_refuses_a_rules_file_with_more_than_groups() -> None:
    render = script("build_prometheusrule").render
    with pytest.raises(ValueError, match="besides 'groups'"):
        render("groups:\n  - name: g\n    rules: []\nextra: 1\n")
    with pytest.raises(ValueError, match="exactly one"):
        render("# no groups\n")


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_examples_pass(name: str) -> None:
    results = doctest.testmod(script(name), optionflags=doctest.ELLIPSIS, report=False)
    assert results.attempted > 0 and results.failed == 0


# --------------------------------------------------------------------- the agent's view


def test_configmap_and_statefulset_env_make_valid_settings_with_the_pod_name_as_member_id(
    k8s: dict[str, dict], tmp_path: Path
) -> None:
    config = tmp_path / "attnmon.yml"
    config.write_text(k8s["ConfigMap"]["data"]["attnmon.yml"])
    env = {}
    for variable in container(k8s)["env"]:
        if variable["name"].startswith("ATTNMON__"):
            source = variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            env[variable["name"]] = "attnmon-1" if source == "metadata.name" else variable["value"]
    settings = load_settings(config, environ=env)
    assert settings.kafka.group_instance_id == "attnmon-1"
    assert settings.kafka.leave_group_on_shutdown
    assert settings.http.host == "0.0.0.0"
    # N replicas judge as one: merged windows and one elected judge, not a judgement per pod
    assert settings.scale.mode == "replica"
    scale_topics = {settings.scale.partials_topic, settings.scale.state_topic, settings.scale.control_topic}
    assert len(scale_topics) == 3 and settings.kafka.topic not in scale_topics
    assert settings.scale.judge_group_id != settings.kafka.group_id
    (port,) = container(k8s)["ports"]
    assert port["containerPort"] == settings.http.port
    volumes = {m["mountPath"]: m for m in container(k8s)["volumeMounts"]}
    assert str(settings.state.directory) in volumes and not volumes[str(settings.state.directory)].get("readOnly")
    assert str(settings.models.root) in volumes
    assert container(k8s)["args"][-1] == "/etc/attnmon/attnmon.yml" and "/etc/attnmon" in volumes


def test_probes_use_the_agents_endpoints(k8s: dict[str, dict]) -> None:
    c = container(k8s)
    (port,) = c["ports"]
    probes = {name: c[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {name: p["path"] for name, p in probes.items()} == {
        "startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    assert all(p["port"] == port["name"] for p in probes.values())


def test_pods_run_as_non_root_and_have_time_to_leave_the_group(k8s: dict[str, dict]) -> None:
    pod = k8s["StatefulSet"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert container(k8s)["securityContext"]["allowPrivilegeEscalation"] is False
    # The dead-letter producer's close (30 s) plus the LeaveGroup's connect timeout (30 s).
    assert pod["terminationGracePeriodSeconds"] >= 60


# --------------------------------------------------------------------- the resources' wiring


def test_selectors_match_the_pods(k8s: dict[str, dict]) -> None:
    statefulset = k8s["StatefulSet"]
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "StatefulSet": statefulset["spec"]["selector"]["matchLabels"],
        "PodDisruptionBudget": k8s["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        "Service": k8s["Service"]["spec"]["selector"],
    }
    for kind, selector in selectors.items():
        assert selector.items() <= labels.items(), kind
    assert statefulset["spec"]["serviceName"] == k8s["Service"]["metadata"]["name"]
    assert k8s["Service"]["spec"]["clusterIP"] == "None"
    assert k8s["PodDisruptionBudget"]["spec"]["maxUnavailable"] < statefulset["spec"]["replicas"]


def test_servicemonitor_scrapes_the_metrics_port_as_the_job_the_alerts_select(k8s: dict[str, dict]) -> None:
    monitor, service = k8s["ServiceMonitor"], k8s["Service"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # prometheus-operator names the job after the Service unless jobLabel says otherwise.
    assert "jobLabel" not in monitor["spec"]
    assert 'up{job="%s"}' % service["metadata"]["name"] in RULES.read_text()


def test_pods_carry_no_scrape_annotations(k8s: dict[str, dict]) -> None:
    # A second, annotation-based scrape would double every sum in the recording rules.
    annotations = k8s["StatefulSet"]["spec"]["template"]["metadata"].get("annotations", {})
    assert not any(key.startswith("prometheus.io/") for key in annotations)
