"""The daemon's exit status: an exception in the agent's loop exits 1 with its cause, never 0."""

from __future__ import annotations

import logging

from monitor import cli


def test_an_agent_failure_makes_the_daemon_exit_non_zero_with_its_cause(monkeypatch, caplog):
    import monitor.stream.agent as agent_module
    import monitor.stream.kafka as kafka_module

    monkeypatch.setattr(kafka_module, "DeadLetterSink", lambda settings: object())
    monkeypatch.setattr(agent_module, "Agent", lambda settings, source_factory, sink: object())

    def broken(agent, host, port):
        raise RuntimeError("forward process lost twice")

    monkeypatch.setattr(agent_module, "run_forever", broken)
    with caplog.at_level(logging.ERROR):
        assert cli.main(["run"]) == 1
    assert "attnmon run failed" in caplog.text and "RuntimeError: forward process lost twice" in caplog.text
