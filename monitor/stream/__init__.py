"""From Kafka records to folded state: the stream side of the agent.

Event decoding (``events``), the Kafka source and producers (``kafka``, the only
module in attnmon that imports kafka-python), an in-process source of the same
shape (``memory``), committable offsets (``offsets``), checkpointed state
(``state``), and the pipeline (``pipeline``) that orchestrates one batch: intake
and the hold buffer (``intake``), each event's window and its forward passes
(``windows``), the fold into metrics and the judge (``fold``), model updates and
their paired recompute (``updates``). The long-running agent loop (``agent``)
polls, folds, judges, checkpoints and commits.
"""
