"""Shared fixtures: a temporary model cache, the real TOFU folder, a micro world and micro models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TOFU_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tofu"
# Set before any test module imports transformers: huggingface_hub reads it once, at import. The suite
# fetches nothing; a Hub id that is not local fails at once instead of after a minute of retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _temporary_cache(tmp_path_factory):
    """Models built by tests go to a temporary cache, never to ~/.cache."""
    os.environ["LLM_UNLEARN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Micro models gain nothing from a second thread, and two threads beside any other busy
    # process on a 2-core machine were measured 10-30x slower (data_cards/world.md).
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def tofu_dir() -> Path:
    """The real TOFU data in ../shared/data/tofu: required under CI=true, skipped elsewhere."""
    if not (TOFU_DIR / "full.json").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"real TOFU data missing at {TOFU_DIR}: CI needs ../shared beside the clone")
        pytest.skip(f"real TOFU data not found at {TOFU_DIR}")
    return TOFU_DIR


@pytest.fixture(scope="session")
def micro_world(tmp_path_factory) -> Path:
    """A written micro world (10 authors): TOFU-format files in a temporary folder."""
    from llm_unlearn.data.world import WORLD_SIZES, WorldConfig, write_world

    return write_world(tmp_path_factory.mktemp("world") / "micro", WorldConfig(**WORLD_SIZES["micro"]))


@pytest.fixture(scope="session")
def micro_models(_temporary_cache, micro_world) -> dict:
    """`build_default_models(micro_world, size="micro")`: base, target and retain-only (forget10) folders."""
    from llm_unlearn.models.build import build_default_models

    return build_default_models(micro_world, size="micro")
