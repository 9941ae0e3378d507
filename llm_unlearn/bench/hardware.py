"""The hardware a benchmark ran on, written into every benchmark record."""

from __future__ import annotations

import os
import platform

import torch


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
