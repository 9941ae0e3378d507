"""Two probes that try to bring forgotten knowledge back with a fixed number of optimizer steps on the
attack part A of the forget set, scored on the held-out part E after each step budget.

`relearn`: a LoRA relearning attack. LoRA adapters (arXiv 2106.09685) on every linear layer but the
output head, trained with the usual answer NLL on A (AdamW); the base weights stay frozen. Relearning
attacks recover most "forgotten" knowledge from a few examples (arXiv 2410.08827, 2406.13356,
2409.18025), so the steps this takes measure how deeply a method erased it.

`piggyback`: a learned binary mask over frozen weights (Piggyback, Mallya et al., arXiv 1801.06519).
Each selected weight w gets a real score s, initialised to 1e-2; the forward pass uses
w * m with m = 1[s > 5e-3] (every mask starts at 1: the probe starts from the model itself), and the
backward pass is straight-through: dL/ds = dL/dm = dL/d(w m) * w. Adam (lr 1e-4) trains the scores on
A's answer NLL. No weight changes value, weights can only be switched off: what the mask recovers was
still encoded in the surviving weights. Adam moves a score by about lr per step, so with the spec's
values a mask bit cannot flip before (1e-2 - 5e-3) / 1e-4 = 50 steps; smaller budgets measure ~0 by
construction, and `piggyback_lr` changes this.
Subset: the MLP projections of every layer (`gate_proj`, `up_proj`, `down_proj` in Llama-style
models), where transformer LMs store factual associations (Geva et al., arXiv 2012.14913; Meng et al.,
ROME, arXiv 2202.05262). They hold about 2/3 of a block's weights, and leaving attention, embeddings
and the head out keeps the scores and Adam's state at ~3x the MLP weights. `piggyback_modules` names
other module suffixes (e.g. `c_fc,c_proj` for GPT-2, `fc1,fc2` for Phi).

Both probes run on a deep copy (the caller's model is untouched) and draw their LoRA initialisation
and batch order from `seed` alone, so a probe applied to the unlearned and the retain-only models sees
the same batches in the same order.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from ..data.qa import QACollator, QADataset, pad_id
from .measure import EvalSettings, forget_metrics

PROBES = ("relearn", "piggyback")


@dataclass
class ProbeSettings:
    """Training settings of the relearning and Piggyback probes (see the module docstring)."""

    seed: int = 0
    batch_size: int = 8
    relearn_lr: float = 1e-3
    lora_r: int = 8
    lora_alpha: int = 16
    piggyback_lr: float = 1e-4
    piggyback_init: float = 1e-2
    piggyback_threshold: float = 5e-3
    piggyback_modules: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")


class Binarize(torch.autograd.Function):
    """m = 1[s > threshold] forward; dL/ds = dL/dm backward (the straight-through estimator)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, threshold: float) -> torch.Tensor:
        return (scores > threshold).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class PiggybackMask(nn.Module):
    """A parametrization W -> W * Binarize(scores) with one real score per weight."""

    def __init__(self, shape: torch.Size, init: float, threshold: float):
        super().__init__()
        self.threshold = threshold
        self.scores = nn.Parameter(torch.full(shape, init))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * Binarize.apply(self.scores, self.threshold).to(weight.dtype)

    def masked_off(self) -> int:
        return int((self.scores <= self.threshold).sum())


def add_piggyback_masks(model: nn.Module, settings: ProbeSettings) -> list[PiggybackMask]:
    """Freeze `model` and mask the weight of every nn.Linear whose name ends in `piggyback_modules`."""
    model.requires_grad_(False)
    masks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in settings.piggyback_modules:
            mask = PiggybackMask(module.weight.shape, settings.piggyback_init, settings.piggyback_threshold)
            parametrize.register_parametrization(module, "weight", mask.to(module.weight.device))
            masks.append(module.parametrizations.weight[0])
    if not masks:
        raise ValueError(
            f"no linear layer of the model ends in {', '.join(settings.piggyback_modules)}; name the modules "
            "to mask with --piggyback_modules (e.g. c_fc,c_proj for GPT-2)"
        )
    return masks


def add_relearn_lora(model: nn.Module, settings: ProbeSettings):
    """A peft model with fresh LoRA adapters on all linear layers but the head; only they train."""
    from peft import LoraConfig

    from ..models.loading import with_lora

    config = LoraConfig(
        r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
        target_modules="all-linear", task_type="CAUSAL_LM",
    )  # fmt: skip
    return with_lora(model, config)


def _batches(n: int, batch_size: int, steps: int, seed: int):
    """`steps` index batches: passes over range(n), each in a fresh order from one seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:
            order += torch.randperm(n, generator=generator).tolist()
        yield order[:batch_size]
        order = order[batch_size:]


def probe_curve(
    probe: str,
    model: nn.Module,
    tokenizer,
    attack_rows: Sequence[dict],
    heldout_rows: Sequence[dict],
    budgets: Sequence[int],
    settings: ProbeSettings,
    eval_settings: EvalSettings,
    *,
    progress: bool = True,
    desc: str = "",
) -> tuple[list[dict], nn.Module]:
    """Train `probe` on a copy of `model` for max(budgets) steps on A, measuring E at every budget.

    Returns the points [{budget, metrics, train_loss (mean over the steps since the last budget),
    and for piggyback masked_fraction}] and the probed copy at the last budget.
    """
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; choose one of {', '.join(PROBES)}")
    if not budgets or min(budgets) < 0:
        raise ValueError(f"step budgets {list(budgets)} must be one or more non-negative integers")
    torch.manual_seed(settings.seed)
    probed = copy.deepcopy(model)
    masks: list[PiggybackMask] = []
    if probe == "relearn":
        probed = add_relearn_lora(probed, settings)
        trainable = [p for p in probed.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=settings.relearn_lr, weight_decay=0.0)
    else:
        masks = add_piggyback_masks(probed, settings)
        optimizer = torch.optim.Adam([m.scores for m in masks], lr=settings.piggyback_lr)
    n_masked = sum(m.scores.numel() for m in masks)
    dataset = QADataset(attack_rows, tokenizer, eval_settings.prompt_format, eval_settings.max_length,
                        eval_settings.system_prompt)  # fmt: skip
    collate = QACollator(pad_token_id=pad_id(tokenizer))
    device = next(probed.parameters()).device
    budgets = sorted(set(budgets))
    points, losses = [], []

    def measure(step: int) -> None:
        point = {
            "budget": step,
            "metrics": forget_metrics(probed, tokenizer, heldout_rows, eval_settings, desc),
        }
        point["train_loss"] = float(sum(losses) / len(losses)) if losses else None
        if masks:
            point["masked_fraction"] = sum(m.masked_off() for m in masks) / n_masked
        points.append(point)
        losses.clear()

    if budgets[0] == 0:
        measure(0)
    batches = _batches(len(dataset), min(settings.batch_size, len(dataset)), budgets[-1], settings.seed)
    bar = tqdm(batches, total=budgets[-1], desc=f"{probe} {desc}".strip(), disable=not progress)
    for step, idx in enumerate(bar, start=1):
        probed.train()
        batch = {k: v.to(device) for k, v in collate([dataset[i] for i in idx]).items()}
        loss = probed(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step in budgets:
            measure(step)
    return points, probed
