"""Every registered method, driven by the registry: exact losses on toy logits, finite terms, training that
moves every trainable parameter (full and LoRA) and never the reference, under each combination; PCGrad
by hand; Gradient Collision's second-order gradient; the refusal data route; `llm-unlearn ls`.
`pytest tests/test_methods.py`"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from llm_unlearn.cli import main
from llm_unlearn.core.config import UnlearnConfig
from llm_unlearn.core.optim import PCGradCombiner
from llm_unlearn.core.trainer import UnlearnTrainer
from llm_unlearn.data.qa import IGNORE_INDEX, QACollator, QADataset, pad_id
from llm_unlearn.methods import METHODS, MethodContext, get_method
from llm_unlearn.methods.common import refusal_answers
from llm_unlearn.models.args import ModelArgs
from llm_unlearn.pipeline.unlearn import AdaptersDisabled, add_lora
from tests.core.test_trainer import tiny  # noqa: F401  (module fixture: micro model, tokenizer and rows)

NAMES = sorted(METHODS)

# ----------------------------------------------------------------------------- toy model, by hand

VOCAB, HIDDEN, LAYERS = 6, 4, 2


class ToyLM(torch.nn.Module):
    """A bigram model: logits[b, t] = W[x_t], hidden_states[l][b, t] = E[l, x_t]; every loss is computable by hand."""

    def __init__(self, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.nn.Parameter(torch.randn(VOCAB, VOCAB, generator=g))
        self.E = torch.nn.Parameter(torch.randn(LAYERS + 1, VOCAB, HIDDEN, generator=g))
        self.config = SimpleNamespace(num_hidden_layers=LAYERS)

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
        hidden = (
            tuple(self.E[layer][input_ids] for layer in range(LAYERS + 1)) if output_hidden_states else None
        )
        return SimpleNamespace(logits=self.W[input_ids], hidden_states=hidden)


def _batch(ids, labels) -> dict[str, torch.Tensor]:
    ids = torch.tensor(ids)
    return {"input_ids": ids, "attention_mask": (ids >= 0).long(), "labels": torch.tensor(labels)}


X = IGNORE_INDEX
FORGET = _batch([[1, 2, 3, 4, 0], [2, 3, 1, 0, 0], [4, 1, 2, 5, 3]],
                [[X, X, 3, 4, X], [X, 3, 1, X, X], [X, X, 2, 5, 3]])  # fmt: skip
ALT = _batch([[1, 2, 5, 5, 0], [2, 5, 0, 0, 0], [4, 1, 5, 2, 5]],
             [[X, X, 5, 5, X], [X, 5, X, X, X], [X, X, 5, 2, 5]])  # fmt: skip
FORGET |= {f"alt_{k}": v for k, v in ALT.items()}
RETAIN = _batch([[3, 3, 1, 2], [5, 4, 0, 1]], [[X, 3, 1, 2], [X, X, 0, 1]])


def _scored(batch):
    """(b, t, x_t, y_{t+1}) for every scored position, in plain Python."""
    ids, labels = batch["input_ids"].tolist(), batch["labels"].tolist()
    return [(b, t, ids[b][t], labels[b][t + 1]) for b in range(len(ids)) for t in range(len(ids[b]) - 1)
            if labels[b][t + 1] != X]  # fmt: skip


def _logsoftmax(z):
    z = np.asarray(z, dtype=np.float64)
    return z - z.max() - np.log(np.exp(z - z.max()).sum())


def _seq_logp(W, batch):
    """Per sequence: (sum of log p(y_t), number of scored tokens)."""
    out = {}
    for b, _, x, y in _scored(batch):
        s, n = out.get(b, (0.0, 0))
        out[b] = (s + _logsoftmax(W[x])[y], n + 1)
    return [out[b] for b in sorted(out)]


def _log_sigmoid(z):
    return -np.log1p(np.exp(-z))


def _retain_nll(m, r, cfg):
    return ("retain", "token", -np.mean([_logsoftmax(m.W[x])[y] for _, _, x, y in _scored(RETAIN)]))


def _ga(m, r, cfg):
    return {
        "forget": ("forget", "token", np.mean([_logsoftmax(m.W[x])[y] for _, _, x, y in _scored(FORGET)]))
    }


def _graddiff(m, r, cfg):
    return _ga(m, r, cfg) | {"retain": _retain_nll(m, r, cfg)}


def _npo_forget(m, r, beta):
    ratios = [a - b for (a, _), (b, _) in zip(_seq_logp(m.W, FORGET), _seq_logp(r.W, FORGET))]
    return np.mean([(2 / beta) * np.log1p(np.exp(beta * x)) for x in ratios])


def _npo(m, r, cfg):
    return {
        "forget": ("forget", "sequence", _npo_forget(m, r, cfg.npo_beta)),
        "retain": _retain_nll(m, r, cfg),
    }


def _simnpo(m, r, cfg):
    beta, gamma = cfg.simnpo_beta, cfg.simnpo_gamma
    values = [-(2 / beta) * _log_sigmoid(-(beta / n) * lp - gamma) for lp, n in _seq_logp(m.W, FORGET)]
    return {"forget": ("forget", "sequence", np.mean(values)), "retain": _retain_nll(m, r, cfg)}


def _dpo(m, r, cfg):
    alt = {k[4:]: v for k, v in FORGET.items() if k.startswith("alt_")}
    chosen = [a - b for (a, _), (b, _) in zip(_seq_logp(m.W, alt), _seq_logp(r.W, alt))]
    rejected = [a - b for (a, _), (b, _) in zip(_seq_logp(m.W, FORGET), _seq_logp(r.W, FORGET))]
    values = [-_log_sigmoid(cfg.dpo_beta * (c - j)) for c, j in zip(chosen, rejected)]
    return {"forget": ("forget", "sequence", np.mean(values)), "retain": _retain_nll(m, r, cfg)}


def _idkpo(m, r, cfg):
    alt = {k[4:]: v for k, v in FORGET.items() if k.startswith("alt_")}
    values = [-lp / n for lp, n in _seq_logp(m.W, alt)]
    return {"forget": ("forget", "sequence", np.mean(values)), "retain": _retain_nll(m, r, cfg)}


def _undial(m, r, cfg):
    values = []
    for _, _, x, y in _scored(FORGET):
        z = np.array(r.W[x], dtype=np.float64)
        z[y] -= cfg.undial_strength
        q, logp = np.exp(_logsoftmax(z)), _logsoftmax(m.W[x])
        values.append(float((q * (np.log(q) - logp)).sum()))
    return {"forget": ("forget", "token", np.mean(values))}


def _rmu(m, r, cfg):
    layer = (7 * LAYERS) // 32  # the default: the paper's layer 7 of 32, at the same relative depth
    g = torch.Generator().manual_seed(cfg.seed)
    u = torch.rand(HIDDEN, generator=g).double().numpy()
    target = cfg.rmu_coefficient * u / np.linalg.norm(u)
    forget = [np.mean((m.E[layer + 1][x] - target) ** 2) for _, _, x, _ in _scored(FORGET)]
    retain = [np.mean((m.E[layer + 1][x] - r.E[layer + 1][x]) ** 2) for _, _, x, _ in _scored(RETAIN)]
    return {"forget": ("forget", "token", np.mean(forget)), "retain": ("retain", "token", np.mean(retain))}


def _gc(m, r, cfg):
    grads = []
    for chunk in np.array_split(np.arange(3), cfg.gc_chunks):
        positions = [(x, y) for b, _, x, y in _scored(FORGET) if b in chunk]
        g = np.zeros((VOCAB, VOCAB))
        for x, y in positions:  # d/dW[x] of -log softmax(W[x])[y] = softmax(W[x]) - e_y
            g[x] += np.exp(_logsoftmax(m.W[x]))
            g[x, y] -= 1
        grads.append((g / len(positions)).ravel())
    units = [v / np.linalg.norm(v) for v in grads]
    k = len(units)
    pairs = [units[i] @ units[j] for i in range(k) for j in range(k) if i != j]
    return {"forget": ("forget", "sequence", _npo_forget(m, r, cfg.npo_beta)),
            "collision": ("forget", "sequence", np.mean(pairs)), "retain": _retain_nll(m, r, cfg)}  # fmt: skip


# One hand computation per method, from its formula alone; `ngdiff` has graddiff's terms.
EXPECTED = {"ga": _ga, "graddiff": _graddiff, "ngdiff": _graddiff, "npo": _npo, "simnpo": _simnpo, "dpo": _dpo,
            "idkpo": _idkpo, "undial": _undial, "rmu": _rmu, "gc": _gc}  # fmt: skip


def _config(tmp_path, name, **overrides) -> UnlearnConfig:
    return UnlearnConfig(output_dir=str(tmp_path / "run"), method=name, use_cpu=True, seed=0, **overrides)


@pytest.mark.parametrize("name", NAMES)
def test_loss_on_toy_logits_equals_the_hand_computed_value_of_its_formula(tmp_path, name):
    if name not in EXPECTED:
        pytest.fail(f"method {name} has no hand-computed expectation: add one to EXPECTED in this file")
    cfg = _config(tmp_path, name)
    model, reference = ToyLM(seed=1), ToyLM(seed=2)
    terms = METHODS[name].fn(model, FORGET, RETAIN, MethodContext(cfg, reference))
    as_numpy = SimpleNamespace(W=model.W.detach().double().numpy(), E=model.E.detach().double().numpy())
    ref_numpy = SimpleNamespace(
        W=reference.W.detach().double().numpy(), E=reference.E.detach().double().numpy()
    )
    expected = EXPECTED[name](as_numpy, ref_numpy, cfg)
    assert set(terms) == set(expected)
    counts = {
        stream: {"token": int((b["labels"][:, 1:] != X).sum()), "sequence": b["labels"].size(0)}
        for stream, b in (("forget", FORGET), ("retain", RETAIN))
    }
    for term_name, (stream, reduction, value) in expected.items():
        term = terms[term_name]
        assert (term.stream, term.reduction) == (stream, reduction), term_name
        got = float(term.total.detach()) / counts[stream][reduction]
        assert got == pytest.approx(value, rel=1e-5, abs=1e-6), term_name


# ----------------------------------------------------------------------------- training on the micro model


def _method_trainer(tiny, tmp_path, name, lora=False, **overrides) -> UnlearnTrainer:  # noqa: F811
    """A two-step SGD run of `name` on the micro model, with the reference the method declares it needs.

    float64, so that an update far smaller than a weight still changes it (under LoRA the A matrices
    move at step 2 by lr^2 x two gradients, and UNDIAL's gradient on a random model is ~1/vocab of GA's).
    """
    settings = dict(optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", weight_decay=0.0,
                    max_grad_norm=0.0, max_steps=2, save_strategy="no", per_device_train_batch_size=4,
                    disable_tqdm=True, report_to="none")  # fmt: skip
    cfg = _config(tmp_path, name, **(settings | overrides))
    method = get_method(name)
    model = LlamaForCausalLM.from_pretrained(tiny["dir"] / "model").double()
    reference = None
    if lora:
        model = add_lora(model, ModelArgs(use_lora=True, lora_r=4))
        reference = AdaptersDisabled(model) if method.needs_reference(cfg) else None
    elif method.needs_reference(cfg):
        reference = LlamaForCausalLM.from_pretrained(tiny["dir"] / "model").double()
    tok = tiny["tok"]
    encode = dict(prompt_format="chat_template", max_length=128)
    return UnlearnTrainer(
        model=model, args=cfg, train_dataset=QADataset(tiny["forget"][:8], tok, **encode),
        retain_dataset=QADataset(tiny["retain"][:8], tok, **encode), data_collator=QACollator(pad_id(tok)),
        processing_class=tok, method=method, reference_model=reference,
    )  # fmt: skip


def _snapshot(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("name", NAMES)
def test_two_steps_move_every_trainable_parameter_and_no_other_nor_the_reference(tiny, tmp_path, name, lora):  # noqa: F811
    trainer = _method_trainer(tiny, tmp_path, name, lora=lora)
    model = trainer.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    declared = METHODS[name].trainable
    if declared is not None:
        assert trainable == declared(model, trainer.args)
    before = _snapshot(model)
    reference = trainer.reference_model
    reference_before = _snapshot(reference) if isinstance(reference, torch.nn.Module) else None
    trainer.train()
    after = _snapshot(model)
    unchanged = sorted(n for n in trainable if torch.equal(before[n], after[n]))
    assert not unchanged, f"{name}: trainable parameters that did not move: {unchanged[:5]}"
    moved_frozen = sorted(n for n in after if n not in trainable and not torch.equal(before[n], after[n]))
    assert not moved_frozen, f"{name}: frozen parameters that moved: {moved_frozen[:5]}"
    if reference_before is not None:
        assert all(torch.equal(reference_before[n], p) for n, p in reference.named_parameters())
    losses = [r for r in trainer.state.log_history if "loss_forget" in r]
    assert len(losses) == 2 and all(
        math.isfinite(v) for r in losses for k, v in r.items() if k.startswith("loss_")
    )


@pytest.mark.parametrize("combine", ["normalized", "pcgrad"])
@pytest.mark.parametrize("name", NAMES)
def test_every_method_trains_under_each_combination(tiny, tmp_path, name, combine):  # noqa: F811
    trainer = _method_trainer(tiny, tmp_path, name, combine=combine)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    before = _snapshot(trainer.model)
    trainer.train()
    after = _snapshot(trainer.model)
    assert all(not torch.equal(before[n], after[n]) for n in trainable)
    logs = [r for r in trainer.state.log_history if "loss_forget" in r]
    terms = {k[len("loss_") :] for k in logs[0] if k.startswith("loss_")}
    assert all(math.isfinite(r[f"grad_norm_{t}"]) for r in logs for t in terms)
    if combine == "pcgrad":
        assert all("pcgrad_projected" in r for r in logs)


# ----------------------------------------------------------------------------- PCGrad by hand


@pytest.mark.parametrize(
    ("forget", "retain", "expected"),
    [
        # conflict: forget loses its (-1, 0) part along retain, retain its (-1/2, 1/2) part along forget
        ((-1.0, 1.0), (1.0, 0.0), (0.5, 1.5)),
        ((1.0, 1.0), (1.0, 0.0), (2.0, 1.0)),  # no conflict: plain sum
        ((-2.0, 0.0), (1.0, 0.0), (0.0, 0.0)),  # exactly opposed: both gradients vanish
        ((-1.0, 3.0), (0.0, 0.0), (-1.0, 3.0)),  # zero retain gradient: nothing to project off
    ],
)
def test_pcgrad_projects_each_gradient_off_the_other_only_when_they_conflict(forget, retain, expected):
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    combiner = PCGradCombiner([p])
    # Linear terms: their gradients are exactly the given vectors.
    combiner.accumulate({"forget": (torch.tensor(forget, dtype=torch.float64) * p).sum(),
                         "retain": (torch.tensor(retain, dtype=torch.float64) * p).sum()})  # fmt: skip
    stats = combiner.combine({"forget": 1.0, "retain": 1.0})
    assert p.grad.tolist() == pytest.approx(list(expected))
    assert stats["pcgrad_projected"] == 2.0 * (np.dot(forget, retain) < 0 and any(retain))


def test_pcgrad_weights_scale_each_gradient_before_projecting():
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    combiner = PCGradCombiner([p])
    combiner.accumulate({"forget": (torch.tensor([-1.0, 1.0], dtype=torch.float64) * p).sum(),
                         "retain": (torch.tensor([1.0, 0.0], dtype=torch.float64) * p).sum()})  # fmt: skip
    combiner.combine({"forget": 2.0, "retain": 0.5})
    # 2 G_F = (-2, 2) loses its (-2, 0) part along G_R = (0.5, 0); G_R loses (-1/4, 1/4) along 2 G_F.
    assert p.grad.tolist() == pytest.approx([0.25, 2.25])


# ----------------------------------------------------------------------------- gc's second-order term


def test_gc_collision_gradient_matches_finite_differences_of_its_value(tiny):  # noqa: F811
    from llm_unlearn.methods.gc import gradient_collision

    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(tiny["dir"] / "model", attn_implementation="eager").double()
    tok = tiny["tok"]
    data = QADataset(tiny["forget"][:4], tok, prompt_format="chat_template", max_length=128)
    batch = QACollator(pad_id(tok))([data[i] for i in range(4)])
    params = list(model.parameters())

    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX

    def collision(create_graph: bool) -> torch.Tensor:
        # The method's own log-probabilities cast logits to fp32; float64 here keeps the difference quotient sharp.
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        logprobs = torch.log_softmax(logits, -1).gather(-1, labels.clamp_min(0)[..., None])[..., 0] * mask
        return gradient_collision(logprobs, mask, params, chunks=2, form="cosine", create_graph=create_graph)

    model.zero_grad()
    collision(create_graph=True).backward()
    direction = [torch.randn_like(p) for p in params]
    analytic = sum(float((p.grad * v).sum()) for p, v in zip(params, direction))
    # Llama's RMSNorm computes in fp32 even in a float64 model: eps 1e-4 balances rounding and truncation.
    eps, values = 1e-4, []
    for sign in (1, -1):
        with torch.no_grad():
            for p, v in zip(params, direction):
                p.add_(sign * eps * v)
        values.append(float(collision(create_graph=False)))
        with torch.no_grad():
            for p, v in zip(params, direction):
                p.sub_(sign * eps * v)
    numeric = (values[0] - values[1]) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=1e-3)
    assert abs(analytic) > 1e-6  # the second-order path really carries a gradient


# ----------------------------------------------------------------------------- refusals, knobs, `ls`


def test_refusal_answers_are_tokenized_with_the_forget_examples_prompt(tiny, tmp_path):  # noqa: F811
    tok = tiny["tok"]
    refusals = tmp_path / "refusals.txt"
    refusals.write_text("No comment.\n\nI cannot say.\n")
    cfg = _config(tmp_path, "dpo", refusals_file=str(refusals))
    answers = refusal_answers(cfg)
    assert answers == ["No comment.", "I cannot say."]
    data = QADataset(tiny["forget"][:4], tok, prompt_format="chat_template", max_length=128)
    paired = data.with_alternative_answers(answers, seed=0)
    assert paired.with_alternative_answers(answers, seed=0).features == paired.features  # fixed by the seed
    for plain, feature in zip(data.features, paired.features):
        n_prompt = plain["labels"].count(IGNORE_INDEX)
        assert feature["alt_input_ids"][:n_prompt] == plain["input_ids"][:n_prompt]
        assert feature["alt_labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
        answer = tok.decode(feature["alt_labels"][n_prompt:-1])
        assert answer in answers and feature["alt_labels"][-1] == tok.eos_token_id
        assert {k: feature[k] for k in plain} == plain  # the forget example itself is untouched
    batch = QACollator(pad_id(tok))(paired.features)
    assert batch["alt_input_ids"].shape == batch["alt_labels"].shape == batch["alt_attention_mask"].shape
    assert (batch["alt_labels"][batch["alt_attention_mask"] == 0] == IGNORE_INDEX).all()


def test_packaged_refusal_list_is_used_by_default(tmp_path):
    answers = refusal_answers(_config(tmp_path, "idkpo"))
    assert len(answers) >= 10 and len(set(answers)) == len(answers)


@pytest.mark.parametrize(
    ("option", "value", "pattern"),
    [
        ("gc_form", "dot", r"unknown gc_form 'dot'; choose cosine or inner"),
        ("gc_forget_loss", "kl", r"unknown gc_forget_loss 'kl'; choose npo or ga"),
        ("retain_kl_positions", "every", r"unknown retain_kl_positions 'every'; choose answer or all"),
        ("combine", "pcgard", r"unknown combine 'pcgard'; choose sum, normalized, pcgrad"),
        ("rmu_train_layers", "5-7", r"--rmu_train_layers '5-7' must be comma-separated layer indices"),
        ("refusals_file", "no-such-file.txt", r"refusals file no-such-file\.txt not found; pass a text file"),
    ],
)
def test_a_bad_method_knob_is_one_line_before_any_work(capsys, tmp_path, option, value, pattern):
    out = tmp_path / "run"
    argv = ["unlearn", "--output_dir", str(out), "--model_name_or_path", str(tmp_path / "m"),
            "--data_dir", str(tmp_path), f"--{option}", value]  # fmt: skip
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[-1].startswith("error: ") and re.search(pattern, err[-1]), err
    assert "Traceback" not in "\n".join(err) and not out.exists()


def test_an_rmu_layer_beyond_the_model_names_its_range(tiny, tmp_path):  # noqa: F811
    with pytest.raises(
        ValueError, match=r"--rmu_layer 5 is out of range for a model of 1 decoder layer\(s\); choose 0..0"
    ):
        _method_trainer(tiny, tmp_path, "rmu", rmu_layer=5)


@pytest.mark.parametrize("name", NAMES)
def test_every_knob_a_method_declares_is_a_config_field(name):
    fields = {f.name for f in dataclasses.fields(UnlearnConfig)}
    assert set(METHODS[name].knobs) <= fields


def test_ls_lists_every_method_with_its_paper_reference_need_and_knobs(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for name, method in METHODS.items():
        line = next(line for line in out.splitlines() if line.strip().startswith(f"{name} "))
        assert method.paper in line
        detail = out.splitlines()[out.splitlines().index(line) + 1]
        assert "reference: " in detail and all(knob in detail for knob in method.knobs)
    assert "reference: yes" in out and "reference: with retain_loss kl" in out and "reference: no" in out


# ----------------------------------------------------------------------------- benchmarks/methods.py

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "methods.py"


def _bench_module():
    # benchmarks/methods.py imports its neighbour `_study`, as it does when run as a script.
    if str(BENCH.parent) not in sys.path:
        sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("methods_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_methods_benchmark_plans_every_method_lora_and_each_combination_at_its_world_recipe():
    bench = _bench_module()
    assert all((bench.RECIPES / f"{m}.yaml").is_file() for m in METHODS), (
        "every method needs recipes/world/<m>.yaml"
    )
    runs = bench.plan(NAMES, seeds=(0, 1, 2), splits=("forget10", "forget05"))
    keys = [bench.run_key(r) for r in runs]
    assert len(set(keys)) == len(keys)
    for m in NAMES:
        own = METHODS[m].combine
        assert {(m, "forget10", s, False, own) for s in (0, 1, 2)} | {(m, "forget05", 0, False, own)} <= set(
            keys
        )
        assert (m, "forget05", 1, False, own) not in keys  # other splits: the first seed only
    assert all((m, "forget10", 0, True, METHODS[m].combine) in keys for m in bench.LORA_METHODS)
    assert all((m, "forget10", 0, False, c) in keys for m in bench.COMBINE_METHODS for c in bench.COMBINES)


@pytest.mark.slow
def test_methods_benchmark_smoke_run_writes_records_table_and_plot(tmp_path):
    out = tmp_path / "methods.json"
    cmd = [sys.executable, str(BENCH), "--size", "micro", "--splits", "forget10", "--seeds", "0",
           "--methods", "npo,idkpo", "--max_steps", "1", "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-2000:]
    records = json.loads(out.read_text())["runs"]
    assert {(r["method"], r["lora"], r["combine"]) for r in records} == {
        ("npo", False, "sum"), ("npo", True, "sum"), ("npo", False, "normalized"), ("npo", False, "pcgrad"),
        ("idkpo", False, "sum"),
    }  # fmt: skip
    fields = {"method", "split", "seed", "lora", "combine", "forget_quality", "model_utility", "forget_rouge_l",
              "retain_fact_recall", "target_model_utility"}  # fmt: skip
    assert all(fields <= r.keys() for r in records)
    assert "Smoke run" in out.with_suffix(".md").read_text() and out.with_suffix(".png").stat().st_size > 0
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert "0 to run" in rerun.stdout and len(json.loads(out.read_text())["runs"]) == len(records)
