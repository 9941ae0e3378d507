"""Fidelity to the papers: SimNPO, RMU, the KL retain term, DPO and Gradient Collision, each computed
by hand from its paper's (or reference code's) formula, against the method at the paper's setting,
and each default checked to differ from it exactly as the method's docstring says.
`pytest tests/test_fidelity.py`"""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from llm_unlearn.cli import main
from llm_unlearn.core.config import UnlearnConfig
from llm_unlearn.methods import METHODS, MethodContext, register
from llm_unlearn.methods.rmu import rmu_trainable, steered_layer
from tests.core.test_trainer import tiny  # noqa: F401  (module fixture: micro model, tokenizer and rows)
from tests.methods.test_methods import _method_trainer

VOCAB, PAD = 32, 0


def tiny_llama(layers: int = 2, seed: int = 0) -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """A random float64 Llama and its frozen reference: the same weights before a small perturbation."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         attn_implementation="eager")  # fmt: skip
    reference = LlamaForCausalLM(config).double().eval()
    model = copy.deepcopy(reference)
    reference.requires_grad_(False)
    with torch.no_grad():  # so that the model is not its own reference (every ratio and retain error 0)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, reference


def qa_batch(prompts: list[list[int]], answers: list[list[int]]) -> dict[str, torch.Tensor]:
    """Right-padded question/answer batch: labels -100 on the question and the padding."""
    width = max(len(p) + len(a) for p, a in zip(prompts, answers))
    ids, labels, mask = [], [], []
    for p, a in zip(prompts, answers):
        pad = width - len(p) - len(a)
        ids.append(p + a + [PAD] * pad)
        labels.append([-100] * len(p) + a + [-100] * pad)
        mask.append([1] * (len(p) + len(a)) + [0] * pad)
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "attention_mask": torch.tensor(mask),
    }


def random_batch(shape: list[tuple[int, int]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    draw = lambda n: torch.randint(1, VOCAB, (n,), generator=g).tolist()  # noqa: E731
    return qa_batch([draw(p) for p, _ in shape], [draw(a) for _, a in shape])


FORGET_SHAPE = [(3, 4), (2, 2), (4, 3), (3, 5)]  # (question, answer) lengths, unequal: padding in play
RETAIN_SHAPE = [(2, 3), (3, 4), (4, 2)]


def with_refusals(forget: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The forget batch plus `alt_*`: the same questions answered by other (refusal) tokens."""
    g = torch.Generator().manual_seed(seed)
    prompts, answers = [], []
    for ids, labels in zip(forget["input_ids"].tolist(), forget["labels"].tolist()):
        n_prompt = labels.index(next(x for x in labels if x != -100))
        prompts.append(ids[:n_prompt])
        answers.append(torch.randint(1, VOCAB, (2 + n_prompt % 3,), generator=g).tolist())
    return forget | {f"alt_{k}": v for k, v in qa_batch(prompts, answers).items()}


def config(tmp_path, method: str, **options) -> UnlearnConfig:
    return UnlearnConfig(output_dir=str(tmp_path / "run"), method=method, use_cpu=True, seed=0, **options)


def objective(terms, forget, retain, only: str | None = None) -> torch.Tensor:
    """The trainer's `combine: sum` on one micro-batch: sum_k w_k total_k / count (answer tokens or sequences)."""
    batches = {"forget": forget, "retain": retain}
    value = 0.0
    for name, term in terms.items():
        if only is not None and name != only:
            continue
        batch = batches[term.stream]
        count = (
            (batch["labels"][:, 1:] != -100).sum() if term.reduction == "token" else batch["labels"].size(0)
        )
        value = value + term.weight * term.total / count
    return value


def value(t: torch.Tensor) -> float:
    return float(t.detach())


def assert_same_value_and_gradient(got: torch.Tensor, want: torch.Tensor, model, rel: float = 1e-5) -> None:
    assert value(got) == pytest.approx(value(want), rel=rel)
    params = [p for p in model.parameters() if p.requires_grad]
    g_got = torch.autograd.grad(got, params, retain_graph=True, allow_unused=True)
    g_want = torch.autograd.grad(want, params, retain_graph=True, allow_unused=True)
    assert any(w is not None and w.abs().max() > 0 for w in g_want)
    for a, b in zip(g_got, g_want):
        if b is None:
            assert a is None or not a.any()
            continue
        torch.testing.assert_close(a, b, rtol=rel, atol=rel * float(b.abs().max()))


