"""UNDO (`llm-unlearn distill`, llm_unlearn/pipeline/distill.py) on the micro world: the noise formula, the distillation,
the data it trains on, its run directory, resume, and bad input. `pytest -q tests/pipeline/test_distill.py`."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

from llm_unlearn.cli import main
from llm_unlearn.data.qa import QACollator, QADataset, load_split, pad_id
from llm_unlearn.models.loading import load_model_and_tokenizer
from llm_unlearn.pipeline.distill import (
    DistillSettings,
    DistillTrainer,
    default_splits,
    distill,
    distill_kl,
    distill_rows,
    noised_copy,
    read_run,
)
from llm_unlearn.runs.folder import RunError, read_status, write_status


@pytest.fixture(scope="module")
def unlearned(micro_world, micro_models, tmp_path_factory):
    """A complete graddiff run (2 steps) on the micro world's target, recording its retain-only reference."""
    out = tmp_path_factory.mktemp("undo") / "graddiff"
    rc = main([
        "unlearn", "--model_name_or_path", str(micro_models["target"]), "--data_dir", str(micro_world),
        "--forget_split", "forget10", "--method", "graddiff", "--output_dir", str(out), "--max_steps", "2",
        "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--disable_tqdm", "true",
        "--reference_model", str(micro_models["retain"]["forget10"]), "--do_final_eval", "false",
    ])  # fmt: skip
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def distilled(unlearned, tmp_path_factory):
    """`llm-unlearn distill` at alpha 0.5 with its final evaluation; records every batch it trained on."""
    out = tmp_path_factory.mktemp("undo") / "undo"
    batches = []
    compute_loss = DistillTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        batches.append(inputs["input_ids"].clone())
        return compute_loss(self, model, inputs, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DistillTrainer, "compute_loss", recording)
        rc = main(["distill", str(unlearned), "--alpha", "0.5", "--output_dir", str(out), "--max_steps", "30",
                   "--learning_rate", "3e-3", "--warmup_steps", "0", "--seed", "1", "--disable_tqdm"])  # fmt: skip
    assert rc == 0
    return {"out": out, "batches": batches}


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_noised_copy_is_one_minus_alpha_teacher_plus_alpha_beta_fresh_init(unlearned):
    teacher, _ = load_model_and_tokenizer(str(unlearned))
    torch.manual_seed(11)
    fresh = _params(AutoModelForCausalLM.from_config(teacher.config))
    theta = _params(teacher)
    assert any(not torch.allclose(theta[k], fresh[k]) for k in theta)
    for alpha, beta in ((0.0, 1.0), (0.3, 1.0), (0.6, 0.1), (1.0, 1.0)):
        student = _params(noised_copy(teacher, alpha, beta, seed=11))
        for name, value in student.items():
            expected = (1 - alpha) * theta[name] + alpha * beta * fresh[name]
            torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
    assert all(torch.equal(v, theta[k]) for k, v in _params(noised_copy(teacher, 0.0, 1.0, 11)).items())
    assert all(torch.equal(v, fresh[k]) for k, v in _params(noised_copy(teacher, 1.0, 1.0, 11)).items())
    assert _params(teacher).keys() == theta.keys() and all(
        torch.equal(theta[k], v) for k, v in _params(teacher).items()
    )
    other = _params(noised_copy(teacher, 0.5, 1.0, seed=12))
    assert any(not torch.equal(other[k], v) for k, v in _params(noised_copy(teacher, 0.5, 1.0, 11)).items())


def _mean_kl(student, teacher, tokenizer, rows) -> float:
    batch = QACollator(pad_id(tokenizer))(list(QADataset(rows, tokenizer, "chat_template", 128)))
    feed = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        return distill_kl(student(**feed).logits, teacher(**feed).logits, batch["attention_mask"]).item()


def test_distillation_lowers_the_kl_to_the_teacher_on_the_distill_data(unlearned, distilled):
    teacher, tokenizer = load_model_and_tokenizer(str(unlearned))
    rows = distill_rows(read_run(unlearned), default_splits(read_run(unlearned)))[::5]  # a fifth, for speed
    before = _mean_kl(noised_copy(teacher, 0.5, 1.0, seed=1), teacher, tokenizer, rows)
    after = _mean_kl(load_model_and_tokenizer(str(distilled["out"]))[0], teacher, tokenizer, rows)
    assert after < 0.5 * before, (before, after)


