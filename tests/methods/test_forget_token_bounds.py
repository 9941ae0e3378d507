"""Which forget tokens graddiff/ngdiff ascend on and how far: `--forget_token_siblings` and `--forget_token_nll_cap`."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import yaml

from llm_unlearn.data.qa import IGNORE_INDEX as X
from llm_unlearn.data.rare_tokens import keep_contrast_labels
from llm_unlearn.methods.common import capped_nll_sum, nll_sum


class FixedLogits(torch.nn.Module):
    """A "model" whose logits are a parameter: the loss and its gradient can be worked out by hand."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, input_ids, attention_mask):
        return type("Out", (), {"logits": self.logits})()


def test_capped_nll_is_min_of_each_token_nll_and_the_cap_and_has_no_gradient_past_it():
    # One sequence of 4 positions over 2 tokens; labels shifted by one: positions 0..2 predict labels 1..3.
    logits = torch.tensor([[[0.0, 0.0], [3.0, 0.0], [0.0, 5.0], [0.0, 0.0]]])
    batch = {"input_ids": torch.zeros(1, 4, dtype=torch.long), "attention_mask": torch.ones(1, 4),
             "labels": torch.tensor([[X, 0, 0, 0]])}  # fmt: skip
    # By hand: -log softmax. Position 0 -> token 0: log 2. Position 1 -> token 0: log(1 + e^-3).
    # Position 2 -> token 0 against logit 5: 5 + log(1 + e^-5).
    nll = [math.log(2), math.log1p(math.exp(-3)), 5 + math.log1p(math.exp(-5))]
    model = FixedLogits(logits)
    assert float(nll_sum(model, batch).detach()) == pytest.approx(sum(nll), rel=1e-6)
    cap = 1.0
    loss = capped_nll_sum(model, batch, cap)
    assert float(loss.detach()) == pytest.approx(nll[0] + nll[1] + cap, rel=1e-6)
    loss.backward()
    grad = model.logits.grad[0]
    assert torch.all(grad[2] == 0)  # past the cap: no gradient
    assert torch.all(grad[3] == 0)  # the last position predicts nothing
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() > 0
    # Below every token's NLL the bound is a constant: the whole term has no gradient.
    model.logits.grad = None
    capped_nll_sum(model, batch, 0.01).backward()
    assert torch.all(model.logits.grad == 0)


def feature(prompt: int, answer: list[int]) -> dict:
    return {"input_ids": list(range(prompt)) + answer, "labels": [X] * prompt + answer}


def test_contrast_keeps_the_tokens_no_sibling_answer_has():
    forget = [
        feature(2, [40, 41, 7, 8, 9]),  # "Oaxaca Mexico is where A was-born <end>"
        feature(1, [7, 8, 9]),  # nothing of its own: keeps the whole answer
    ]
    siblings = [
        [feature(2, [50, 7, 8, 9]), feature(3, [51, 41, 7, 8, 9])],  # 41 ("Mexico") is another author's too
        [feature(1, [7, 8, 9])],
    ]
    assert keep_contrast_labels(forget, siblings) == (1 + 3, 5 + 3)
    assert forget[0]["labels"] == [X, X, 40, X, X, X, X]
    assert forget[1]["labels"] == [X, 7, 8, 9]
    with pytest.raises(ValueError):
        keep_contrast_labels(forget, siblings[:1])  # one list of siblings per forget example


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--forget_token_nll_cap", "lots"], "--forget_token_nll_cap lots is out of range"),
        (["--forget_token_nll_cap", "0"], "a positive number of nats, or holdout"),
        (["--forget_token_nll_cap", "nan"], "a positive number of nats, or holdout"),
        (["--forget_token_siblings", "-1"], "--forget_token_siblings -1 is out of range"),
        (["--forget_token_siblings", "5", "--forget_token_max_df", "0"], "pass one of them"),
    ],
)
def test_bad_bounds_are_refused_in_one_line(flags, message):
    from llm_unlearn.cli.parse import parse_config
    from llm_unlearn.runs.options import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as info:
        parse_config(["--forget_split", "forget10", "--output_dir", "/tmp/never", *flags])
    assert "\n" not in str(info.value)


def _argv(micro_world, micro_models, out, *flags) -> list[str]:
    return ["unlearn", "--model_name_or_path", str(micro_models["target"]), "--data_dir", str(micro_world),
            "--forget_split", "forget10", "--max_steps", "2", "--output_dir", str(out),
            "--per_device_train_batch_size", "4", "--use_cpu", "true", "--do_final_eval", "false",
            "--report_to", "none", *flags]  # fmt: skip


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--method", "graddiff", "--forget_token_nll_cap", "holdout"], "reads the stop rule's holdout split"),
        (["--method", "npo", "--forget_token_nll_cap", "3"], "npo does not ascend; use it with --method graddiff, ngdiff"),
    ],
)  # fmt: skip
def test_a_cap_the_run_cannot_use_is_refused_before_any_output(
    micro_world, micro_models, tmp_path, capsys, flags, message
):
    from llm_unlearn.cli import main

    out = tmp_path / "run"
    assert main(_argv(micro_world, micro_models, out, *flags)) != 0
    err = capsys.readouterr().err
    assert message in err
    assert not out.exists()


