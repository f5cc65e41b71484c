"""A cohort's users all watch the same three titles: on-call hears of it, with the titles.

The ``item_burst`` scenario (``bench/scenarios.py``: from the switch point every android
event ends its history with three viral titles; one model throughout) is replayed into the
real Kafka broker; `attnmon run` judges it, the stack's real Prometheus scrapes the agent and
evaluates ``AttentionNarrowedToFewItems``, and the real Alertmanager routes the notification
to this test's webhook (the set-up of ``test_alert_path.py``, whose fixtures it reuses). The
notification received is kept in ``var/artifacts/item-narrowing-notification.json``.
"""

from __future__ import annotations

import json
import time

import pytest

from bench import scenarios
from e2e.test_alert_path import (
    REPO,
    _events,
    _query,
    _wait,
    agent_for,
    models,
    traffic,
    webhook,
)

pytestmark = pytest.mark.timeout(900)
FIXTURES = (agent_for, models, traffic, webhook)  # test_alert_path's, requested by name below

ARTIFACT = REPO / "var" / "artifacts" / "item-narrowing-notification.json"


def test_viral_titles_in_one_cohort_page_with_their_titles(agent_for, models, traffic, webhook, prometheus_url):
    root, versions = models
    scenario = scenarios.build_scenario("item_burst", versions)
    burst = scenario.burst
    assert burst is not None
    from model.data import load_movielens  # the catalogue's own titles, not a copy in the test
    catalog = load_movielens().catalog
    titles = [catalog.titles[catalog.index_of(item)] for item in burst.items]
    agent = agent_for()
    began = time.time()
    switch_at = agent.replay(_events(traffic, root, scenario, seed=4))
    base = versions["base"]
    found = _wait(lambda: webhook.alerts("AttentionNarrowedToFewItems", began, model_version=base,
                                         dimension=burst.field, cohort=burst.value), 300,
                  "no AttentionNarrowedToFewItems notification for the burst cohort", every=2.0)
    arrived, payload, alert = found[0]
    assert payload["receiver"] == "oncall-warning"
    assert alert["labels"]["severity"] == "warning"
    assert alert["labels"]["kind"] == "within_version"  # traffic: the model did not change
    description = alert["annotations"]["description"]
    missing = [t for t in titles if t not in description]
    assert not missing, f"titles {missing} not in the annotation: {description}"
    for item in burst.items:
        assert f"[{item}]" in description
    assert "Within model" in description and "?" not in description.split("Top items now")[0]
    # Traffic did it, not a model update: no update alert for the version.
    assert not _query(prometheus_url, f'ALERTS{{alertname="AttentionDriftAfterModelUpdate",model_version="{base}"}}')
    delay = arrived - switch_at
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps({"delay_s": round(delay, 1), "payload": payload}, indent=1))
    print(f"\nitem burst -> notification in {delay:.0f}s; saved {ARTIFACT}")
