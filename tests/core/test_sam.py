"""Sharpness-aware unlearning (`--sam_rho`, sam.py): the exact step, restore, rho=0, NGDiff, GeN, LoRA, bad input.

The expected updates are recomputed by hand in float64 from HF's own mean-token loss. `pytest tests/test_sam.py`
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaForCausalLM

from llm_unlearn.core.config import UnlearnConfig
from llm_unlearn.core.sam import SharpnessAwareStep
from llm_unlearn.methods import METHODS, MethodContext
from llm_unlearn.runs.options import ConfigError
from tests.core.test_ngdiff import _window
from tests.core.test_trainer import _assert_same_update, _trainer, _update, tiny  # noqa: F401  (module fixture)

RHO = 0.05


def _grad(model, params, batch) -> list[torch.Tensor]:
    """Gradient of the batch's mean answer-token NLL over `params`."""
    return list(torch.autograd.grad(model(**batch).loss, params))


def _sam_gradients(model, forget, retain) -> tuple[torch.Tensor, torch.Tensor]:
    """(G_f, G_r) by hand: G_f = grad(-NLL_f) at w + rho g/||g|| with g = grad(-NLL_f)(w); G_r = grad NLL_r(w)."""
    params = [p for p in model.parameters() if p.requires_grad]
    g = [-x for x in _grad(model, params, forget)]
    norm = torch.cat([x.flatten() for x in g]).norm()
    theta = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, x in zip(params, g):
            p.add_(RHO * x / norm)
    g_f = [-x for x in _grad(model, params, forget)]
    with torch.no_grad():
        for p, t in zip(params, theta):
            p.copy_(t)
    g_r = _grad(model, params, retain)
    return torch.cat([x.flatten() for x in g_f]), torch.cat([x.flatten() for x in g_r])


def test_perturbation_is_rho_along_the_normalized_gradient_and_restores_weights_bit_for_bit():
    torch.manual_seed(0)
    w = [
        torch.randn(3, 2, dtype=torch.float64, requires_grad=True),
        torch.randn(4, dtype=torch.float64, requires_grad=True),
    ]
    a = [torch.rand(3, 2, dtype=torch.float64) + 0.5, torch.rand(4, dtype=torch.float64) + 0.5]
    before = [p.detach().clone() for p in w]

    def loss():  # a quadratic: grad = a * w, so the gradient at w + e is known in closed form
        return sum(0.5 * (ai * p * p).sum() for ai, p in zip(a, w))

    g = [ai * p.detach() for ai, p in zip(a, w)]
    norm = torch.cat([x.flatten() for x in g]).norm()
    step = SharpnessAwareStep(w, rho=0.3)
    assert step.set_gradient([x.clone() for x in g]) == pytest.approx(float(norm), rel=1e-12)
    with step.perturbed():
        for p, b, x in zip(w, before, g):
            assert torch.allclose(p.detach(), b + 0.3 * x / norm, rtol=0, atol=1e-15)
        moved = torch.autograd.grad(loss(), w)
    expected = [ai * (b + 0.3 * x / norm) for ai, b, x in zip(a, before, g)]
    assert all(torch.allclose(m, e, rtol=0, atol=1e-14) for m, e in zip(moved, expected))
    assert all(torch.equal(p.detach(), b) for p, b in zip(w, before))  # bit-exact restore


def test_graddiff_step_takes_the_forget_gradient_at_the_neighbour_and_the_retain_one_at_w(tiny, tmp_path):  # noqa: F811
    trainer = _trainer(tiny, tmp_path, learning_rate=0.1, sam_rho=RHO)
    trainer.model.double()
    forget, retain = _window(trainer)
    g_f, g_r = _sam_gradients(trainer.model, forget, retain)
    update = _update(trainer)
    _assert_same_update(update, -0.1 * (g_f + g_r))
    # The neighbour matters: the plain step differs by far more than the tolerance above.
    plain = _update(
        _trainer(
            tiny,
            tmp_path / "plain",
            learning_rate=0.1,
            model=LlamaForCausalLM.from_pretrained(tiny["dir"] / "model").double(),
        )
    )
    assert (plain - update).norm() / update.norm() > 1e-3
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    step = next(r for r in log if "loss_sam_forget" in r)
    assert (
        step["sam_forget_grad_norm"] > 0 and step["loss_sam_forget"] > step["loss_forget"]
    )  # the neighbour is worse for the objective


