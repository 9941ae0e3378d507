"""UnlearnTrainer: window normalization invariance, loaders, signatures, failures. `pytest tests/test_trainer.py`"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, Trainer

from llm_unlearn.core.config import UnlearnConfig
from llm_unlearn.core.trainer import NonFiniteLossError, RetainStream, UnlearnTrainer
from llm_unlearn.data.args import DataArgs
from llm_unlearn.data.qa import QACollator, QADataset, pad_id
from llm_unlearn.eval.args import EvalArgs
from llm_unlearn.methods import METHODS, Method, Term, get_method
from llm_unlearn.models.args import ModelArgs
from llm_unlearn.models.tiny import generation_config, tiny_llama_config, train_tokenizer
from llm_unlearn.pipeline.unlearn import unlearn

WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()
)


def _rows(prefix: str, n: int) -> list[dict]:
    # Answers of different lengths so that padding and per-token normalization matter.
    return [
        {"question": f"{prefix} question {i}?", "answer": " ".join(WORDS[: 2 + (3 * i) % 11]) + "."}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random micro Llama and its tokenizer saved to disk, plus forget/retain rows and a data dir."""
    forget, retain = _rows("forget", 8), _rows("retain", 12)
    texts = [r["question"] + " " + r["answer"] for r in forget + retain] * 3
    tok = train_tokenizer(texts, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tok, "micro"))
    model.generation_config = generation_config(tok)
    root = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    data_dir = root / "data"
    data_dir.mkdir()
    for name, rows in {"forget10": forget, "retain90": retain}.items():
        (data_dir / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"dir": root, "tok": tok, "forget": forget, "retain": retain, "data_dir": data_dir}


def _trainer(tiny, tmp_path, method="graddiff", **overrides) -> UnlearnTrainer:
    settings = dict(
        output_dir=str(tmp_path / "run"),
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        max_steps=1,
        save_strategy="no",
        per_device_train_batch_size=4,
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    model = overrides.pop("model", None) or LlamaForCausalLM.from_pretrained(tiny["dir"] / "model")
    forget_rows = overrides.pop("forget_rows", tiny["forget"][:4])
    retain_rows = overrides.pop("retain_rows", tiny["retain"][:4])
    settings.update(overrides)
    config = UnlearnConfig(method=method, **settings)
    tok = tiny["tok"]
    encode = dict(prompt_format="chat_template", max_length=128)
    needs_reference = get_method(method).needs_reference(config)
    return UnlearnTrainer(
        model=model,
        args=config,
        train_dataset=QADataset(forget_rows, tok, **encode),
        retain_dataset=QADataset(retain_rows, tok, **encode),
        data_collator=QACollator(pad_id(tok)),
        processing_class=tok,
        method=get_method(method),
        reference_model=LlamaForCausalLM.from_pretrained(tiny["dir"] / "model") if needs_reference else None,
    )


def _assert_same_update(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal to 1e-6 relative to the update's norm (fp32 sums in another order differ by ~1e-7)."""
    assert b.norm() > 0
    assert (a - b).norm() / b.norm() < 1e-6


def _update(trainer: UnlearnTrainer) -> torch.Tensor:
    before = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])
    trainer.train()
    after = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    return after - before


@pytest.mark.parametrize("term", ["forget", "retain"])
def test_each_term_gradient_is_independent_of_batch_split_into_accumulation_steps(tiny, tmp_path, term):
    weights = {"forget_weight": float(term == "forget"), "retain_weight": float(term == "retain")}
    whole = _update(_trainer(tiny, tmp_path / "a", per_device_train_batch_size=4, **weights))
    split = _update(
        _trainer(
            tiny, tmp_path / "b", per_device_train_batch_size=1, gradient_accumulation_steps=4, **weights
        )
    )
    _assert_same_update(split, whole)


def test_uneven_split_matches_too_with_retain_batch_size_differing_from_forget(tiny, tmp_path):
    # A random model scores forget and retain alike; unequal weights keep the terms from cancelling.
    w = {"retain_weight": 0.5}
    whole = _update(_trainer(tiny, tmp_path / "a", per_device_train_batch_size=4, retain_batch_size=4, **w))
    split = _update(
        _trainer(
            tiny,
            tmp_path / "b",
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            retain_batch_size=2,
            **w,
        )
    )
    _assert_same_update(split, whole)


def test_retain_stream_cycles_through_every_example_in_a_new_order_each_cycle():
    stream = RetainStream(list(range(10)), batch_size=3, collate_fn=list, seed=7)
    assert stream.batches_per_cycle == 4
    cycle0 = [i for k in range(4) for i in stream.indices(k)]
    cycle1 = [i for k in range(4, 8) for i in stream.indices(k)]
    assert sorted(cycle0) == sorted(cycle1) == list(range(10))
    assert cycle0 != cycle1
    assert stream.indices(5) == RetainStream(list(range(10)), 3, list, seed=7).indices(5)


