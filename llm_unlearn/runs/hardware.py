"""One line naming the hardware a number was measured on, for every record, report and card.

The accelerator's name where there is one (the caller passes it: this layer imports no torch), else the
CPU as `<cores>-core <architecture> CPU (<model name>)`, the model name from /proc/cpuinfo where the
system has one.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str | None:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or None


def hardware(accelerator: str | None = None) -> str:
    """`accelerator` (e.g. `torch.cuda.get_device_name()`) if given, else the CPU line of the module docstring."""
    if accelerator:
        return accelerator
    model = cpu_model()
    return f"{os.cpu_count()}-core {platform.machine()} CPU" + (f" ({model})" if model else "")
