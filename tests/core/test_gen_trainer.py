"""GeN inside UnlearnTrainer: fresh probe batches in eval mode, skipped steps, logs, the LoRA reference.

Each test recomputes what the trainer logged with independent code (HF's own mean-token loss, a
separately loaded model) where it can. `pytest tests/test_gen_trainer.py`
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaForCausalLM

from llm_unlearn.core.streams import ProbeStream
from llm_unlearn.data.qa import QACollator, QADataset, pad_id
from llm_unlearn.methods import METHODS, Method
from tests.core.test_ngdiff import _zero_term
from tests.core.test_trainer import _trainer, tiny  # noqa: F401  (module fixture: micro model and data)

ENCODE = dict(prompt_format="chat_template", max_length=128)


def _log(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]


def _mean_nll(model, rows, tok) -> float:
    """HF's own loss: mean over the batch's answer tokens (labels -100 elsewhere)."""
    batch = QACollator(pad_id(tok))([QADataset(rows, tok, **ENCODE)[i] for i in range(len(rows))])
    with torch.no_grad():
        return float(model(**batch).loss)


@pytest.mark.parametrize("method", ["graddiff", "ngdiff"])
def test_gen_losses_are_the_objective_on_fresh_probe_batches_in_eval_mode(tiny, tmp_path, method):  # noqa: F811
    """With attention dropout 0.1, L0, L- and L+ equal the eval-mode objective on the probe examples.

    Before: L0 came from the step's own train-mode forward and L-/L+ from its own batches.
    """
    model_dir = tiny["dir"] / "model"
    # L0, L- and L+ are differences of two NLLs near 5.7; the methods score in fp32 (1e-6 rounding),
    # far below what the defects moved them by (train-mode dropout: up to 0.08; own batch vs fresh: ~1).
    model = LlamaForCausalLM.from_pretrained(model_dir, attention_dropout=0.1).double()
    trainer = _trainer(
        tiny, tmp_path, method=method, model=model, learning_rate=0.5, gen=True, gen_interval=1,
        forget_rows=tiny["forget"][:8], retain_rows=tiny["retain"][:12],
    )  # fmt: skip
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    log = _log(tmp_path)
    (probe,) = [r for r in log if "gen_l0" in r]
    (step,) = [r for r in log if "loss" in r]

    window = trainer._window_exclude
    forget_idx = trainer.probe_streams["forget"].indices(0, window["forget"])
    retain_idx = trainer.probe_streams["retain"].indices(0, window["retain"])
    assert len(window["forget"]) == 4 and not set(forget_idx) & window["forget"]  # fresh forget examples
    assert len(forget_idx) == 4 and not set(retain_idx) & window["retain"]

    def objective(weights: dict[str, torch.Tensor]) -> float:
        ref = LlamaForCausalLM.from_pretrained(model_dir, attention_dropout=0.1).double().eval()
        with torch.no_grad():
            for n, p in ref.named_parameters():  # tied embeddings: parameters, not the state dict
                p.copy_(weights[n])
        nll_f = _mean_nll(ref, [tiny["forget"][i] for i in forget_idx], tiny["tok"])
        nll_r = _mean_nll(ref, [tiny["retain"][i] for i in retain_idx], tiny["tok"])
        if method == "ngdiff":
            return nll_r / step["grad_norm_retain"] - nll_f / step["grad_norm_forget"]
        return nll_r - nll_f

    theta1 = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    mirror = {n: 2 * theta0[n] - theta1[n] for n in theta0}
    assert probe["gen_l0"] == pytest.approx(objective(theta0), abs=2e-5)
    assert probe["gen_l_minus"] == pytest.approx(objective(theta1), abs=2e-5)
    assert probe["gen_l_plus"] == pytest.approx(objective(mirror), abs=2e-5)
    assert trainer.model.training  # the probes gave the model back in train mode
    assert trainer.model.model.layers[0].self_attn.attention_dropout == 0.1


def test_probe_stream_is_a_pure_function_of_seed_and_step_and_fresh_when_the_set_allows():
    data = list(range(10))
    a = ProbeStream(data, 4, list, seed=3, salt=1)
    assert a.indices(7, {0, 1, 2}) == ProbeStream(data, 4, list, seed=3, salt=1).indices(7, {0, 1, 2})
    assert a.indices(7) != a.indices(8)
    assert not set(a.indices(5, {0, 1, 2, 3, 4, 5})) & {0, 1, 2, 3, 4, 5}
    # Fewer fresh examples than a batch: the fresh ones first, then the window's.
    fill = a.indices(5, set(range(8)))
    assert len(fill) == 4 and {8, 9} <= set(fill)
    # Ranks take different slices of the same order.
    r0, r1 = (ProbeStream(data, 2, list, seed=3, salt=1, rank=r).indices(4) for r in (0, 1))
    assert len(set(r0 + r1)) == 4


def _zero_method(combine: str):
    def nothing(model, forget, retain, ctx):
        return {"forget": _zero_term(model, "forget"), "retain": _zero_term(model, "retain")}

    return Method(f"zero_{combine}_gen_test", nothing, paper="", combine=combine)


@pytest.mark.parametrize("combine", ["normalized", "sum"])
def test_a_step_with_all_zero_gradients_is_not_a_probe_and_keeps_the_lr(tiny, tmp_path, combine):  # noqa: F811
    """Before: L0 = L- = L+ read as a failed fit and halved the lr every step (0.1, 0.05, 0.025)."""
    method = _zero_method(combine)
    METHODS[method.name] = method
    try:
        trainer = _trainer(tiny, tmp_path, method=method.name, combine=combine, learning_rate=0.1,
                           max_steps=3, gen=True, gen_interval=1)  # fmt: skip
        trainer.train()
    finally:
        del METHODS[method.name]
    assert trainer.lr_scheduler.probes == 0
    log = _log(tmp_path)
    assert not [r for r in log if "gen_l0" in r]
    assert [r["learning_rate"] for r in log if "learning_rate" in r] == [0.1, 0.1, 0.1]


def test_every_probe_reaches_the_log_whatever_the_logging_interval(tiny, tmp_path):  # noqa: F811
    """Before: with logging_steps 4 and gen_interval 4 no GeN record was written in 8 steps."""
    trainer = _trainer(tiny, tmp_path, method="ngdiff", learning_rate=0.1, max_steps=8, logging_steps=4,
                       gen=True, gen_interval=4, forget_rows=tiny["forget"][:8], per_device_train_batch_size=2)  # fmt: skip
    trainer.train()
    probes = [r for r in _log(tmp_path) if "gen_l0" in r]
    assert [r["step"] for r in probes] == [1, 5]
    assert trainer.lr_scheduler.probes == 2
    for r in probes:
        assert {"gen_lr", "gen_eta_star", "gen_curvature", "gen_slope", "gen_l_minus", "gen_l_plus",
                "gen_accepted", "gen_reason", "gen_next_lr"} <= r.keys()  # fmt: skip


def test_lora_reference_with_adapters_disabled_is_deterministic_under_dropout(tiny):  # noqa: F811
    """Before: the Trainer's train mode reached the base model, so two reference calls differed."""
    from peft import LoraConfig, get_peft_model

    from llm_unlearn.pipeline.unlearn import AdaptersDisabled

    base = LlamaForCausalLM.from_pretrained(tiny["dir"] / "model", attention_dropout=0.5)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.train()
    reference = AdaptersDisabled(model)
    batch = QACollator(pad_id(tiny["tok"]))(
        [QADataset(tiny["forget"][:4], tiny["tok"], **ENCODE)[i] for i in range(4)]
    )
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    first, second = reference(**inputs).logits, reference(**inputs).logits
    assert torch.equal(first, second)
    assert all(m.training for m in model.modules())  # the trained model's mode is given back
    with torch.no_grad(), model.disable_adapter():
        train_mode = model(**inputs).logits
    assert not torch.equal(train_mode, first)  # dropout is really active in train mode