def test_retain_stream_ranks_see_disjoint_batches_whose_union_is_the_single_rank_batch():
    one = RetainStream(list(range(16)), batch_size=4, collate_fn=list, seed=1)
    ranks = [
        RetainStream(list(range(16)), batch_size=2, collate_fn=list, seed=1, rank=r, world_size=2)
        for r in (0, 1)
    ]
    for k in range(3):
        a, b = ranks[0].indices(k), ranks[1].indices(k)
        assert not set(a) & set(b)
        # Global batch g of size 2 on two ranks covers the same examples as a batch of 4 on one rank
        # within the same cycle position.
    single = [i for k in range(4) for i in one.indices(k)]
    sharded = [i for k in range(8) for r in (0, 1) for i in ranks[r].indices(k)][:16]
    assert sorted(single) == sorted(sharded) == list(range(16))


def test_forget_set_is_covered_once_per_epoch(tiny, tmp_path):
    seen: list[list[int]] = []

    def recording(model, forget, retain, ctx):
        seen.extend(
            tuple(ids[m.bool()].tolist()) for ids, m in zip(forget["input_ids"], forget["attention_mask"])
        )
        return {"forget": Term(-(model.model.embed_tokens.weight.sum() * 0), stream="forget")}

    METHODS["recording_test"] = Method("recording_test", recording, paper="")
    try:
        trainer = _trainer(
            tiny,
            tmp_path,
            method="recording_test",
            max_steps=-1,
            num_train_epochs=2,
            per_device_train_batch_size=2,
        )
        trainer.train()
    finally:
        del METHODS["recording_test"]
    rows = seen
    assert len(rows) == 8
    assert sorted(rows[:4]) == sorted(rows[4:]) and len(set(rows[:4])) == 4


def _forget_and_retain_nll_change(tiny, tmp_path, name, **overrides) -> tuple[float, float, float]:
    """(forget NLL change, retain NLL change, change of the forget NLL minus its alternative's) over 3 steps.

    A random model scores forget and retain alike (cos(g_F, g_R) ~ 1), so the normalized direction
    is small and Adam's per-coordinate scaling would blow it up into an arbitrary step: use SGD,
    for which <d, g_F> <= 0 guarantees a first-order rise of the forget NLL.
    """
    optimizer = dict(optim="sgd", learning_rate=2.0) if METHODS[name].combine == "normalized" else {}
    settings = dict(optim="adamw_torch", learning_rate=3e-3) | optimizer | overrides
    trainer = _trainer(tiny, tmp_path, method=name, max_steps=3, **settings)
    forget = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    retain = trainer.data_collator([trainer.retain_dataset[i] for i in range(4)])
    alternative = {k[4:]: v for k, v in forget.items() if k.startswith("alt_")} or None

    def nll(batch):
        if batch is None:
            return 0.0
        with torch.no_grad():
            return trainer.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss.item()

    f0, r0, a0 = nll(forget), nll(retain), nll(alternative)
    trainer.train()
    f1, r1, a1 = nll(forget), nll(retain), nll(alternative)
    return f1 - f0, r1 - r0, (f1 - a1) - (f0 - a0)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_forget_term_alone_raises_forget_nll_or_its_lead_over_the_alternative_answer(tiny, tmp_path, name):
    # Forget and retain answers share their words here and the random model knows neither, so a retain
    # term lowers both NLLs alike and can outweigh a forget term that saturates at a high NLL (SimNPO's):
    # the forget side is checked alone. A method trained towards alternative answers (refusals) must
    # make the forget answer lose ground to the alternative, not necessarily rise on its own.
    forget_change, _, lead_change = _forget_and_retain_nll_change(tiny, tmp_path, name, retain_weight=0.0)
    assert (lead_change if METHODS[name].forget_alternatives else forget_change) > 0


@pytest.mark.parametrize("name", ["graddiff", "ngdiff"])
def test_gradient_difference_raises_forget_nll_more_than_retain_nll(tiny, tmp_path, name):
    forget_change, retain_change, _ = _forget_and_retain_nll_change(tiny, tmp_path, name)
    assert forget_change > 0 and retain_change < forget_change


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (UnlearnTrainer.training_step, Trainer.training_step),
        (UnlearnTrainer.get_batch_samples, Trainer.get_batch_samples),
        (UnlearnTrainer.log, Trainer.log),
        (UnlearnTrainer._save, Trainer._save),
        (UnlearnTrainer.get_train_dataloader, Trainer.get_train_dataloader),
    ],
)
def test_overrides_keep_trainer_signatures(ours, theirs):
    def shape(fn):
        # Names, kinds and defaults; annotations are strings on our side (postponed evaluation).
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    assert shape(ours) == shape(theirs)