# ---------------------------------------------------------------- hand computations, plain torch


def answer_nll_per_sequence(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over the answer tokens of -log p, number of answer tokens) per sequence, as open-unlearning's
    `compute_batch_nll`: cross-entropy of the shifted logits with ignore_index -100."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none").sum(-1)
    return nll, (labels != -100).sum(-1)


def retain_nll(model, batch) -> torch.Tensor:
    """Mean answer-token NLL of the batch: the causal LM loss HF and open-unlearning's GradDiff use."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, VOCAB), batch["labels"][:, 1:].reshape(-1), ignore_index=-100)


def layer_activations(model, batch, layer: int) -> torch.Tensor:
    """Output of decoder layer `layer`, captured by a forward hook as the paper's RMU code does."""
    captured = []
    handle = model.model.layers[layer].register_forward_hook(lambda module, args, out: captured.append(out))
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        handle.remove()
    return captured[0]


# ---------------------------------------------------------------- SimNPO (arXiv 2410.07163)


def simnpo_forget(model, batch, beta: float, delta: float) -> torch.Tensor:
    """The authors' (and open-unlearning's) SimNPO forget loss: -(2/beta) mean log sigmoid(beta (mean NLL - delta))."""
    nll, length = answer_nll_per_sequence(model, batch)
    return -(2 / beta) * F.logsigmoid(beta * (nll / length - delta)).mean()


def test_simnpo_at_the_authors_tofu_weights_is_their_objective(tmp_path):
    model, _ = tiny_llama()
    forget, retain = random_batch(FORGET_SHAPE, 1), random_batch(RETAIN_SHAPE, 2)
    # The authors' TOFU configuration: beta 2.5, gamma 0, npo_coeff 0.1375 on the forget term, 1 on the retain NLL.
    cfg = config(
        tmp_path, "simnpo", simnpo_beta=2.5, simnpo_gamma=0.0, forget_weight=0.1375, retain_weight=1.0
    )
    got = objective(METHODS["simnpo"].fn(model, forget, retain, MethodContext(cfg)), forget, retain)
    want = 0.1375 * simnpo_forget(model, forget, 2.5, 0.0) + 1.0 * retain_nll(model, retain)
    assert_same_value_and_gradient(got, want, model)


def test_simnpo_default_weighs_the_forget_term_by_one_as_the_papers_equation(tmp_path):
    model, _ = tiny_llama()
    forget, retain = random_batch(FORGET_SHAPE, 1), random_batch(RETAIN_SHAPE, 2)
    cfg = config(tmp_path, "simnpo")
    assert (cfg.forget_weight, cfg.retain_weight, cfg.simnpo_beta, cfg.simnpo_gamma) == (1.0, 1.0, 2.5, 0.0)
    terms = METHODS["simnpo"].fn(model, forget, retain, MethodContext(cfg))
    got = {name: value(objective(terms, forget, retain, name)) for name in ("forget", "retain")}
    # Weight 1 on both terms: the authors' forget term is 0.1375 times this one, their retain term the same.
    assert got["forget"] == pytest.approx(value(simnpo_forget(model, forget, 2.5, 0.0)), rel=1e-5)
    assert got["retain"] == pytest.approx(value(retain_nll(model, retain)), rel=1e-5)


def test_simnpo_margin_gamma_is_the_authors_margin_times_beta(tmp_path):
    model, _ = tiny_llama()
    forget, retain = random_batch(FORGET_SHAPE, 1), random_batch(RETAIN_SHAPE, 2)
    beta, delta = 4.5, 0.3  # their code: beta (mean NLL - delta); our equation: beta mean NLL - gamma
    cfg = config(tmp_path, "simnpo", simnpo_beta=beta, simnpo_gamma=beta * delta)
    got = objective(METHODS["simnpo"].fn(model, forget, retain, MethodContext(cfg)), forget, retain, "forget")
    assert_same_value_and_gradient(got, simnpo_forget(model, forget, beta, delta), model)


# ---------------------------------------------------------------- RMU (arXiv 2403.03218)


