"""Representation misdirection (`rmu`): scramble one layer's activations on forget data, keep them on retain.

With h_L(x)_t the output of decoder layer L (`rmu_layer`) at position t, u a random unit vector
(fixed by the run's seed), c = `rmu_coefficient` and H the hidden size:

    forget = (1/N_F) sum over forget positions t of (1/H) ||h_L,theta(x)_t - c u||^2
    retain = (1/N_R) sum over retain positions t of (1/H) ||h_L,theta(x)_t - h_L,ref(x)_t||^2

weighted by `forget_weight` and `retain_weight` (the paper's alpha), with h_L,ref the frozen original
model. Only the parameters of decoder layers `rmu_train_layers` (default L-2..L) whose names contain
one of `rmu_train_params` (default `mlp.down_proj`, the one matrix per layer the paper's code
updates) train; the method declares them through `trainable`, under LoRA it is their adapters.
Li et al., "The WMDP benchmark: measuring and reducing malicious use with unlearning"
(arXiv 2403.03218), section 5.

The paper's setting for Zephyr-7B (32 layers) is L = 7, c = 6.5, alpha = 1200; open-unlearning's
TOFU configuration uses L = 7, c = 300, alpha = 1000. Ours, and why:
- `rmu_layer` defaults to (7 * num_hidden_layers) // 32: the paper's layer 7 on a 32-layer model
  (Llama-2-7B, Zephyr-7B), at the same relative depth on others (layer 0 of the built-in world's
  1- and 2-layer models, 3 of a 16-layer one).
- `retain_weight` keeps the toolkit's default of 1, not the paper's 1200. alpha balances two
  squared errors whose sizes depend on the model's activation scale at layer L and on c (the paper
  and open-unlearning chose different alphas for different models), so no single number carries
  over; recipes set it per model. `--retain_weight 1200 --rmu_layer 7 --rmu_coefficient 6.5` is
  the paper's objective (tests/test_fidelity.py checks it against the paper's formula).
- Positions: those whose next token is an answer token (the last prompt token up to the one
  before the end token), i.e. the positions whose outputs the answer NLL scores; N_F and N_R are
  the window's answer-token counts, so each term is a mean squared error over positions and
  hidden units, as the paper's `mse_loss`. The paper's data is raw text and it scores every
  position.
- u is drawn as the paper's code does: uniform on [0, 1)^H, then normalized (not a Gaussian).
- h_L is `hidden_states[L + 1]` of the model's output (the layer's output, as the paper's hook);
  for the last decoder layer HF returns it after the final norm, which is what is steered there.
"""

from __future__ import annotations

import torch

from ..data.qa import IGNORE_INDEX
from .common import MethodContext, Term
from .registry import register


def _bare(model):
    """The model inside a DDP or similar wrapper (which has no `config`); its forward still goes through the
    wrapper, which synchronizes the gradients."""
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    return model


def steered_layer(model, config) -> int:
    """The decoder layer whose output is steered: `rmu_layer`, or (7 * num_hidden_layers) // 32."""
    n_layers = model.config.num_hidden_layers
    layer = (7 * n_layers) // 32 if config.rmu_layer is None else config.rmu_layer
    if layer >= n_layers:
        raise ValueError(
            f"--rmu_layer {layer} is out of range for a model of {n_layers} decoder layer(s); choose 0..{n_layers - 1}"
        )
    return layer


def train_layers(model, config) -> list[int]:
    """Decoder layers whose parameters train: `rmu_train_layers`, or L-2..L (clamped at layer 0)."""
    if config.rmu_train_layers:
        layers = [int(x) for x in config.rmu_train_layers.split(",")]
    else:
        layer = steered_layer(model, config)
        layers = list(range(max(0, layer - 2), layer + 1))
    n_layers = model.config.num_hidden_layers
    if not all(0 <= x < n_layers for x in layers):
        raise ValueError(
            f"--rmu_train_layers {config.rmu_train_layers} names a layer outside 0..{n_layers - 1}; "
            "give decoder layer indices of this model"
        )
    return layers


def _decoder_layers_prefix(model) -> str:
    """Qualified name of the model's list of decoder layers (the ModuleList as long as the model is deep)."""
    n_layers = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return name
    raise ValueError(f"rmu: found no list of {n_layers} decoder layers in {type(model).__name__}")


def rmu_trainable(model, config) -> set[str]:
    """Names of the trainable parameters in the chosen layers whose names contain a chosen part."""
    prefix = _decoder_layers_prefix(model)
    layer_prefixes = tuple(f"{prefix}.{x}." for x in train_layers(model, config))
    parts = [p.strip() for p in config.rmu_train_params.split(",") if p.strip()]
    names = {
        name
        for name, p in model.named_parameters()
        if p.requires_grad and name.startswith(layer_prefixes) and any(part in name for part in parts)
    }
    if not names:
        raise ValueError(
            f"rmu trains no parameter: no trainable parameter of layers {train_layers(model, config)} contains "
            f"{config.rmu_train_params!r}; check --rmu_train_layers and --rmu_train_params (under LoRA, the "
            "adapters' target modules)"
        )
    return names


def random_direction(hidden_size: int, seed: int) -> torch.Tensor:
    """u: uniform on [0, 1)^H from a generator seeded with `seed`, scaled to unit length (fp32, CPU)."""
    u = torch.rand(hidden_size, generator=torch.Generator().manual_seed(seed))
    return u / u.norm()


def layer_output(model, batch: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    """Output of decoder layer `layer` for every position: [B, T, H]."""
    out = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
    )
    return out.hidden_states[layer + 1]


def _scored_positions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, T-1] mask of the positions whose next token is an answer token (as the NLL scores them)."""
    return (batch["labels"][:, 1:] != IGNORE_INDEX).float()


def squared_error_sum(h: torch.Tensor, target: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over scored positions of (1/H) ||h_t - target_t||^2 (target broadcasts over positions)."""
    error = (h.float() - target.float()).pow(2).mean(-1)[:, :-1]
    return (error * _scored_positions(batch)).sum()


@register(
    "rmu",
    paper="arXiv:2403.03218",
    summary="steer one layer's activations on forget data to a random direction, keep them on retain",
    needs_reference=lambda config: True,
    knobs=(
        "rmu_layer",
        "rmu_coefficient",
        "rmu_train_layers",
        "rmu_train_params",
        "forget_weight",
        "retain_weight",
    ),
    trainable=rmu_trainable,
    deviations="retain_weight 1 (paper: alpha 1200, --retain_weight 1200); answer positions only (paper: all text)",
)
def rmu(model, forget, retain, ctx: MethodContext) -> dict[str, Term]:
    cfg = ctx.config
    layer = steered_layer(_bare(model), cfg)  # under a launch `model` is the DDP wrapper
    h_forget = layer_output(model, forget, layer)
    control = cfg.rmu_coefficient * random_direction(h_forget.size(-1), cfg.seed).to(h_forget.device)
    with torch.no_grad():
        h_frozen = layer_output(ctx.reference_model, retain, layer)
    h_retain = layer_output(model, retain, layer)
    return {
        "forget": Term(
            squared_error_sum(h_forget, control, forget), stream="forget", weight=cfg.forget_weight
        ),
        "retain": Term(
            squared_error_sum(h_retain, h_frozen, retain), stream="retain", weight=cfg.retain_weight
        ),
    }