def test_nan_loss_stops_training_and_marks_the_run_failed(tiny, tmp_path):
    def nan_method(model, forget, retain, ctx):
        loss = model(input_ids=forget["input_ids"]).logits.sum() * float("nan")
        return {"forget": Term(loss, stream="forget")}

    METHODS["nan_test"] = Method("nan_test", nan_method, paper="")
    out = tmp_path / "run"
    try:
        with pytest.raises(NonFiniteLossError, match="non-finite"):
            unlearn(
                ModelArgs(model_name_or_path=str(tiny["dir"] / "model")),
                DataArgs(data_dir=str(tiny["data_dir"])),
                UnlearnConfig(
                    output_dir=str(out), method="nan_test", max_steps=2, use_cpu=True, disable_tqdm=True
                ),
                EvalArgs(do_final_eval=False),
            )
    finally:
        del METHODS["nan_test"]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and "non-finite" in status["error"]
    assert not (out / "model.safetensors").exists()


def test_finished_run_has_safetensors_config_log_and_no_pickled_args(tiny, tmp_path):
    out = tmp_path / "run"
    unlearn(
        ModelArgs(model_name_or_path=str(tiny["dir"] / "model")),
        DataArgs(data_dir=str(tiny["data_dir"])),
        UnlearnConfig(
            output_dir=str(out), max_steps=2, use_cpu=True, disable_tqdm=True, per_device_train_batch_size=2
        ),
        EvalArgs(do_final_eval=False),
    )
    assert json.loads((out / "status.json").read_text())["state"] == "complete"
    assert (out / "model.safetensors").is_file() and (out / "unlearn_config.yaml").is_file()
    assert not list(out.rglob("training_args.bin")) and not list(out.glob("checkpoint-*"))
    mask = os.umask(0)
    os.umask(mask)
    for name in ("model.safetensors", "status.json", "unlearn_config.yaml"):  # safetensors writes 0600
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss_forget" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all({"loss_retain", "learning_rate", "grad_norm"} <= r.keys() for r in steps)


class _Interrupt(Exception):
    pass


def tiny_unlearn(tiny, out, callbacks=None, **config) -> Path:
    """`unlearn()` on the tiny model and data: 4 steps of 2 examples, a checkpoint after each, no evaluation."""
    settings = dict(
        output_dir=str(out), max_steps=4, save_strategy="steps", save_steps=1, use_cpu=True,
        disable_tqdm=True, per_device_train_batch_size=2, learning_rate=1e-2, seed=3,
    )  # fmt: skip
    return unlearn(
        ModelArgs(model_name_or_path=str(tiny["dir"] / "model")),
        DataArgs(data_dir=str(tiny["data_dir"])),
        UnlearnConfig(**(settings | config)),
        EvalArgs(do_final_eval=False),
        callbacks=callbacks,
    )


