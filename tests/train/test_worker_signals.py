"""Unit test of the worker's hand-over from its early SIGTERM handler to the run's StopControl
(issue 15 item 14): a SIGTERM in between is a stop request, never lost."""

from __future__ import annotations

import os
import signal

from services.train import worker
from services.train.progress import StopControl


def test_a_sigterm_while_the_handlers_are_swapped_is_kept(monkeypatch):
    previous = signal.getsignal(signal.SIGTERM)
    original = StopControl.install_signal_handlers

    def install_then_sigterm(self):
        original(self)
        os.kill(os.getpid(), signal.SIGTERM)  # lands right after the run's handler is in place

    monkeypatch.setattr(StopControl, "install_signal_handlers", install_then_sigterm)
    try:
        stop = worker.stop_control(None, "t", 1, {"term": False})
        assert stop.signalled
        assert stop.poll() == "signal"
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_early_sigterm_is_carried_over():
    previous = signal.getsignal(signal.SIGTERM)
    try:
        stop = worker.stop_control(None, "t", 1, {"term": True})
        assert stop.signalled and stop.poll() == "signal"
        fresh = worker.stop_control(None, "t", 1, {"term": False})
        assert not fresh.signalled and fresh.poll() is None
    finally:
        signal.signal(signal.SIGTERM, previous)
