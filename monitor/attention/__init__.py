"""Recomputing the served model's attention and summarising each row.

The model registry loads published versions on first use (``registry``),
recompute and the forward processes run the model's passes on length-sorted
chunks of a batch (``recompute``, ``forward``, ``allocator``), and ``stats``
turns every last-position attention row into a few numbers in [0, 1] (entropy,
max weight, Gini, ...) plus the per-event old-vs-new divergence. The model
runs here; ``stats`` itself is numpy only.
"""
