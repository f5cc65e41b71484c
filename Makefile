# attnmon: everyday entry points. `make test` is what CI runs (.ci/run).
#
#   make venv       .venv with the project installed editable with its dev extra, which takes
#                   in the train and tools extras too (pyproject.toml): all that demo and test use
#   make services   install the local stack (deploy/stack.sh) and start all of it
#   make test       venv + services + scenario models (trained once into var/models), pytest over tests/,
#                   then stop the services
#   make stop       stop the services
#   make demo       the agent on an embedded default tells a release story (no services): verdicts in the
#                   terminal, the live page on http://127.0.0.1:9108/ ; Ctrl-C stops it
#   make prometheusrule  rewrite deploy/k8s/prometheusrule.yaml from alerts/attnmon.rules.yml
#   make k8s-validate    kubeconform over deploy/k8s (installs it and its schemas on first use)
#
# Variables: PYTHON (python3), VENV (.venv), TESTS (tests), PYTEST_ARGS (extra
# pytest arguments, e.g. PYTEST_ARGS='-x -k kafka').

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.NOTPARALLEL:
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STACK := deploy/stack.sh
TESTS ?= tests
PYTEST_ARGS ?=

.PHONY: venv install services test stop demo prometheusrule k8s-validate

venv: $(VENV)/.installed

# Re-installs when pyproject.toml changes. `.[dev]` = pytest plus the train extra (MovieLens and
# training: the demo's quick model and replay, the scenario models) and the tools extra (report,
# explain, dashboards push, which the tests and benches exercise). The daemon alone needs no extra.
$(VENV)/.installed: pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  echo "creating $(VENV)"; \
	  $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	    echo "'$(PYTHON) -m venv' failed; on Debian run deploy/stack.sh install (it adds python3-venv)" >&2; \
	    exit 1; }; \
	fi
	@echo "installing the project and its dependencies into $(VENV) (pip's own progress below; the first time"
	@echo "it downloads PyPI's torch with its CUDA libraries, about 3 GB: most of the set-up)"
	@# --no-compile: byte-compiling torch's thousands of modules up front costs the first run time;
	@# Python compiles what it imports, on first import.
	$(PY) -m pip install --disable-pip-version-check --no-compile --progress-bar on -e '.[dev]' \
	  | grep --line-buffered -E '^(Collecting|Downloading|Installing|Successfully)' || test $${PIPESTATUS[0]} -eq 0
	@touch $@

install:
	$(STACK) install

services: install
	$(STACK) start all

# The services are stopped whatever happens (pytest failing, Ctrl-C), and the
# exit status is pytest's (or the start-up's, if the stack did not come up).
test: install venv
	@status=0; \
	trap '$(STACK) stop all' EXIT; \
	trap 'exit 130' INT; \
	trap 'exit 143' TERM; \
	$(STACK) start all && $(PY) -m bench.scenarios && $(PY) -m pytest -q $(PYTEST_ARGS) $(TESTS) || status=$$?; \
	exit $$status

stop:
	$(STACK) stop all

# No external services: events are replayed in-process through the same agent code. The first
# run trains the story's three quick models into var/demo/models (minutes, with progress);
# later runs reuse them. DEMO_ARGS, e.g. DEMO_ARGS='--events 60000 --port 9200'.
demo: venv
	$(VENV)/bin/attnmon demo $(DEMO_ARGS)

# The PrometheusRule is generated; tests/unit/test_k8s_deploy.py fails when it is out of date.
prometheusrule:
	$(PYTHON) deploy/k8s/build_prometheusrule.py

k8s-validate:
	deploy/k8s/validate.sh install
	deploy/k8s/validate.sh check