def test_distill_batches_hold_no_forget_question_and_do_hold_retain_questions(
    micro_world, unlearned, distilled
):
    config = read_run(unlearned)
    assert default_splits(config) == ("retain90", "pretrain")
    _, tokenizer = load_model_and_tokenizer(str(unlearned))
    texts = [tokenizer.decode(row, skip_special_tokens=True) for b in distilled["batches"] for row in b]
    assert len(distilled["batches"]) == 30
    forget = [r["question"] for r in load_split("forget10", data_dir=micro_world)]
    retain = [r["question"] for r in load_split("retain90", data_dir=micro_world)]
    assert not [q for q in forget if any(q in t for t in texts)]
    assert sum(any(q in t for t in texts) for q in retain) > len(retain) // 2


def test_distill_run_directory_is_complete_with_its_evaluation(unlearned, distilled):
    out = distilled["out"]
    assert read_status(out)["state"] == "complete" and read_status(out)["method"] == "undo"
    assert "final_eval" not in read_status(
        out
    )  # pending from the end of training until eval.json was written
    for name in ("model.safetensors", "config.json", "tokenizer.json", "run_info.json", "train_log.jsonl"):
        assert (out / name).is_file(), name
    assert not list(out.glob("checkpoint-*"))
    result = json.loads((out / "eval.json").read_text())
    metrics = result["metrics"]
    assert 0 <= metrics["forget_quality"]["value"] <= 1 and "model_utility" in metrics
    assert result["meta"]["seeds"]["undo_seed"] == 1  # its own noise and data order, beside the run's seed
    undo = read_run(out)["undo"]
    assert (
        undo["alpha"] == 0.5
        and undo["source_run"] == str(unlearned)
        and undo["splits"] == ["retain90", "pretrain"]
    )
    assert (
        read_run(out)["model_name_or_path"] == read_run(unlearned)["model_name_or_path"]
    )  # probe's original
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps[:30] == list(range(1, 31))


def test_a_distilled_models_card_says_what_undo_did_and_which_run_it_started_from(unlearned, distilled):
    from llm_unlearn.hub.card import build_card
    from llm_unlearn.runs.redact import local_name

    text = build_card(distilled["out"], "org/undo", adapter=False).text
    training = text[text.index("## Training") :]
    assert (
        "Made with UNDO (" in training
        and f"from the unlearned run `{local_name(str(unlearned))}`" in training
    )
    assert "share `0.5` of a fresh initialization" in training
    assert "distilled from it for 30 optimizer steps" in training and "`retain90`, `pretrain`" in training
    assert "AdamW at learning rate `0.003`" in training and "seed `1`" in training
    assert "The unlearning run's own settings: optimizer `" in training  # the source's, named as such
    assert "Method `graddiff`" not in training  # not the source run's training passed off as this model's


class _StopAt(TrainerCallback):
    """Records the steps it sees; raises KeyboardInterrupt (Ctrl-C) at `step`."""

    def __init__(self, step: int | None = None):
        self.step, self.seen = step, []

    def on_step_end(self, args, state, control, **kwargs):
        self.seen.append(state.global_step)
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_a_stopped_distillation_resumes_to_the_weights_of_an_uninterrupted_one(unlearned, tmp_path):
    settings = DistillSettings(alpha=0.3, seed=2, max_steps=4, save_steps=2, per_device_train_batch_size=4,
                               warmup_steps=0, disable_tqdm=True)  # fmt: skip
    whole = distill(unlearned, tmp_path / "whole", settings)
    with pytest.raises(KeyboardInterrupt):
        distill(unlearned, tmp_path / "cut", settings, callbacks=[_StopAt(3)])
    assert read_status(tmp_path / "cut")["state"] == "interrupted"  # as a killed run reads
    assert (tmp_path / "cut" / "checkpoint-2").is_dir()
    with pytest.raises(RunError, match=r"other settings \(undo\.alpha: 0\.3 there, 0\.5 now\)"):
        distill(unlearned, tmp_path / "cut", dataclasses.replace(settings, alpha=0.5))  # runs/resume.py
    watch = _StopAt()
    resumed = distill(
        unlearned, tmp_path / "cut", dataclasses.replace(settings, disable_tqdm=False), callbacks=[watch]
    )
    assert watch.seen == [3, 4]  # from checkpoint-2, not from scratch
    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows][:4] == [1, 2, 3, 4]
    summary = next(r for r in rows if "train_loss" in r)
    assert summary["train_loss_first_step"] == 3  # its train_loss averages steps 3-4, and says so


