"""Shared fixtures: a temporary model cache, the real TOFU folder, a micro world and micro models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TOFU_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tofu"


@pytest.fixture(scope="session", autouse=True)
def _temporary_cache(tmp_path_factory):
    """Models built by tests go to a temporary cache, never to ~/.cache."""
    os.environ["LLM_UNLEARN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield


@pytest.fixture(scope="session")
def tofu_dir() -> Path:
    """The real TOFU data in ../shared/data/tofu: required under CI=true, skipped elsewhere."""
    if not (TOFU_DIR / "full.json").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"real TOFU data missing at {TOFU_DIR}: CI needs ../shared beside the clone")
        pytest.skip(f"real TOFU data not found at {TOFU_DIR}")
    return TOFU_DIR
