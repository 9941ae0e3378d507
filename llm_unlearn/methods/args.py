"""Options read by particular methods (`llm-unlearn ls` lists which method reads which).

`MethodOptions` is a dataclass mixin of `core.config.UnlearnConfig`: the fields are config keys like
any other, but they are declared and checked here, beside the methods that read them. Formulas are
in each method's module docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..runs.options import ConfigError, require


@dataclass
class MethodOptions:
    """Options of particular methods; `check_method_options` validates them before any work.

    Parameters:
        npo_beta (`float`, defaults to 0.1): NPO's inverse temperature (npo, and gc's NPO term).
        simnpo_beta / simnpo_gamma (`float`, default 2.5 / 0.0): SimNPO's inverse temperature and margin.
        dpo_beta (`float`, defaults to 0.1): DPO's inverse temperature (dpo).
        refusals_file (`str`, *optional*): refusal answers, one per line (idkpo, dpo); the packaged list
            by default.
        rmu_layer (`int`, *optional*): decoder layer RMU steers; defaults to (7 * num_hidden_layers) // 32,
            the paper's layer 7 of 32 at any depth.
        rmu_coefficient (`float`, defaults to 6.5): length c of RMU's steering target c u.
        rmu_train_layers (`str`, *optional*): comma-separated decoder layers RMU trains; default L-2..L.
        rmu_train_params (`str`, defaults to `"mlp.down_proj"`): comma-separated parts of the names of
            the parameters RMU trains within those layers.
        undial_strength (`float`, defaults to 10.0): how far UNDIAL lowers the answer token's logit.
        gc_chunks (`int`, defaults to 2): chunks of a forget micro-batch whose gradients gc collides.
        gc_form (`str`, defaults to `"cosine"`): `cosine` (bounded) or `inner` (raw inner products).
        gc_weight (`float`, defaults to 1.0): weight of the collision term.
        gc_forget_loss (`str`, defaults to `"npo"`): gc's direct forgetting term, `npo` or `ga`.
        gc_params (`str`, defaults to `""`): comma-separated parts of the names of the parameters whose
            gradients collide; empty: every trainable parameter.
    """

    npo_beta: float = field(default=0.1, metadata={"help": "NPO inverse temperature beta (npo, gc)."})
    simnpo_beta: float = field(default=2.5, metadata={"help": "SimNPO inverse temperature beta."})
    simnpo_gamma: float = field(default=0.0, metadata={"help": "SimNPO margin gamma."})
    dpo_beta: float = field(default=0.1, metadata={"help": "DPO inverse temperature beta (dpo)."})
    refusals_file: str | None = field(
        default=None,
        metadata={"help": "Refusal answers, one per line, for idkpo and dpo (default: the packaged list)."},
    )
    rmu_layer: int | None = field(
        default=None,
        metadata={
            "help": "Decoder layer RMU steers (default: (7 * num_hidden_layers) // 32, the paper's 7 of 32)."
        },
    )
    rmu_coefficient: float = field(default=6.5, metadata={"help": "Length c of RMU's steering target c*u."})
    rmu_train_layers: str | None = field(
        default=None, metadata={"help": "Comma-separated decoder layers RMU trains (default: L-2..L)."}
    )
    rmu_train_params: str = field(
        default="mlp.down_proj",
        metadata={"help": "Comma-separated parts of the names of the parameters RMU trains in those layers."},
    )
    undial_strength: float = field(
        default=10.0, metadata={"help": "How far UNDIAL lowers the answer token's logit."}
    )
    gc_chunks: int = field(
        default=2, metadata={"help": "Chunks of a forget micro-batch whose gradients gc collides."}
    )
    gc_form: str = field(default="cosine", metadata={"help": "gc collision form: cosine (bounded) or inner."})
    gc_weight: float = field(default=1.0, metadata={"help": "Weight of gc's collision term."})
    gc_forget_loss: str = field(default="npo", metadata={"help": "gc's direct forgetting term: npo or ga."})
    gc_params: str = field(
        default="",
        metadata={
            "help": "Comma-separated name parts of the parameters with colliding gradients (empty: all)."
        },
    )

    def check_method_options(self) -> None:
        """Every method option in range and every file it names readable (one line naming option and fix)."""
        for name in ("npo_beta", "simnpo_beta", "dpo_beta", "rmu_coefficient", "undial_strength"):
            value = getattr(self, name)
            require(math.isfinite(value) and value > 0, name, value, "a positive number")
        for name in ("simnpo_gamma", "gc_weight"):
            value = getattr(self, name)
            require(math.isfinite(value) and value >= 0, name, value, "a finite number >= 0")
        if self.rmu_layer is not None:
            require(self.rmu_layer >= 0, "rmu_layer", self.rmu_layer, ">= 0 (a decoder layer index)")
        require(self.gc_chunks >= 2, "gc_chunks", self.gc_chunks, "at least 2 (gradients collide in pairs)")
        for name, choices in (("gc_form", ("cosine", "inner")), ("gc_forget_loss", ("npo", "ga"))):
            if getattr(self, name) not in choices:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}; choose {' or '.join(choices)}")
        if self.rmu_train_layers is not None and not all(
            part.strip().isdigit() for part in self.rmu_train_layers.split(",")
        ):
            raise ConfigError(
                f"--rmu_train_layers {self.rmu_train_layers!r} must be comma-separated layer indices, e.g. 5,6,7"
            )
        if self.refusals_file is not None:
            path = Path(self.refusals_file)
            if not path.is_file():
                raise FileNotFoundError(
                    f"refusals file {path} not found; pass a text file with one refusal answer per line"
                )
            if not path.read_text(encoding="utf-8").strip():
                raise ConfigError(f"refusals file {path} is empty; give one refusal answer per line")