def test_rho_zero_trains_bit_identically_to_no_sam(tiny, tmp_path):  # noqa: F811
    runs = [
        _trainer(tiny, tmp_path / name, max_steps=2, per_device_train_batch_size=2, learning_rate=0.1, **kw)
        for name, kw in (("plain", {}), ("zero", {"sam_rho": 0.0}))
    ]
    for t in runs:
        t.train()
    for a, b in zip(*(t.model.parameters() for t in runs)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("combine", ["sum", "normalized", "pcgrad"])
def test_window_split_into_accumulation_steps_gives_the_same_sam_update(tiny, tmp_path, combine):  # noqa: F811
    """delta comes from the whole window's forget gradient: a per-micro-batch delta would differ.

    float64: under pcgrad nearly opposite term gradients amplify fp32 rounding past the tolerance.
    """
    whole = _trainer(tiny, tmp_path / "a", combine=combine, sam_rho=RHO, retain_weight=0.5)
    split = _trainer(tiny, tmp_path / "b", combine=combine, sam_rho=RHO, retain_weight=0.5,
                     per_device_train_batch_size=1, gradient_accumulation_steps=4)  # fmt: skip
    whole.model.double(), split.model.double()
    _assert_same_update(_update(split), _update(whole))


def test_ngdiff_normalizes_the_forget_gradient_taken_at_the_neighbour(tiny, tmp_path):  # noqa: F811
    trainer = _trainer(tiny, tmp_path, method="ngdiff", learning_rate=0.1, sam_rho=RHO)
    trainer.model.double()
    forget, retain = _window(trainer)
    g_f, g_r = _sam_gradients(trainer.model, forget, retain)
    d = g_r / g_r.norm() + g_f / g_f.norm()
    _assert_same_update(_update(trainer), -0.1 * d)


@pytest.mark.parametrize("method", ["graddiff", "ngdiff"])
def test_gen_probes_the_unperturbed_weights(tiny, tmp_path, method):  # noqa: F811
    """L0 at theta0 and L- at theta1 as in a run without SAM: the probes never see theta + delta."""
    model = LlamaForCausalLM.from_pretrained(tiny["dir"] / "model").double()
    trainer = _trainer(
        tiny, tmp_path, method=method, model=model, learning_rate=0.5, gen=True, gen_interval=1, sam_rho=0.5,
        forget_rows=tiny["forget"][:8], retain_rows=tiny["retain"][:12],
    )  # fmt: skip
    theta0 = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    (probe,) = [r for r in log if "gen_l0" in r]
    theta1 = [p.detach().clone() for p in model.parameters()]
    forget_rows = [
        tiny["forget"][i]
        for i in trainer.probe_streams["forget"].indices(0, trainer._window_exclude["forget"])
    ]
    retain_rows = [
        tiny["retain"][i]
        for i in trainer.probe_streams["retain"].indices(0, trainer._window_exclude["retain"])
    ]
    collate, data = trainer.data_collator, trainer.train_dataset
    forget = collate(
        [
            data.__class__(forget_rows, tiny["tok"], prompt_format="chat_template", max_length=128)[i]
            for i in range(len(forget_rows))
        ]
    )
    retain = collate(
        [
            data.__class__(retain_rows, tiny["tok"], prompt_format="chat_template", max_length=128)[i]
            for i in range(len(retain_rows))
        ]
    )
    step = next(r for r in log if "loss" in r)

    def objective(weights) -> float:
        with torch.no_grad():
            for p, w in zip(model.parameters(), weights):
                p.copy_(w)
            nll_f, nll_r = float(model(**forget).loss), float(model(**retain).loss)
        if method == "ngdiff":
            return nll_r / step["grad_norm_retain"] - nll_f / step["grad_norm_forget"]
        return nll_r - nll_f

    assert probe["gen_l0"] == pytest.approx(objective(theta0), abs=2e-5)
    assert probe["gen_l_minus"] == pytest.approx(objective(theta1), abs=2e-5)


def test_lora_sam_moves_only_the_adapters_by_the_hand_computed_step(tiny, tmp_path):  # noqa: F811
    from peft import LoraConfig, get_peft_model

    base = LlamaForCausalLM.from_pretrained(tiny["dir"] / "model").double()
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    # A nonzero B, so that the forget gradient reaches A too and the neighbour moves both.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    trainer = _trainer(tiny, tmp_path, learning_rate=0.1, model=model, sam_rho=RHO)
    forget, retain = _window(trainer)
    g_f, g_r = _sam_gradients(model, forget, retain)
    trainable = [p.requires_grad for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    moved = [p.detach() - b for p, b in zip(model.parameters(), before)]
    assert all(
        torch.equal(m, torch.zeros_like(m)) for m, t in zip(moved, trainable) if not t
    )  # base untouched
    update = torch.cat([m.flatten() for m, t in zip(moved, trainable) if t])
    _assert_same_update(update, -0.1 * (g_f + g_r))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_smooths_exactly_its_forget_stream_terms(tiny, tmp_path, name):  # noqa: F811
    """Two micro-batches per step (the pre-pass spans the window); logged terms at w and at w + delta."""
    trainer = _trainer(tiny, tmp_path, method=name, sam_rho=RHO, learning_rate=1e-3, optim="adamw_torch",
                       per_device_train_batch_size=2, gradient_accumulation_steps=2)  # fmt: skip
    update = _update(trainer)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    step = next(r for r in log if "loss" in r)
    smoothed = {k.removeprefix("loss_sam_") for k in step if k.startswith("loss_sam_")}
    terms = {k.removeprefix("loss_") for k in step if k.startswith("loss_") and not k.startswith("loss_sam_")}
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    retain = trainer.data_collator([trainer.retain_dataset[i] for i in range(2)])
    raw = METHODS[name].fn(trainer.model, batch, retain, MethodContext(trainer.args, trainer.reference_model))
    assert smoothed == {n for n, t in raw.items() if t.stream == "forget"} and smoothed <= terms
    assert all(torch.isfinite(torch.tensor(step[f"loss_sam_{n}"])) for n in smoothed)
    assert step["sam_forget_grad_norm"] > 0 and update.abs().max() > 0


@pytest.mark.parametrize("rho", [-0.1, float("nan")])
def test_negative_or_nan_rho_is_one_clear_error(tmp_path, rho):
    with pytest.raises(ConfigError, match=r"--sam_rho .* must be a finite number >= 0"):
        UnlearnConfig(output_dir=str(tmp_path), sam_rho=rho, use_cpu=True)