# The cap bounds an ascent (graddiff, ngdiff), so these runs take `--auto`'s rule over NGDiff on whole answers.
NGDIFF_WHOLE = [
    "--method",
    "ngdiff",
    "--forget_token_max_df",
    "1",
    "--stop_repair",
    "false",
    "--stop_utility_tolerance",
    "0",
]


def test_holdout_cap_is_the_holdout_answers_mean_token_nll_and_the_run_records_it(
    micro_world, micro_models, tmp_path
):
    """The cap `holdout` resolves to, recomputed independently: the evaluation's per-answer mean NLL
    (eval/scoring.py), weighted by each answer's token count, under the target before training."""
    import yaml

    from llm_unlearn.cli import main
    from llm_unlearn.data.qa import QADataset, load_split
    from llm_unlearn.eval.scoring import answer_losses
    from llm_unlearn.models.loading import load_model, load_tokenizer

    out = tmp_path / "run"
    flags = [
        "--auto",
        *NGDIFF_WHOLE,
        "--forget_token_nll_cap",
        "holdout",
        "--max_steps",
        "3",
        "--stop_check_interval",
        "1",
    ]
    assert main(_argv(micro_world, micro_models, out, *flags)) == 0
    recorded = float(yaml.safe_load((out / "unlearn_config.yaml").read_text())["forget_token_nll_cap"])

    target = str(micro_models["target"])
    tokenizer, model = load_tokenizer(target), load_model(target)
    rows = load_split("holdout10", data_dir=micro_world)
    encode = dict(prompt_format="chat_template", max_length=1024, system_prompt=None)
    counts = [sum(t != X for t in f["labels"]) for f in QADataset(rows, tokenizer, **encode).features]
    with torch.no_grad():
        means = answer_losses(model, tokenizer, [r["question"] for r in rows], [r["answer"] for r in rows],
                              batch_size=1, **encode)  # fmt: skip
    expected = float(sum(m * n for m, n in zip(means, counts)) / sum(counts))
    assert recorded == pytest.approx(expected, rel=1e-4)
    assert 0 < recorded < 50

    # The same command resumes an interrupted run: `holdout` now is the number recorded then, not another
    # setting (it was refused as "forget_token_nll_cap: '5.6' there, 'holdout' now").
    from llm_unlearn.runs.folder import write_status

    write_status(out, "failed", method="ngdiff", error="KeyboardInterrupt: ")
    assert main(_argv(micro_world, micro_models, out, *flags)) == 0
    again = float(yaml.safe_load((out / "unlearn_config.yaml").read_text())["forget_token_nll_cap"])
    assert again == pytest.approx(recorded, rel=1e-6)


def test_unlearn_resolves_the_holdout_cap_on_its_own_copy_of_the_config(micro_world, micro_models, tmp_path):
    """Python callers reuse a config for another model or a rerun: it keeps `holdout`, not the first
    model's nats."""
    from llm_unlearn.cli.parse import parse_config
    from llm_unlearn.pipeline.unlearn import unlearn

    flags = ["--auto", *NGDIFF_WHOLE, "--forget_token_nll_cap", "holdout", "--max_steps", "1"]
    model_args, data, config, eval_args = parse_config(
        _argv(micro_world, micro_models, tmp_path / "r", *flags)[1:]
    )
    run = unlearn(model_args, data, config, eval_args)
    assert config.forget_token_nll_cap == "holdout"
    assert float(yaml.safe_load((run / "unlearn_config.yaml").read_text())["forget_token_nll_cap"]) > 0


def test_siblings_keep_what_sets_each_answer_apart_and_log_how_many(
    micro_world, micro_models, tmp_path, caplog
):
    """The logged count equals keep_contrast_labels on siblings built here the same way (data/constructed.py)."""
    from llm_unlearn.cli import main
    from llm_unlearn.data.constructed import construct_perturbed
    from llm_unlearn.data.qa import QADataset, load_split
    from llm_unlearn.models.loading import load_tokenizer

    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="llm_unlearn"):
        assert (
            main(_argv(micro_world, micro_models, out, "--method", "ngdiff", "--forget_token_siblings", "3"))
            == 0
        )
    (line,) = [r.getMessage() for r in caplog.records if "sibling answers has" in r.getMessage()]
    logged = tuple(int(w) for w in line.split()[3:6:2])

    tokenizer = load_tokenizer(str(micro_models["target"]))
    encode = dict(prompt_format="chat_template", max_length=1024, system_prompt=None)
    forget = load_split("forget10", data_dir=micro_world)
    siblings = construct_perturbed(forget, load_split("retain90", data_dir=micro_world), k=3, seed=42)
    features = QADataset(forget, tokenizer, **encode).features
    encoded = [QADataset([dict(question=r["question"], answer=a) for a in s], tokenizer, **encode).features
               for r, s in zip(forget, siblings)]  # fmt: skip
    assert logged == keep_contrast_labels(features, encoded)
    assert 0 < logged[0] < logged[1]


