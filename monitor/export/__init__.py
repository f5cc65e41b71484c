"""What the agent shows to the outside: Prometheus metrics and HTTP endpoints.

``metrics`` defines every metric name, help text, label set and bucket list
(batch-folding collectors for the per-event statistics, scrape-time collectors
for drift verdicts); ``drift_rows`` shapes a judgement round into the rows those
collectors export; ``http`` serves ``/metrics`` through prometheus_client's own
exposition, with ``/healthz`` and ``/readyz`` beside it.
"""
