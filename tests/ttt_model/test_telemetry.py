"""How the progress line reaches the console of a Ray Train run (the metric sinks are tested in
test_train_loop.py)."""

from __future__ import annotations

import builtins
import io
import logging
import sys

import pytest

# The real patch Ray Train installs on every worker (private API: if Ray moves it, this import should fail
# loudly rather than the test silently checking something else).
from ray.train.v2._internal.logging.patch_print import redirected_print

from ttt_model.training.telemetry import format_progress, log_progress

METRICS = {"loss": 2.5, "loss_ar": 1.5, "loss_diffusion": 1.0, "lr": 3e-4, "grad_norm": 0.8, "tokens_per_s": 1234.0,
           "padding_fraction": 0.05, "step_s": 0.5}


def test_progress_line_reaches_a_ray_train_worker_console_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray Train worker as the driver sees it: print patched to log to the root logger (and, because Ray
    replaced sys.stdout, to echo too); the root logger with one console handler at INFO. Both streams end
    up on the driver's console, so a printed progress line showed twice; the logged one shows once."""
    console = io.StringIO()
    monkeypatch.setattr(sys, "stdout", console)
    monkeypatch.setattr(sys, "stderr", console)
    monkeypatch.setattr(builtins, "print", redirected_print)
    root, handler = logging.getLogger(), logging.StreamHandler(console)
    monkeypatch.setattr(root, "level", logging.INFO)
    root.addHandler(handler)  # pytest's own root handlers stay: they capture records, they write no console
    try:
        log_progress(3, 10, 1, METRICS, 42.0)
    finally:
        root.removeHandler(handler)
    assert console.getvalue().splitlines() == [format_progress(3, 10, 1, METRICS, 42.0)]
