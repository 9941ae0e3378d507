"""The default tiny models at micro size: standard HF folders, tokenizer, cache hits and rebuilds. `pytest tests/test_models.py`."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_unlearn.data.qa import encode_prompt, load_split
from llm_unlearn.data.world import WorldConfig, write_world
from llm_unlearn.models.build import build_default_models, finetune


def _folders(models: dict) -> dict:
    return {
        "base": models["base"],
        "target": models["target"],
        **{f"retain-{k}": v for k, v in models["retain"].items()},
    }


def test_every_model_loads_with_from_pretrained_and_generates(micro_models):
    for name, path in _folders(micro_models).items():
        assert (path / "model.safetensors").is_file(), name
        assert not (path / "training_args.bin").exists(), name
        model = AutoModelForCausalLM.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        ids = encode_prompt(tokenizer, "Where was Amara Novak born?", "chat_template")
        out = model.generate(
            input_ids=torch.tensor([ids]), max_new_tokens=4, generation_config=model.generation_config
        )
        assert out.shape[1] > len(ids)
        assert model.generation_config.do_sample is False


def test_tokenizer_round_trips_every_world_answer_and_has_distinct_pad_and_a_chat_template(
    micro_models, micro_world
):
    tokenizer = AutoTokenizer.from_pretrained(micro_models["target"])
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>"
    for split in ("full", "retain_perturbed", "world_facts_perturbed", "pretrain"):
        for r in load_split(split, data_dir=micro_world):
            for text in [r["answer"], *r.get("perturbed_answer", []), *r.get("train_answers", [])]:
                assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_a_second_call_is_a_cache_hit_that_does_not_retrain(micro_models, micro_world, caplog):
    before = {n: (p / "model.safetensors").stat().st_mtime_ns for n, p in _folders(micro_models).items()}
    with caplog.at_level(logging.INFO, logger="llm_unlearn"):
        again = build_default_models(micro_world, size="micro")
    assert again == micro_models
    assert {n: (p / "model.safetensors").stat().st_mtime_ns for n, p in _folders(again).items()} == before
    hits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cache hit")]
    assert len(hits) == 3
    assert not [r for r in caplog.records if r.getMessage().startswith("built")]


def test_no_cache_rebuilds_every_model(tmp_path, monkeypatch, caplog):
    # A two-author world keeps the rebuild fast and leaves the shared micro models untouched.
    monkeypatch.setenv("LLM_UNLEARN_CACHE", str(tmp_path / "cache"))
    world = write_world(tmp_path / "w", WorldConfig(n_authors=2, n_real_authors=4, n_world_facts=4))
    first = build_default_models(world, size="micro")
    before = {n: (p / "model.safetensors").stat().st_ino for n, p in _folders(first).items()}
    with caplog.at_level(logging.INFO, logger="llm_unlearn"):
        second = build_default_models(world, size="micro", no_cache=True)
    assert second == first
    assert all((p / "model.safetensors").stat().st_ino != before[n] for n, p in _folders(second).items())
    assert len([r for r in caplog.records if r.getMessage().startswith("built")]) == 3


def test_finetune_leaves_no_partial_folder_when_training_fails(micro_models, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(micro_models["base"])
    tokenizer = AutoTokenizer.from_pretrained(micro_models["base"])
    rows = [{"question": "Who?", "answer": "word " * 400}]
    with pytest.raises(ValueError, match="max_length"):
        finetune(model, tokenizer, rows, tmp_path / "out", max_length=64, num_train_epochs=1)
    assert list(tmp_path.iterdir()) == []


def test_unknown_size_is_refused_with_the_choices(micro_world):
    with pytest.raises(ValueError, match="choose one of micro, default"):
        build_default_models(micro_world, size="huge")


def test_duration_and_eta_state_the_time_left_from_the_rate_so_far():
    from llm_unlearn.models.build import duration, eta

    assert [duration(s) for s in (0.04, 3.21, 41.4, 125, 3599.6, 7500)] == [
        "0.0 s", "3.2 s", "41 s", "2 min 05 s", "1 h 00 min", "2 h 05 min"
    ]  # fmt: skip
    assert eta(380, 756, 41.0) == "41 s elapsed, ~41 s left"  # 41 s per 380 steps, 376 to go
    assert eta(756, 756, 80.0) == "1 min 20 s elapsed, ~0.0 s left"
    assert eta(0, 756, 2.0) == "2.0 s elapsed"  # no rate yet, no guess


def test_finetune_progress_lines_carry_the_time_elapsed_and_left(micro_models, tmp_path, caplog):
    model = AutoModelForCausalLM.from_pretrained(micro_models["base"])
    tokenizer = AutoTokenizer.from_pretrained(micro_models["base"])
    rows = [{"question": "Who?", "answer": "A writer."}] * 8
    with caplog.at_level(logging.INFO, logger="llm_unlearn"):
        finetune(model, tokenizer, rows, tmp_path / "out", max_length=64, num_train_epochs=2,
                 per_device_train_batch_size=4, logging_steps=1)  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if ": step " in r.getMessage()]
    assert len(lines) == 4
    assert all(re.fullmatch(r"out: step \d/4 loss \S+ lr \S+, \S+ s elapsed, ~\S+ s left", x) for x in lines)


def test_two_processes_building_one_cache_folder_train_each_model_once(micro_world, tmp_path):
    """Two real processes start `build_default_models` on the same world and an empty cache together:
    one builds, the other waits and finds every model built, and both get the same folders."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json, logging, sys; logging.basicConfig(level=logging.INFO, format='%(message)s'); "
        "from llm_unlearn.models.build import build_default_models; "
        "print(json.dumps({k: str(v) for k, v in build_default_models(sys.argv[1], size='micro').items() "
        "if k != 'retain'}))"
    )
    env = {**os.environ, "LLM_UNLEARN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(micro_world)],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
    logs = "".join(err for _, err in results)
    assert logs.count("built base model") == logs.count("built target model") == 1
    assert logs.count("cache hit: target model") == 1
    assert json.loads(results[0][0]) == json.loads(results[1][0])