def rmu_paper_terms(model, reference, forget, retain, layer: int, c: float, seed: int):
    """The paper's two mean squared errors (torch's mse_loss: mean over positions and hidden units),
    mse(h_L(forget), c u) and mse(h_L(retain), h_L,frozen(retain)), over the positions whose next token
    is an answer token; its objective is the first plus alpha times the second."""
    u = torch.rand(model.config.hidden_size, generator=torch.Generator().manual_seed(seed)).double()
    control = c * u / u.norm()
    forget_at = (forget["labels"][:, 1:] != -100).nonzero(as_tuple=True)
    retain_at = (retain["labels"][:, 1:] != -100).nonzero(as_tuple=True)
    h_forget = layer_activations(model, forget, layer)[forget_at]
    h_retain = layer_activations(model, retain, layer)[retain_at]
    with torch.no_grad():
        h_frozen = layer_activations(reference, retain, layer)[retain_at]
    return F.mse_loss(h_forget, control.expand_as(h_forget)), F.mse_loss(h_retain, h_frozen)


def test_rmu_at_the_papers_zephyr_setting_is_the_papers_objective(tmp_path):
    model, reference = tiny_llama(layers=32)
    forget, retain = random_batch(FORGET_SHAPE, 1), random_batch(RETAIN_SHAPE, 2)
    cfg = config(tmp_path, "rmu", rmu_layer=7, rmu_coefficient=6.5, retain_weight=1200.0)
    got = objective(METHODS["rmu"].fn(model, forget, retain, MethodContext(cfg, reference)), forget, retain)
    forget_mse, retain_mse = rmu_paper_terms(model, reference, forget, retain, layer=7, c=6.5, seed=0)
    assert_same_value_and_gradient(got, forget_mse + 1200.0 * retain_mse, model)
    # The paper's code updates mlp.down_proj of layers 5, 6 and 7 (its --layer_ids 5,6,7 --param_ids 6).
    assert rmu_trainable(model, cfg) == {f"model.layers.{i}.mlp.down_proj.weight" for i in (5, 6, 7)}


def test_rmu_defaults_steer_the_papers_layer_and_weigh_retain_by_one_not_1200(tmp_path):
    model, reference = tiny_llama(layers=32)
    cfg = config(tmp_path, "rmu")
    assert steered_layer(model, cfg) == 7  # the paper's layer on its 32-layer model
    assert [steered_layer(tiny_llama(layers=n)[0], cfg) for n in (1, 2, 16)] == [
        0,
        0,
        3,
    ]  # same relative depth
    assert (cfg.rmu_coefficient, cfg.retain_weight) == (6.5, 1.0)
    forget, retain = random_batch(FORGET_SHAPE, 1), random_batch(RETAIN_SHAPE, 2)
    got = objective(METHODS["rmu"].fn(model, forget, retain, MethodContext(cfg, reference)), forget, retain)
    forget_mse, retain_mse = rmu_paper_terms(model, reference, forget, retain, layer=7, c=6.5, seed=0)
    assert value(retain_mse) > 0
    assert value(got) == pytest.approx(
        value(forget_mse + retain_mse), rel=1e-5
    )  # alpha 1, not the paper's 1200


# ---------------------------------------------------------------- the KL retain term (TOFU, NPO, open-unlearning)


