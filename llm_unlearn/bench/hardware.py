"""The hardware a benchmark ran on, written into every benchmark record (`runs/hardware.py`)."""

from __future__ import annotations

import torch

from ..runs.hardware import hardware


def device_name() -> str:
    """The GPU's name where torch sees one, else the CPU (`runs.hardware.hardware`)."""
    return hardware(torch.cuda.get_device_name() if torch.cuda.is_available() else None)
