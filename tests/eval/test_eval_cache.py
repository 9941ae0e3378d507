"""The evaluation cache (eval/cache.py): a second evaluation of the same inputs is read back, and any
changed input recomputes. Each input is changed on its own, through `pipeline.evaluate_path` as the
demo and `eval` call it, and the count of real evaluations says whether it recomputed."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from llm_unlearn.data.args import DataArgs
from llm_unlearn.eval import cache, tofu
from llm_unlearn.eval.args import EvalArgs
from llm_unlearn.models.args import ModelArgs
from llm_unlearn.pipeline import evaluate as pipeline

FAST = dict(eval_batch_size=64, max_new_tokens=4)


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """A fresh cache folder, and a count of the evaluations actually computed."""
    monkeypatch.setenv("LLM_UNLEARN_CACHE", str(tmp_path / "cache"))
    calls = []
    real = tofu.evaluate

    def evaluate(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(tofu, "evaluate", evaluate)
    return calls


@pytest.fixture
def model_copy(micro_models, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(micro_models["target"], folder)
    return folder


@pytest.fixture
def world_copy(micro_world, tmp_path):
    folder = tmp_path / "world"
    shutil.copytree(micro_world, folder)
    return folder


def _evaluate(model, world, out=None, model_args=None, **changes):
    data_fields = {f.name for f in dataclasses.fields(DataArgs)}
    data = DataArgs(data_dir=str(world), forget_split="forget10",
                    **{k: v for k, v in changes.items() if k in data_fields})  # fmt: skip
    eval_args = EvalArgs(**{**FAST, **{k: v for k, v in changes.items() if k not in data_fields}})
    return pipeline.evaluate_path(str(model), data, eval_args, model_args, out_path=out)


def test_the_same_inputs_are_evaluated_once_and_read_back_identically(
    counted, model_copy, world_copy, tmp_path
):
    first = _evaluate(model_copy, world_copy, out=tmp_path / "a.json")
    second = _evaluate(model_copy, world_copy, out=tmp_path / "b.json")
    assert len(counted) == 1
    assert {k: v["value"] for k, v in first["metrics"].items()} == {
        k: v["value"] for k, v in second["metrics"].items()
    }
    assert first["metrics"] == second["metrics"]  # per-sample values too
    written = json.loads((tmp_path / "b.json").read_text())
    assert written["meta"]["eval_cache"]["hit"] is True
    assert written["meta"]["eval_cache"]["key"] == first["meta"]["eval_cache"]["key"]
    assert len(written["meta"]["eval_cache"]["key"]) == 64
    # The cached result names the model it is now about, not the one first evaluated.
    other = model_copy.parent / "same-weights-elsewhere"
    shutil.copytree(model_copy, other)
    assert _evaluate(other, world_copy)["meta"]["model"] == str(other) and len(counted) == 1


def test_run_outputs_beside_the_weights_do_not_invalidate(counted, model_copy, world_copy):
    _evaluate(model_copy, world_copy)
    (model_copy / "eval.json").write_text("{}")
    (model_copy / "train_log.jsonl").write_text('{"step": 1}\n')
    _evaluate(model_copy, world_copy)
    assert len(counted) == 1


def _change_weights(model, world):
    weights = load_file(model / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1e-3 * torch.ones_like(weights[name])
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})


def _change_tokenizer_file(model, world):
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["model_max_length"] = 4096
    (model / "tokenizer_config.json").write_text(json.dumps(config))


def _change_config(model, world):
    config = json.loads((model / "config.json").read_text())
    config["rms_norm_eps"] = config.get("rms_norm_eps", 1e-6) * 10
    (model / "config.json").write_text(json.dumps(config))


def _change_a_data_file(model, world):
    path = world / "retain_perturbed.json"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows[0]["answer"] = rows[0]["answer"] + " Indeed."
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize(
    "change",
    [_change_weights, _change_tokenizer_file, _change_config, _change_a_data_file],
    ids=["weights", "tokenizer", "config", "data"],
)
def test_a_changed_file_recomputes(counted, model_copy, world_copy, change):
    _evaluate(model_copy, world_copy)
    change(model_copy, world_copy)
    _evaluate(model_copy, world_copy)
    assert len(counted) == 2


@pytest.mark.parametrize(
    "setting",
    [
        {"prompt_format": "qa"},
        {"system_prompt": "Answer briefly."},
        {"max_length": 96},
        {"eval_batch_size": 7},
        {"max_new_tokens": 5},
        {"truth_ratio_variant": "arithmetic"},
        {"mia": False},
    ],
    ids=lambda s: next(iter(s)),
)
def test_a_changed_setting_recomputes(counted, model_copy, world_copy, setting):
    _evaluate(model_copy, world_copy)
    _evaluate(model_copy, world_copy, **setting)
    assert len(counted) == 2


def test_a_changed_scoring_code_or_dtype_recomputes(counted, model_copy, world_copy, monkeypatch):
    _evaluate(model_copy, world_copy)
    _evaluate(model_copy, world_copy, model_args=ModelArgs(torch_dtype="bfloat16"))
    assert len(counted) == 2
    monkeypatch.setattr(cache, "code_digest", lambda: "another version of the scoring code")
    _evaluate(model_copy, world_copy)
    assert len(counted) == 3


def test_off_corrupt_or_mismatched_entries_recompute(counted, model_copy, world_copy):
    first = _evaluate(model_copy, world_copy)
    _evaluate(model_copy, world_copy, eval_cache=False)
    assert len(counted) == 2
    entry = cache.cache_dir() / f"{first['meta']['eval_cache']['key']}.json"
    entry.write_text("{not json")
    _evaluate(model_copy, world_copy)
    assert len(counted) == 3
    stored = json.loads(entry.read_text())  # rewritten by the recomputation
    stored["meta"]["eval_cache"]["key"] = "0" * 64  # an entry copied under the wrong name is not trusted
    entry.write_text(json.dumps(stored))
    _evaluate(model_copy, world_copy)
    assert len(counted) == 4


def test_forget_quality_is_attached_to_a_cached_result_from_this_calls_reference(
    counted, model_copy, world_copy, micro_models, tmp_path
):
    reference = _evaluate(micro_models["retain"]["forget10"], world_copy)
    data = DataArgs(data_dir=str(world_copy), forget_split="forget10")
    first = pipeline.evaluate_path(str(model_copy), data, EvalArgs(**FAST), reference=reference)
    second = pipeline.evaluate_path(str(model_copy), data, EvalArgs(**FAST), reference=first)
    assert len(counted) == 2  # the reference and the model, each once
    assert first["metrics"]["forget_quality"]["value"] < 1.0
    assert second["metrics"]["forget_quality"]["value"] == pytest.approx(1.0)  # against itself