def tofu_kl(model, reference, batch) -> torch.Tensor:
    """TOFU's and open-unlearning's KL retain loss: kl_div over the flattened [B*T, V] log-probabilities,
    reduction "batchmean" (the mean over every position of the batch), log_target=True."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        ref = F.log_softmax(reference(**inputs).logits, -1).view(-1, VOCAB)
    current = F.log_softmax(model(**inputs).logits, -1).view(-1, VOCAB)
    return F.kl_div(current, ref, reduction="batchmean", log_target=True)


UNPADDED_RETAIN_SHAPE = [(2, 4), (3, 3), (4, 2)]  # equal lengths: no padding position


def test_kl_retain_term_over_all_positions_is_tofus_batchmean_kl(tmp_path):
    model, reference = tiny_llama()
    forget, retain = random_batch(FORGET_SHAPE, 1), random_batch(UNPADDED_RETAIN_SHAPE, 2)
    assert retain["attention_mask"].all()
    cfg = config(tmp_path, "graddiff", retain_loss="kl", retain_kl_positions="all")
    terms = METHODS["graddiff"].fn(model, forget, retain, MethodContext(cfg, reference))
    got = objective(terms, forget, retain, "retain")
    assert_same_value_and_gradient(got, tofu_kl(model, reference, retain), model)


def test_kl_retain_term_over_all_positions_ignores_padding(tmp_path):
    model, reference = tiny_llama()
    forget, retain = random_batch(FORGET_SHAPE, 1), random_batch(RETAIN_SHAPE, 2)
    assert not retain["attention_mask"].all()
    cfg = config(tmp_path, "graddiff", retain_loss="kl", retain_kl_positions="all")
    terms = METHODS["graddiff"].fn(model, forget, retain, MethodContext(cfg, reference))
    alone = []  # each sequence on its own, unpadded: TOFU's value for a batch of one
    for i, n in enumerate(retain["attention_mask"].sum(-1).tolist()):
        one = {k: v[i : i + 1, :n] for k, v in retain.items()}
        alone.append(value(tofu_kl(model, reference, one)))
    assert value(objective(terms, forget, retain, "retain")) == pytest.approx(
        sum(alone) / len(alone), rel=1e-5
    )


def test_kl_retain_term_by_default_averages_the_answer_positions_only(tmp_path):
    model, reference = tiny_llama()
    forget, retain = random_batch(FORGET_SHAPE, 1), random_batch(UNPADDED_RETAIN_SHAPE, 2)
    cfg = config(tmp_path, "graddiff", retain_loss="kl")
    assert cfg.retain_kl_positions == "answer"
    terms = METHODS["graddiff"].fn(model, forget, retain, MethodContext(cfg, reference))
    inputs = {"input_ids": retain["input_ids"], "attention_mask": retain["attention_mask"]}
    with torch.no_grad():
        ref = F.log_softmax(reference(**inputs).logits[:, :-1], -1)
    current = F.log_softmax(model(**inputs).logits[:, :-1], -1)
    answer = retain["labels"][:, 1:] != -100  # positions whose next token is an answer token
    want = F.kl_div(current[answer], ref[answer], reduction="batchmean", log_target=True)
    got = objective(terms, forget, retain, "retain")
    assert_same_value_and_gradient(got, want, model)
    assert value(got) != pytest.approx(value(tofu_kl(model, reference, retain)), rel=1e-3)


@pytest.mark.parametrize("combine", ["sum", "pcgrad"])
def test_kl_retain_term_over_all_positions_trains(tiny, tmp_path, combine):  # noqa: F811
    trainer = _method_trainer(
        tiny, tmp_path, "npo", retain_loss="kl", retain_kl_positions="all", combine=combine
    )
    trainer.train()
    logs = [r for r in trainer.state.log_history if "loss_retain" in r]
    assert len(logs) == 2 and all(r["loss_retain"] > 0 for r in logs[1:])


# ---------------------------------------------------------------- DPO (arXiv 2305.18290)


def dpo_log_ratio_margin(model, reference, batch) -> torch.Tensor:
    """[log p(y_w|x) - log p_ref(y_w|x)] - [log p(y_l|x) - log p_ref(y_l|x)] per forget question."""
    win = {k[4:]: v for k, v in batch.items() if k.startswith("alt_")}
    lose = {k: v for k, v in batch.items() if not k.startswith("alt_")}
    with torch.no_grad():
        ref_win, ref_lose = (
            answer_nll_per_sequence(reference, win)[0],
            answer_nll_per_sequence(reference, lose)[0],
        )
    return -(answer_nll_per_sequence(model, win)[0] - ref_win) + (
        answer_nll_per_sequence(model, lose)[0] - ref_lose
    )


def test_dpo_is_the_papers_loss_at_its_default_scale(tmp_path):
    model, reference = tiny_llama()
    forget, retain = with_refusals(random_batch(FORGET_SHAPE, 1), 3), random_batch(RETAIN_SHAPE, 2)
    cfg = config(tmp_path, "dpo")
    assert (cfg.dpo_beta, cfg.forget_weight) == (0.1, 1.0)
    terms = METHODS["dpo"].fn(model, forget, retain, MethodContext(cfg, reference))
    want = -F.logsigmoid(0.1 * dpo_log_ratio_margin(model, reference, forget)).mean()
    assert_same_value_and_gradient(objective(terms, forget, retain, "forget"), want, model)


def test_dpo_with_forget_weight_two_over_beta_is_open_unlearnings_loss(tmp_path):
    model, reference = tiny_llama()
    forget, retain = with_refusals(random_batch(FORGET_SHAPE, 1), 3), random_batch(RETAIN_SHAPE, 2)
    beta = 0.1
    cfg = config(tmp_path, "dpo", dpo_beta=beta, forget_weight=2 / beta)
    terms = METHODS["dpo"].fn(model, forget, retain, MethodContext(cfg, reference))
    # open-unlearning's compute_dpo_loss: -2/beta * logsigmoid(beta (win log-ratio - lose log-ratio)).mean()
    want = -2 / beta * F.logsigmoid(beta * dpo_log_ratio_margin(model, reference, forget)).mean()
    assert_same_value_and_gradient(objective(terms, forget, retain, "forget"), want, model)


# ---------------------------------------------------------------- Gradient Collision (docs/ngdiff-gen.md section 3)


def spec_collision(model, batch, chunks: int) -> torch.Tensor:
    """The spec's L_GC = sum over ordered pairs i != j of <u_i, u_j> = ||sum_i u_i||^2 - K, with g_i the
    gradient of chunk i's mean answer-token NLL over every parameter, kept differentiable."""
    params = [p for p in model.parameters() if p.requires_grad]
    units = []
    for idx in torch.arange(batch["input_ids"].size(0)).tensor_split(chunks):
        chunk = {k: v[idx] for k, v in batch.items()}
        grads = torch.autograd.grad(retain_nll(model, chunk), params, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        units.append(flat / flat.norm())
    return torch.stack(units).sum(0).pow(2).sum() - chunks


def gc_collision(tmp_path, model, reference, forget, retain, **options) -> torch.Tensor:
    cfg = config(tmp_path, "gc", **options)
    terms = METHODS["gc"].fn(model, forget, retain, MethodContext(cfg, reference))
    return objective(terms, forget, retain, "collision")


def test_gc_collision_with_gc_weight_two_is_the_specs_sum_over_ordered_pairs(tmp_path):
    model, reference = tiny_llama()
    forget, retain = random_batch(FORGET_SHAPE, 1), random_batch(RETAIN_SHAPE, 2)
    got = gc_collision(
        tmp_path, model, reference, forget, retain, gc_chunks=2, gc_form="cosine", gc_weight=2.0
    )
    assert_same_value_and_gradient(got, spec_collision(model, forget, 2), model, rel=1e-4)


@pytest.mark.parametrize("chunks", [2, 3])
def test_gc_default_collision_is_the_specs_divided_by_the_number_of_pairs(tmp_path, chunks):
    model, reference = tiny_llama()
    forget = random_batch(FORGET_SHAPE + [(2, 3), (3, 2)], 1)  # 6 sequences: 3 chunks of 2
    retain = random_batch(RETAIN_SHAPE, 2)
    cfg = config(tmp_path, "gc", gc_chunks=chunks)
    assert (cfg.gc_form, cfg.gc_weight) == ("cosine", 1.0)
    got = gc_collision(tmp_path, model, reference, forget, retain, gc_chunks=chunks)
    spec = spec_collision(model, forget, chunks)
    assert abs(value(spec)) > 1e-3
    assert value(got) == pytest.approx(value(spec) / (chunks * (chunks - 1)), rel=1e-5)  # half at K = 2


# ---------------------------------------------------------------- every method states its deviations


def test_ls_says_for_every_method_how_it_differs_from_its_paper(capsys):
    assert main(["ls"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, method in METHODS.items():
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{name} "))
        assert lines[at + 2].strip().startswith(f"differs from paper: {method.deviations}")
        assert ("--retain_kl_positions all" in lines[at + 2]) == ("retain_loss" in method.knobs)
    rmu = next(line for line in lines if "alpha 1200" in line)
    assert re.search(r"--retain_weight 1200", rmu)


def test_a_method_registered_without_its_deviations_is_refused():
    with pytest.raises(ValueError, match="give deviations"):
        register("fidelity_test_method", paper="arXiv:0000.00000", summary="x")(lambda *a: {})
    with pytest.raises(ValueError, match="give deviations"):
        register("fidelity_test_method", paper="", summary="x", deviations="two\nlines")(lambda *a: {})
    assert "fidelity_test_method" not in METHODS
