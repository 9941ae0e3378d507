"""Options that choose the model an unlearning run starts from and how it is loaded."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..runs.options import ConfigError, check_field_types, require, suggest

TORCH_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class LoadArgs:
    """Which model and how to load it."""

    # All that `eval` parses: it trains nothing, so LoRA options there would be accepted and ignored.

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Local model folder or Hub id. The `demo`/world default builds the tiny model."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run code shipped with a Hub model (off: unsafe)."}
    )
    allow_pickle: bool = field(
        default=False,
        metadata={"help": "Allow loading pickle (.bin) weights; off by default, safetensors only."},
    )
    torch_dtype: str = field(
        default="float32", metadata={"help": "float32, bfloat16 or float16 for the weights."}
    )

    def __post_init__(self):
        check_field_types(self)
        if self.torch_dtype not in TORCH_DTYPES:
            raise ConfigError(
                f"unknown torch_dtype {self.torch_dtype!r}{suggest(self.torch_dtype, TORCH_DTYPES)}; "
                f"choose {', '.join(TORCH_DTYPES)}"
            )


@dataclass
class ModelArgs(LoadArgs):
    """Which model to start from, how to load it, and whether to train LoRA adapters on it."""

    use_lora: bool = field(
        default=False, metadata={"help": "Train LoRA adapters (PEFT) instead of all weights."}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA path."})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "Comma-separated module names, or all-linear."}
    )

    def __post_init__(self):
        super().__post_init__()
        require(self.lora_r >= 1, "lora_r", self.lora_r, "at least 1")
        require(math.isfinite(self.lora_alpha) and self.lora_alpha > 0, "lora_alpha", self.lora_alpha, "> 0")
        require(0 <= self.lora_dropout < 1, "lora_dropout", self.lora_dropout, "in [0, 1)")
        names = [name.strip() for name in self.lora_target_modules.split(",")]
        if not all(names):  # peft would say only that no module matches {''}, after the model has loaded
            raise ConfigError(
                f"--lora_target_modules {self.lora_target_modules!r} names an empty module; pass comma-separated "
                "module names (e.g. q_proj,v_proj) or all-linear"
            )