@pytest.mark.parametrize(
    "case, argv, words",
    [
        ("missing run", ["{tmp}/nowhere", "--alpha", "0.3"], "does not exist"),
        ("alpha above 1", ["{run}", "--alpha", "1.5"], "outside [0, 1]"),
        ("alpha below 0", ["{run}", "--alpha", "-0.1"], "outside [0, 1]"),
        (
            "forget split",
            ["{run}", "--alpha", "0.3", "--splits", "retain90,forget10"],
            "never trains on the forget",
        ),
        ("split holding forget rows", ["{run}", "--alpha", "0.3", "--splits", "full"], "shares"),
        ("no run", ["{world}", "--alpha", "0.3"], "not an llm-unlearn run directory"),
    ],
)
def test_bad_distill_input_is_one_error_line_and_leaves_no_output_folder(
    case, argv, words, unlearned, micro_world, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = [a.format(tmp=tmp_path, run=unlearned, world=micro_world) for a in argv]
    assert main(["distill", *argv, "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not out.exists()


def test_distill_refuses_an_unfinished_run(unlearned, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(unlearned, run)
    write_status(run, "failed", method="graddiff", error="KeyboardInterrupt: ")
    assert main(["distill", str(run), "--alpha", "0.3", "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is failed" in err[0] and "distill needs a complete run" in err[0], err
    assert not (tmp_path / "out").exists()


def test_unlearn_undo_alpha_writes_a_distilled_run_beside_the_unlearned_one(
    micro_world, micro_models, tmp_path
):
    out = tmp_path / "run"
    argv = ["unlearn", "--model_name_or_path", str(micro_models["target"]), "--data_dir", str(micro_world),
            "--output_dir", str(out), "--max_steps", "1", "--disable_tqdm", "true", "--do_final_eval", "false"]  # fmt: skip
    assert main([*argv, "--undo_alpha", "2"]) == 2 and not out.exists()
    assert main([*argv, "--undo_alpha", "0.4", "--undo_max_steps", "2"]) == 0
    undo = tmp_path / "run-undo"
    assert read_status(out)["state"] == read_status(undo)["state"] == "complete"
    assert read_run(undo)["undo"]["alpha"] == 0.4 and read_run(undo)["undo"]["max_steps"] == 2
    assert not (undo / "eval.json").exists()  # the unlearning run was not evaluated either


def test_a_lora_run_is_distilled_from_its_merged_model(micro_world, micro_models, tmp_path):
    run = tmp_path / "lora"
    assert main([
        "unlearn", "--model_name_or_path", str(micro_models["target"]), "--data_dir", str(micro_world),
        "--output_dir", str(run), "--max_steps", "1", "--use_lora", "true", "--disable_tqdm", "true",
        "--do_final_eval", "false",
    ]) == 0  # fmt: skip
    assert (run / "adapter").is_dir()
    out = distill(run, tmp_path / "undo", DistillSettings(alpha=0.2, max_steps=1, disable_tqdm=True))
    merged, student = load_file(run / "model.safetensors"), load_file(out / "model.safetensors")
    assert merged.keys() == student.keys() and not any("lora" in k for k in student)


def test_a_report_of_a_distilled_run_describes_the_distillation(unlearned, distilled, tmp_path):
    assert main(["report", str(distilled["out"]), "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    line = next(x for x in text.splitlines() if "UNDO distillation" in x)
    assert "alpha 0.5, max_steps 30, learning_rate 0.003, seed 1" in line and f"`{unlearned.name}`" in line