@pytest.mark.parametrize("select", [["--forget_token_max_df", "0"], ["--forget_token_siblings", "3"]])
def test_holdout_cap_counts_only_the_holdout_tokens_the_same_selection_keeps(
    micro_world, micro_models, tmp_path, select
):
    """With a token selection, the cap is the mean NLL of the holdout answer tokens that the same selection
    keeps (rare in the retain answers, or in no sibling answer), recomputed here from the logits."""
    import yaml

    from llm_unlearn.cli import main
    from llm_unlearn.data.constructed import construct_perturbed
    from llm_unlearn.data.qa import QADataset, load_split
    from llm_unlearn.data.rare_tokens import document_frequency, keep_rare_labels
    from llm_unlearn.models.loading import load_model, load_tokenizer

    out = tmp_path / "run"
    flags = [
        "--auto",
        *NGDIFF_WHOLE,
        "--forget_token_nll_cap",
        "holdout",
        "--max_steps",
        "2",
        "--stop_check_interval",
        "1",
    ]
    assert main(_argv(micro_world, micro_models, out, *flags, *select)) == 0
    recorded = float(yaml.safe_load((out / "unlearn_config.yaml").read_text())["forget_token_nll_cap"])

    target = str(micro_models["target"])
    tokenizer, model = load_tokenizer(target), load_model(target).eval()
    encode = dict(prompt_format="chat_template", max_length=1024, system_prompt=None)
    holdout, retain = (
        load_split("holdout10", data_dir=micro_world),
        load_split("retain90", data_dir=micro_world),
    )
    features = QADataset(holdout, tokenizer, **encode).features
    whole = [list(f["labels"]) for f in features]
    if select[0] == "--forget_token_max_df":
        keep_rare_labels(features, document_frequency(QADataset(retain, tokenizer, **encode).features), 0.0)
    else:
        siblings = construct_perturbed(holdout, retain, k=3, seed=42)
        encoded = [QADataset([dict(question=r["question"], answer=a) for a in s], tokenizer, **encode).features
                   for r, s in zip(holdout, siblings)]  # fmt: skip
        keep_contrast_labels(features, encoded)
    nll = []
    with torch.no_grad():
        for f in features:
            logp = torch.log_softmax(model(input_ids=torch.tensor([f["input_ids"]])).logits[0].double(), -1)
            nll += [-float(logp[i - 1, t]) for i, t in enumerate(f["labels"]) if t != X]
    assert sum(t != X for f in features for t in f["labels"]) < sum(
        t != X for w in whole for t in w
    )  # a selection
    assert recorded == pytest.approx(sum(nll) / len(nll), rel=1e-4)


def test_more_siblings_than_the_retain_split_has_is_refused_in_one_line_without_output(
    micro_world, micro_models, tmp_path, capsys
):
    from llm_unlearn.cli import main

    out = tmp_path / "run"
    assert (
        main(_argv(micro_world, micro_models, out, "--method", "ngdiff", "--forget_token_siblings", "500"))
        != 0
    )
    err = capsys.readouterr().err.strip().splitlines()
    line = next(x for x in err if "--forget_token_siblings 500" in x)
    assert "wrong answers could be built" in line and "pass a smaller number" in line
    assert not out.exists()


def test_a_run_that_trained_with_other_nats_is_not_resumed_under_holdout(
    micro_world, micro_models, tmp_path, capsys
):
    """`holdout` resolves again to the same nats for its own run; a run recorded with another number (given
    explicitly, or on other weights) would go on from its checkpoint under another bound: refused."""
    from transformers import TrainerCallback

    from llm_unlearn.cli import main
    from llm_unlearn.cli.parse import parse_config
    from llm_unlearn.pipeline.unlearn import unlearn

    class KilledAfterCheckpoint2(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise RuntimeError("killed")

    out = tmp_path / "run"
    flags = ["--auto", *NGDIFF_WHOLE, "--forget_token_nll_cap", "holdout", "--max_steps", "3",
             "--stop_check_interval", "1", "--save_strategy", "steps", "--save_steps", "1"]  # fmt: skip
    argv = _argv(micro_world, micro_models, out, *flags)
    with pytest.raises(RuntimeError, match="killed"):
        unlearn(*parse_config(argv[1:]), callbacks=[KilledAfterCheckpoint2()])
    assert (out / "checkpoint-2").is_dir()
    config = out / "unlearn_config.yaml"
    resolved = yaml.safe_load(config.read_text())["forget_token_nll_cap"]
    config.write_text(
        config.read_text().replace(f"forget_token_nll_cap: '{resolved}'", "forget_token_nll_cap: '3.0'")
    )
    assert yaml.safe_load(config.read_text())["forget_token_nll_cap"] == "3.0"
    assert main(argv) == 2
    assert "trained with --forget_token_nll_cap 3.0, but holdout gives" in capsys.readouterr().err
    config.write_text(
        config.read_text().replace("forget_token_nll_cap: '3.0'", f"forget_token_nll_cap: '{resolved}'")
    )
    assert main(argv) == 0  # its own nats: resumed from checkpoint-2
