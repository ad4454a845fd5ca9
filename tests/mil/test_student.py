"""The student under training: the activation memory estimate."""

from __future__ import annotations

import pytest

from napari_xmag.mil.student import activation_bytes_estimate, measure_step_memory
from napari_xmag.models import create_model


def test_activation_memory_estimate_matches_what_autograd_keeps() -> None:
    student = create_model("xmag", weights="random", tiny=True)
    measured = measure_step_memory(student, 3, 1)
    estimate = activation_bytes_estimate(3, 1, tokens=257, width=32)
    assert measured["saved_bytes"] == pytest.approx(estimate, rel=0.02)
    checkpointed = measure_step_memory(student, 3, 1, checkpointing=True)
    assert checkpointed["saved_bytes"] < measured["saved_bytes"] / 4
