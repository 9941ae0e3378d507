"""benchmarks/_sam_radius.py: the forget NLL at theta + rho g/||g||, the table that carries SAM's rho to a model."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _sam_radius import radius_table  # noqa: E402


def test_a_small_radius_lowers_the_forget_nll_and_leaves_the_weights(micro_models, micro_world):
    target = str(micro_models["target"])
    table = radius_table(target, str(micro_world), "forget10", [1e-3, 0.0])
    # First order: a step along the ascent objective's gradient lowers the NLL; rho 0 is theta itself.
    assert table["rho"]["0.001"] < table["nll_at_theta"] == table["rho"]["0.0"]
    assert table["grad_norm"] > 0
    again = radius_table(target, str(micro_world), "forget10", [0.0])
    assert again["nll_at_theta"] == table["nll_at_theta"]
