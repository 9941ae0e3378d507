"""One hardware line for every record (`runs/hardware.py`), whoever writes it."""

from __future__ import annotations

import os
from types import SimpleNamespace

from llm_unlearn.runs.hardware import hardware


def test_the_accelerator_name_wins_else_the_cpu_line():
    assert hardware("NVIDIA H200") == "NVIDIA H200"
    line = hardware()
    assert line.startswith(f"{os.cpu_count()}-core ") and " CPU" in line


def test_every_writer_uses_the_same_line(monkeypatch):
    import torch

    from llm_unlearn.bench.eval import _hardware as bench_eval_hardware
    from llm_unlearn.bench.hardware import device_name
    from llm_unlearn.eval.tofu import _hardware as eval_hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = SimpleNamespace(device=torch.device("cpu"))
    assert device_name() == bench_eval_hardware() == eval_hardware(model) == hardware()