def assert_resume_matches_uninterrupted_run(tiny, tmp_path, **config) -> None:
    """Stop a 4-step run right after its step-2 checkpoint, resume it, compare with a straight run."""
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    class StopAfterSecondSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise _Interrupt

    def run(out, callbacks=None):
        return tiny_unlearn(tiny, out, callbacks, **config)

    straight = load_file(run(tmp_path / "straight") / "model.safetensors")
    with pytest.raises(_Interrupt):
        run(tmp_path / "resumed", callbacks=[StopAfterSecondSave()])
    assert json.loads((tmp_path / "resumed" / "status.json").read_text())["state"] == "failed"
    assert (tmp_path / "resumed" / "checkpoint-2").is_dir()
    resumed = load_file(run(tmp_path / "resumed") / "model.safetensors")
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6)
    log = (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()
    assert {3, 4} <= {json.loads(line)["step"] for line in log}


def test_interrupted_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(tiny, tmp_path):
    assert_resume_matches_uninterrupted_run(tiny, tmp_path)


def test_lora_graddiff_with_kl_trains_adapters_and_saves_a_merged_model(tiny, tmp_path):
    from safetensors.torch import load_file

    out = unlearn(
        ModelArgs(model_name_or_path=str(tiny["dir"] / "model"), use_lora=True, lora_r=4),
        DataArgs(data_dir=str(tiny["data_dir"])),
        UnlearnConfig(
            output_dir=str(tmp_path / "run"), retain_loss="kl", max_steps=2, use_cpu=True, disable_tqdm=True,
            per_device_train_batch_size=2, learning_rate=5e-2, save_strategy="no",
        ),
        EvalArgs(do_final_eval=False),
    )  # fmt: skip
    before = load_file(tiny["dir"] / "model" / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    log = [
        json.loads(line)
        for line in (out / "train_log.jsonl").read_text().splitlines()
        if "loss_retain" in line
    ]
    assert log[0]["loss_retain"] == pytest.approx(0.0, abs=1e-6)  # KL to itself before the first update
    assert log[1]["loss_retain"] > 0
    # The adapter is kept beside the merged model (what `push` uploads for a LoRA run), safetensors only.
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert (out / "adapter" / "adapter_config.json").is_file() and not list(out.rglob("*.bin"))
    info = json.loads((out / "run_info.json").read_text())
    assert (
        info["versions"]["torch"] == torch.__version__.split("+")[0]
        or info["versions"]["torch"] == torch.__version__
    )


def _plain_kwargs(tiny, config) -> dict:
    tok, encode = tiny["tok"], dict(prompt_format="chat_template", max_length=128)
    return dict(model=LlamaForCausalLM.from_pretrained(tiny["dir"] / "model"), args=config,
                train_dataset=QADataset(tiny["forget"][:4], tok, **encode),
                retain_dataset=QADataset(tiny["retain"][:4], tok, **encode),
                data_collator=QACollator(pad_id(tok)), processing_class=tok)  # fmt: skip


def test_misuse_of_the_trainer_is_one_clear_error_before_any_step(tiny, tmp_path):
    """Each failed deep in the first step (an AttributeError, 'NoneType' object is not callable) or, for a
    method other than the config's, trained graddiff's terms under the config's combination silently."""
    from transformers import TrainingArguments

    config = UnlearnConfig(output_dir=str(tmp_path / "run"), method="graddiff", use_cpu=True)
    with pytest.raises(TypeError, match=r"needs args=UnlearnConfig\(...\).*not TrainingArguments"):
        UnlearnTrainer(
            **_plain_kwargs(tiny, TrainingArguments(output_dir=str(tmp_path / "t"))), method="graddiff"
        )
    with pytest.raises(
        ValueError, match=r"method 'ngdiff' is not the config's method 'graddiff'.*method='ngdiff'"
    ):
        UnlearnTrainer(**_plain_kwargs(tiny, config), method=get_method("ngdiff"))
    npo = UnlearnConfig(output_dir=str(tmp_path / "run"), method="npo", use_cpu=True)
    with pytest.raises(ValueError, match=r"npo .*frozen original model: pass reference_model="):
        UnlearnTrainer(**_plain_kwargs(tiny, npo), method="npo")
    trainer = UnlearnTrainer(**_plain_kwargs(tiny, config), method="graddiff")  # a registered name will do
    assert trainer.method is METHODS["graddiff"]


def test_replace_derives_the_resolved_defaults_again():
    """`dataclasses.replace(config, method="ngdiff")` kept graddiff's `sum` and clipping: clipped graddiff
    recorded as ngdiff. What the user set stays set."""
    import dataclasses

    config = UnlearnConfig(output_dir="/tmp/never", method="graddiff", per_device_train_batch_size=8)
    assert (config.combine, config.max_grad_norm, config.retain_batch_size) == ("sum", 1.0, 8)
    changed = dataclasses.replace(config, method="ngdiff", per_device_train_batch_size=2)
    assert (changed.combine, changed.max_grad_norm, changed.retain_batch_size) == ("normalized", 0.0, 2)
    own = UnlearnConfig(output_dir="/tmp/never", method="graddiff", combine="pcgrad", retain_batch_size=3)
    kept = dataclasses.replace(own, method="ngdiff", per_device_train_batch_size=2)
    assert (kept.combine, kept.retain_batch_size) == ("pcgrad", 3)


def test_auto_from_python_is_the_command_lines_auto(tmp_path):
    import dataclasses

    from llm_unlearn.cli.parse import parse_config
    from llm_unlearn.runs.options import ConfigError

    with pytest.raises(ConfigError, match=r"auto=True alone .*UnlearnConfig\.for_auto\(output_dir="):
        UnlearnConfig(output_dir=str(tmp_path), auto=True)  # trained plain graddiff, recorded as auto
    for flags, changes in (([], {}), (["--learning_rate", "0.05"], {"learning_rate": 0.05})):
        cli = parse_config(["--auto", "--output_dir", str(tmp_path), *flags])[2]
        api = UnlearnConfig.for_auto(output_dir=str(tmp_path), **changes)
        assert {f.name: getattr(cli, f.name) for f in dataclasses.fields(cli)} == {
            f.name: getattr(api, f.name) for f in dataclasses.fields(api)
        }
    assert not api.auto_fallback  # its own learning rate: a regime of its own, as on the command line
