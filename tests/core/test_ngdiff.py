"""NGDiff's normalized combination: exact update, invariants, accumulation, zero gradients, config rules."""

from __future__ import annotations

import json

import pytest
import torch

from llm_unlearn.core.config import UnlearnConfig
from llm_unlearn.core.trainer_combine import read_combiner_state
from llm_unlearn.eval.runs import read_train_log
from llm_unlearn.methods import METHODS, Method, Term
from llm_unlearn.runs.options import ConfigError
from tests.core.test_trainer import (  # noqa: F401  (module fixture: micro model and data)
    _trainer,
    _update,
    assert_resume_matches_uninterrupted_run,
    tiny,
    tiny_unlearn,
)


def _grads(model, batch) -> torch.Tensor:
    """Gradient of the batch's mean answer-token NLL (HF's loss), flattened."""
    model.zero_grad()
    loss = model(**batch).loss
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return torch.cat([g.flatten() for g in grads])


def _window(trainer):
    collate = trainer.data_collator
    forget = collate([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    retain = collate([trainer.retain_dataset[i] for i in range(len(trainer.retain_dataset))])
    return forget, retain


def test_sgd_update_equals_minus_lr_times_normalized_gradient_difference(tiny, tmp_path):  # noqa: F811
    trainer = _trainer(tiny, tmp_path, method="ngdiff", learning_rate=0.1)
    # float64, so that the update is not lost in rounding of weights near 1 (the norm layers).
    trainer.model.double()
    forget, retain = _window(trainer)
    g_f, g_r = _grads(trainer.model, forget), _grads(trainer.model, retain)
    d = g_r / g_r.norm() - g_f / g_f.norm()
    update = _update(trainer)
    assert (update + 0.1 * d).norm() / (0.1 * d).norm() < 1e-6
    # The direction's invariants, for this (arbitrary) angle between the tasks.
    assert torch.dot(d, g_r) >= 0 and torch.dot(d, g_f) <= 0
    cos = torch.dot(g_f, g_r) / (g_f.norm() * g_r.norm())
    assert d.norm() ** 2 == pytest.approx(float(2 * (1 - cos)), rel=1e-5)


def test_lora_ngdiff_update_is_the_normalized_difference_over_the_adapters_only(tiny, tmp_path):  # noqa: F811
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(tiny["dir"] / "model").double()
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    trainer = _trainer(tiny, tmp_path, method="ngdiff", learning_rate=0.1, model=model)
    forget, retain = _window(trainer)
    trainable = [p.requires_grad for p in model.parameters()]

    def adapter_grads(batch):
        model.zero_grad()
        grads = torch.autograd.grad(model(**batch).loss, [p for p in model.parameters() if p.requires_grad])
        return torch.cat([g.flatten() for g in grads])

    g_f, g_r = adapter_grads(forget), adapter_grads(retain)
    d = g_r / g_r.norm() - g_f / g_f.norm()
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    moved = [p.detach() - b for p, b in zip(model.parameters(), before)]
    assert all(m.abs().max() == 0 for m, t in zip(moved, trainable) if not t)  # base weights untouched
    update = torch.cat([m.flatten() for m, t in zip(moved, trainable) if t])
    assert (update + 0.1 * d).norm() / (0.1 * d).norm() < 1e-6


def test_ngdiff_accumulation_normalizes_once_per_step_not_per_micro_batch(tiny, tmp_path):  # noqa: F811
    trainers = [
        _trainer(tiny, tmp_path / "a", method="ngdiff", per_device_train_batch_size=4),
        _trainer(
            tiny,
            tmp_path / "b",
            method="ngdiff",
            per_device_train_batch_size=1,
            gradient_accumulation_steps=4,
        ),
    ]
    for trainer in trainers:
        trainer.model.double()  # so the comparison is not limited by fp32 rounding of the weights
    whole, split = (_update(t) for t in trainers)
    assert (split - whole).norm() / whole.norm() < 1e-6


def test_step_log_has_term_norms_cosine_and_direction_norm(tiny, tmp_path):  # noqa: F811
    trainer = _trainer(tiny, tmp_path, method="ngdiff", learning_rate=0.1)
    trainer.train()
    record = next(
        json.loads(line)
        for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
        if "grad_norm_forget" in line
    )
    # Logged in the terms' convention (the forget term is -NLL): cos(-g_F, g_R) = -cos(g_F, g_R),
    # so ||d||^2 = 2 (1 - cos(g_F, g_R)) = 2 (1 + logged cosine).
    cos = record["cos_forget_retain"]
    assert record["grad_norm"] == pytest.approx((2 * (1 + cos)) ** 0.5, rel=1e-4)
    assert record["grad_norm_forget"] > 0 and record["grad_norm_retain"] > 0
    assert record["dropped_terms"] == 0 and record["skipped"] == 0


def _zero_term(model, stream: str) -> Term:
    return Term(sum(p.sum() for p in model.parameters()) * 0.0, stream=stream)


def test_a_term_with_zero_gradient_is_dropped_and_the_other_drives_the_step(tiny, tmp_path):  # noqa: F811
    from llm_unlearn.methods.common import nll_sum

    def retain_only(model, forget, retain, ctx):
        return {
            "forget": _zero_term(model, "forget"),
            "retain": Term(nll_sum(model, retain), stream="retain"),
        }

    METHODS["zero_forget_test"] = Method("zero_forget_test", retain_only, paper="", combine="normalized")
    try:
        trainer = _trainer(tiny, tmp_path, method="zero_forget_test", learning_rate=0.1, combine="normalized")
        trainer.model.double()
        _, retain = _window(trainer)
        g_r = _grads(trainer.model, retain)
        update = _update(trainer)
    finally:
        del METHODS["zero_forget_test"]
    assert (update + 0.1 * g_r / g_r.norm()).norm() / 0.1 < 1e-6


def test_all_zero_gradients_skip_the_step_and_leave_optimizer_state_alone(tiny, tmp_path):  # noqa: F811
    def nothing(model, forget, retain, ctx):
        return {"forget": _zero_term(model, "forget"), "retain": _zero_term(model, "retain")}

    METHODS["zero_all_test"] = Method("zero_all_test", nothing, paper="", combine="normalized")
    try:
        trainer = _trainer(tiny, tmp_path, method="zero_all_test", optim="adamw_torch", combine="normalized")
        update = _update(trainer)
    finally:
        del METHODS["zero_all_test"]
    assert update.abs().max() == 0
    assert all(not state for state in trainer.optimizer.state.values())


def test_normalized_combination_defaults_to_no_clipping_and_refuses_fp16():
    assert UnlearnConfig(output_dir="x", method="ngdiff").max_grad_norm == 0.0
    assert UnlearnConfig(output_dir="x", method="graddiff").max_grad_norm == 1.0
    assert UnlearnConfig(output_dir="x", method="graddiff", combine="normalized").max_grad_norm == 0.0
    with pytest.raises(ConfigError, match="fp16"):
        UnlearnConfig(output_dir="x", method="ngdiff", fp16=True, use_cpu=True)


@pytest.mark.parametrize("method", ["ngdiff", "graddiff"])
def test_gen_probes_advance_adamw_once_per_step_and_log_the_fit(tiny, tmp_path, method):  # noqa: F811
    trainer = _trainer(tiny, tmp_path, method=method, optim="adamw_torch", learning_rate=1e-3, max_steps=3,
                       gen=True, gen_interval=1)  # fmt: skip
    trainer.train()
    states = [s for s in trainer.optimizer.state.values() if s]
    assert states and all(int(s["step"]) == 3 for s in states)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    probes = [r for r in log if "gen_eta_star" in r]
    assert len(probes) == 3
    assert all({"gen_l0", "gen_l_minus", "gen_l_plus", "gen_accepted"} <= r.keys() for r in probes)
    assert trainer.lr_scheduler.probes == 3
    lrs = [r["learning_rate"] for r in log if "learning_rate" in r]
    assert lrs[0] == pytest.approx(1e-3) and len(set(lrs)) > 1  # eta moved after the first fit


def test_gen_run_resumes_from_a_checkpoint_with_the_same_result(tiny, tmp_path):  # noqa: F811
    assert_resume_matches_uninterrupted_run(tiny, tmp_path, method="ngdiff", gen=True, gen_interval=1)


def test_terms_from_one_forward_pass_keep_the_graph_and_get_their_own_gradients():
    from llm_unlearn.core.optim import NormalizedCombiner

    torch.manual_seed(0)
    lin, x = torch.nn.Linear(3, 2), torch.randn(4, 3)
    params = list(lin.parameters())
    shared = lin(x)
    combiner = NormalizedCombiner(params)
    combiner.accumulate({"a": shared.sum(), "b": shared.pow(2).sum()})  # would fail without retain_graph
    assert combiner.shared_graph is True
    expected = torch.autograd.grad(lin(x).pow(2).sum(), params)
    for got, want in zip(combiner.buffers["b"], expected):
        torch.testing.assert_close(got, want)
    separate = NormalizedCombiner(params)
    separate.accumulate({"a": lin(x).sum(), "b": lin(x).pow(2).sum()})  # two forward passes
    assert separate.shared_graph is False


def _combine_linear(combiner, params, scales: dict[str, float]) -> dict:
    """One step of `combiner` on terms scale * <c_k, p>, whose gradients are scale * c_k (known by hand)."""
    (p,) = params
    c = {"forget": torch.tensor([3.0, 4.0]), "retain": torch.tensor([0.0, 2.0])}
    combiner.reset()
    combiner.accumulate({name: scale * (c[name] * p).sum() for name, scale in scales.items()})
    return combiner.combine(dict.fromkeys(scales, 1.0))


def test_a_term_below_vanish_ratio_of_its_peak_norm_is_left_out_until_it_recovers():
    from llm_unlearn.core.optim import NormalizedCombiner

    p = torch.nn.Parameter(torch.zeros(2))
    combiner = NormalizedCombiner([p], vanish_ratio=1e-3)
    # Step 1: ||g_F|| = 5, ||g_R|| = 2, both kept: d = (3, 4)/5 + (0, 2)/2.
    stats = _combine_linear(combiner, [p], {"forget": 1.0, "retain": 1.0})
    assert p.grad.tolist() == pytest.approx([0.6, 1.8]) and stats["vanished_terms"] == 0
    # Step 2: the forget gradient shrinks to 5e-4 / 5 = 1e-4 of its peak (NPO saturating): only the retain
    # direction is left, where plain normalization would have taken the forget direction at full length.
    stats = _combine_linear(combiner, [p], {"forget": 1e-4, "retain": 1.0})
    assert p.grad.tolist() == pytest.approx([0.0, 1.0])
    assert (stats["vanished_terms"], stats["dropped_terms"], stats["skipped"]) == (1, 0, 0)
    assert stats["grad_norm_forget"] == pytest.approx(5e-4)
    # Step 3: back to 2e-3 of its peak: kept again, at full length; the peak is still step 1's.
    stats = _combine_linear(combiner, [p], {"forget": 2e-3, "retain": 1.0})
    assert p.grad.tolist() == pytest.approx([0.6, 1.8]) and stats["vanished_terms"] == 0
    assert combiner.peak_norms == pytest.approx({"forget": 5.0, "retain": 2.0})
    # Both vanished: the step is skipped, as when every gradient is zero.
    stats = _combine_linear(combiner, [p], {"forget": 1e-4, "retain": 1e-4})
    assert p.grad is None and (stats["vanished_terms"], stats["skipped"]) == (2, 1)
    # vanish_ratio 0 normalizes any nonzero term to full length (NGDiff as published).
    plain = NormalizedCombiner([p])
    _combine_linear(plain, [p], {"forget": 1.0, "retain": 1.0})
    stats = _combine_linear(plain, [p], {"forget": 1e-4, "retain": 1.0})
    assert p.grad.tolist() == pytest.approx([0.6, 1.8]) and stats["vanished_terms"] == 0


def test_vanish_peaks_are_saved_with_each_checkpoint_and_a_resumed_run_matches_a_straight_one(tiny, tmp_path):  # noqa: F811
    # Ratio 0.999: a term is left out whenever its norm is below its peak, so steps 3-4 depend on steps 1-2's
    # norms; a resume that forgot them keeps every term at step 3 and ends elsewhere (checked by hand).
    assert_resume_matches_uninterrupted_run(
        tiny, tmp_path, method="ngdiff", vanish_ratio=0.999, logging_steps=1
    )
    log = [json.loads(line) for line in (tmp_path / "straight" / "train_log.jsonl").read_text().splitlines()]
    vanished = {r["step"]: r["vanished_terms"] for r in log if "vanished_terms" in r}
    assert vanished[1] == 0 and any(vanished[s] for s in (3, 4))


def test_vanish_ratio_out_of_range_is_one_clear_error():
    with pytest.raises(ConfigError, match="vanish_ratio"):
        UnlearnConfig(output_dir="x", method="ngdiff", vanish_ratio=1.0)


def _vanish_run(tiny, out, callbacks=None, **config):  # noqa: F811
    """The tiny ngdiff run whose forget norm falls below its peak at steps 2, 4, 5, 6 (ratio 0.999, seed 3)."""
    settings = dict(method="ngdiff", vanish_ratio=0.999, max_steps=6, logging_steps=1, save_total_limit=None)
    return tiny_unlearn(tiny, out, callbacks, **(settings | config))


def _log(out) -> list[dict]:
    return read_train_log(out / "train_log.jsonl")


def test_vanish_stop_ends_training_after_that_many_steps_without_the_forget_term(tiny, tmp_path):  # noqa: F811
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    class Weights(TrainerCallback):
        by_step: dict[int, dict] = {}

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.by_step[state.global_step] = {n: t.detach().clone() for n, t in model.state_dict().items()}

    # Without the option: which steps left the forget term out, and the weights after each step.
    free = tmp_path / "free"
    _vanish_run(tiny, free, callbacks=[Weights()])
    counts = {r["step"]: r["forget_vanished_steps"] for r in _log(free) if "forget_vanished_steps" in r}
    assert len(counts) == 6 and counts[1] == 0
    limit = 2
    end = min(step for step, n in counts.items() if n >= limit)
    assert end < 6, "the run must reach the limit before max_steps for this test to mean anything"
    # With it: training ends after the step at which the count reaches the limit, with that step's weights.
    stopped = tmp_path / "stopped"
    _vanish_run(tiny, stopped, vanish_stop=limit)
    log = _log(stopped)
    assert max(r["step"] for r in log if "loss" in r) == end
    assert [r for r in log if "training_stopped" in r] == [
        {"step": end, "training_stopped": "forget_vanished", "forget_vanished_steps": limit}
    ]
    expected = Weights.by_step[end]
    for name, value in load_file(stopped / "model.safetensors").items():
        torch.testing.assert_close(value, expected[name])


def test_vanish_stop_count_is_resumed_from_the_checkpoint(tiny, tmp_path):  # noqa: F811
    # The limit is reached at step 4 with one vanished step before the step-2 checkpoint: a resume that
    # counted from 0 would train on to step 5 or 6 and end elsewhere.
    assert_resume_matches_uninterrupted_run(
        tiny, tmp_path, method="ngdiff", vanish_ratio=0.999, vanish_stop=2, max_steps=6, logging_steps=1
    )
    log = _log(tmp_path / "resumed")
    assert [r["step"] for r in log if "training_stopped" in r] == [4]


def test_a_run_resumed_after_vanish_stop_was_reached_trains_no_further(tiny, tmp_path):  # noqa: F811
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 4:  # the step that reached the limit: saved, then the process dies
                raise RuntimeError("killed")

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed"):
        _vanish_run(tiny, out, vanish_stop=2, callbacks=[KillAfterSave()])
    saved = json.loads((out / "checkpoint-4" / "combiner.json").read_text())
    assert saved["forget_vanished_steps"] == 2 and set(saved["peak_norms"]) == {"forget", "retain"}
    steps_before = [r["step"] for r in _log(out) if "loss" in r]
    _vanish_run(tiny, out, vanish_stop=2)  # the same command again: resumes from checkpoint-4
    assert [r["step"] for r in _log(out) if "loss" in r] == steps_before == [1, 2, 3, 4]
    assert [r["step"] for r in _log(out) if "training_stopped" in r] == [4, 4]
    straight = load_file(_vanish_run(tiny, tmp_path / "straight", vanish_stop=2) / "model.safetensors")
    for name, value in load_file(out / "model.safetensors").items():
        torch.testing.assert_close(value, straight[name])


def test_vanish_stop_needs_the_normalized_combination_and_a_vanish_ratio():
    with pytest.raises(ConfigError, match="--vanish_stop ends training"):
        UnlearnConfig(output_dir="x", method="graddiff", vanish_stop=3)
    with pytest.raises(ConfigError, match="--vanish_stop ends training"):
        UnlearnConfig(output_dir="x", method="ngdiff", vanish_ratio=0.0, vanish_stop=3)
    with pytest.raises(ConfigError, match="vanish_stop"):
        UnlearnConfig(output_dir="x", method="ngdiff", vanish_stop=-1)
    assert UnlearnConfig(output_dir="x", method="ngdiff", vanish_stop=3).vanish_stop == 3


def test_a_checkpoint_from_before_vanish_stop_resumes_with_its_peaks_and_a_zero_count(tiny, tmp_path):  # noqa: F811
    old = tmp_path / "checkpoint-3"
    old.mkdir()
    (old / "combiner.json").write_text(
        json.dumps({"forget": 2.5, "retain": 1.0})
    )  # the format before 2026-12-06
    assert read_combiner_state(old) == {
        "peak_norms": {"forget": 2.5, "retain": 1.0},
        "forget_vanished_steps": 0,
    }
    new = tmp_path / "checkpoint-6"
    new.mkdir()
    (new / "combiner.json").write_text(
        json.dumps({"peak_norms": {"forget": 2.5}, "forget_vanished_steps": 4})
    )
    assert read_combiner_state(new) == {"peak_norms": {"forget": 2.5}, "forget_vanished_steps": 4}
    assert (
        read_combiner_state(None)
        == read_combiner_state(tmp_path)
        == {"peak_norms": {}, "forget_vanished_steps": 0}
    )
    # The trainer reads the checkpoint it resumes from once, for the peaks and the count alike.
    trainer = _trainer(tiny, tmp_path, method="ngdiff")
    trainer._resume_from = str(new)
    assert trainer._resumed_combiner_state() == read_combiner_state(new)
    (new / "combiner.json").unlink()
    assert trainer._vanished_forget_count() == 4
