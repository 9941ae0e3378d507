"""llm_unlearn: make a trained causal LM forget a forget set, keep the rest, and measure both.

Module map, one folder per layer; a folder imports only the folders above it in this list (checked
by tests/test_layout.py):

    runs/        run folders: atomic writes, status.json, claims, checkpoints, secret redaction
    data/        TOFU-format QA files, the built-in fictitious-author world, held-out splits
    models/      model sources, safe loading, the tiny Llama, the built-in world's models
    methods/     one file per unlearning method, the registry, method options
    eval/        TOFU metrics, scoring, membership inference, quantization, eval cache, reports
    core/        UnlearnTrainer, NGDiff / PCGrad combiners, GeN, the stop rule, UnlearnConfig
    probes/      does the forgotten come back: relearning, Piggyback, quantization
    hub/         `llm-unlearn push` and the model card
    bench/       `llm-unlearn bench`: training cost and evaluation speed, side by side
    pipeline/    end-to-end jobs: unlearn, evaluate with a reference, the demo
    cli/         the `llm-unlearn` command: parsing, help, subcommands
    hf_metrics/  the TOFU metrics as a Hugging Face `evaluate` module

The Python API in one import (loaded on first use, so `import llm_unlearn` stays cheap):

    from llm_unlearn import unlearn, evaluate_with_reference, demo
    from llm_unlearn import ModelArgs, DataArgs, UnlearnConfig, EvalArgs
"""

from __future__ import annotations

import importlib

_API = {
    "unlearn": "llm_unlearn.pipeline.unlearn",
    "evaluate_with_reference": "llm_unlearn.pipeline.evaluate",
    "demo": "llm_unlearn.pipeline.demo",
    "UnlearnConfig": "llm_unlearn.core.config",
    "ModelArgs": "llm_unlearn.models.args",
    "DataArgs": "llm_unlearn.data.args",
    "EvalArgs": "llm_unlearn.eval.args",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'llm_unlearn' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)
