"""Judging drift from binned statistics: numpy and scipy only.

Cohorts with bounded label cardinality, fixed-bin samples per history-length
stratum (``sample``, ``strata``) with the effective number of users behind them
(``users``), baselines and recent traffic, effect sizes and the chi-square test
(``divergence``), Benjamini-Hochberg and hysteresis (``verdict``), the judge, and
the paired old-vs-new comparison. No
module here imports torch, Kafka or prometheus_client, so the judgement can be
tested, benchmarked and replayed without a model, a broker or a registry (see
docs/drift.md).
"""
