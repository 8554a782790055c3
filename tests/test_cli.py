"""The console script's logging set-up, shared with the benchmark scripts."""

from __future__ import annotations

import logging

from attnunet.cli import configure_logging


def test_configure_logging_shows_attnunet_progress_and_only_warnings_of_other_libraries(monkeypatch):
    ours, root = logging.getLogger("attnunet"), logging.getLogger()
    monkeypatch.setattr(ours, "level", ours.level)  # restored after the test
    monkeypatch.setattr(root, "level", logging.WARNING)
    configure_logging()
    assert ours.getEffectiveLevel() == logging.INFO  # epoch and case lines shown
    assert logging.getLogger("highdicom").getEffectiveLevel() == logging.WARNING  # its chatter is not
    configure_logging(verbose=True)
    assert ours.getEffectiveLevel() == logging.DEBUG
