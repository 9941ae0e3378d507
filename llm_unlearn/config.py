"""Configuration dataclasses and the YAML + CLI parser.

`UnlearnConfig` extends `transformers.TrainingArguments` (as TRL's `DPOConfig` does): every Trainer
field is a config key too. A recipe is a flat YAML file whose keys are fields of these dataclasses;
precedence is dataclass default < YAML < command line. Field names are unique across the
dataclasses, so a flat key always means one thing, and an unknown key is an error that names the
nearest valid one.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments

from .data import PROMPT_FORMATS
from .methods import COMBINES

logger = logging.getLogger("llm_unlearn")


TORCH_DTYPES = ("float32", "bfloat16", "float16")
STOP_RULES = ("indistinguishable",)
# stop.py; `auto`: truth_ratio where the holdout has paraphrased and perturbed answers, else auc.
STOP_STATISTICS = ("auto", "truth_ratio", "auc", "ks")
# `--auto`: what it sets, below anything given in a recipe or on the command line (parse_config).
AUTO_SETTINGS = {
    "method": "ngdiff", "gen": True, "optim": "sgd", "learning_rate": 0.1, "lr_scheduler_type": "constant",
    "weight_decay": 0.0, "num_train_epochs": 20, "stop_rule": "indistinguishable",
}  # fmt: skip


class ConfigError(ValueError):
    """An invalid configuration: the message names the key and the fix."""


@dataclass
class ModelArgs:
    """Which model to start from and how to load it."""

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
        if self.torch_dtype not in TORCH_DTYPES:
            raise ConfigError(
                f"unknown torch_dtype {self.torch_dtype!r}{suggest(self.torch_dtype, TORCH_DTYPES)}; "
                f"choose {', '.join(TORCH_DTYPES)}"
            )
        _require(self.lora_r >= 1, "lora_r", self.lora_r, "at least 1")
        _require(math.isfinite(self.lora_alpha) and self.lora_alpha > 0, "lora_alpha", self.lora_alpha, "> 0")
        _require(0 <= self.lora_dropout < 1, "lora_dropout", self.lora_dropout, "in [0, 1)")


@dataclass
class DataArgs:
    """Where the TOFU-format data comes from and how examples are formatted."""

    data_dir: str | None = field(
        default=None, metadata={"help": "Local folder of TOFU-format `<split>.json` files."}
    )
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id, e.g. locuslab/TOFU."})
    forget_split: str = field(
        default="forget10", metadata={"help": "Split to forget (forget01, forget05, forget10)."}
    )
    retain_split: str | None = field(
        default=None,
        metadata={"help": "Split to retain; defaults to the forget split's pair (forget10 -> retain90)."},
    )
    prompt_format: str = field(
        default="chat_template", metadata={"help": f"How a question is wrapped: {', '.join(PROMPT_FORMATS)}."}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "System message for `chat_template`."})
    max_length: int = field(
        default=1024,
        metadata={
            "help": "Longest prompt + answer in tokens; longer examples are an error, never truncated. A check, "
            "not a padding size (batches pad to their longest example); 1024 fits the real TOFU."
        },
    )

    def __post_init__(self):
        _require(
            self.max_length >= 2, "max_length", self.max_length, "at least 2 tokens (a prompt and an answer)"
        )
        if self.prompt_format not in PROMPT_FORMATS:
            raise ConfigError(
                f"unknown prompt_format {self.prompt_format!r}{suggest(self.prompt_format, PROMPT_FORMATS)}; "
                f"choose {', '.join(PROMPT_FORMATS)}"
            )


@dataclass
class UnlearnConfig(TrainingArguments):
    """`TrainingArguments` plus the fields that control unlearning.

    Parameters that control the method:
        method (`str`, *optional*, defaults to `"graddiff"`): registered method name or dotted path.
        retain_loss (`str`, *optional*, defaults to `"nll"`): `nll` or `kl` (to the frozen original model).
        retain_kl_positions (`str`, *optional*, defaults to `"answer"`): where the `kl` retain term is
            scored: `answer` (the answer tokens, as the NLL) or `all` (every non-padding position, as
            TOFU's and open-unlearning's KL; see methods/common.py).
        forget_weight / retain_weight (`float`, *optional*, default 1.0): weights of the loss terms.
        retain_batch_size (`int`, *optional*): retain micro-batch size; defaults to the forget batch size.
        retain_seed (`int`, *optional*, defaults to 0): seed of the retain loader's order.
        combine (`str`, *optional*): `sum` (gradient of the weighted sum), `normalized` (each term's
            gradient normalized by its global L2 norm, then summed: NGDiff) or `pcgrad` (PCGrad, arXiv
            2001.06782: each term's gradient projected off every other it conflicts with, in an order
            seeded by `seed` and the step); defaults to the method's.
        max_grad_norm (`float`, *optional*): defaults to 1.0, or 0 (no clipping) for `normalized`.

    Parameters of particular methods (`llm-unlearn ls` lists the ones each method reads; formulas
    in each method's module docstring):
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

    method: str = field(default="graddiff", metadata={"help": "Unlearning method (see `llm-unlearn ls`)."})
    retain_loss: str = field(default="nll", metadata={"help": "Retain term of graddiff: nll or kl."})
    retain_kl_positions: str = field(
        default="answer",
        metadata={
            "help": "Positions the kl retain term scores: answer (answer tokens) or all (TOFU's: every one)."
        },
    )
    forget_weight: float = field(default=1.0, metadata={"help": "Weight of the forget term."})
    retain_weight: float = field(default=1.0, metadata={"help": "Weight of the retain term."})
    retain_batch_size: int | None = field(
        default=None, metadata={"help": "Retain micro-batch size per device."}
    )
    retain_seed: int = field(default=0, metadata={"help": "Seed of the retain loader's cyclic order."})
    combine: str | None = field(
        default=None,
        metadata={
            "help": "How loss terms become one update: sum, normalized (NGDiff) or pcgrad (each term's gradient "
            "projected off every other it conflicts with; arXiv 2001.06782) (default: the method's own)."
        },
    )
    gen: bool = field(
        default=False,
        metadata={
            "help": "Set the learning rate by GeN's quadratic fit along the update (arXiv 2407.02772)."
        },
    )
    gen_interval: int = field(
        default=4, metadata={"help": "Probe and refit the GeN learning rate every N steps."}
    )
    gen_gamma: float = field(
        default=0.9, metadata={"help": "GeN smoothing: eta <- gamma*eta + (1-gamma)*eta*."}
    )
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
    max_grad_norm: float | None = field(
        default=None,
        metadata={
            "help": "Gradient clipping; default 1.0, or none (0) for normalized combination (||d|| <= 2)."
        },
    )
    auto: bool = field(
        default=False,
        metadata={
            "help": "No tuning: ngdiff + GeN from lr 0.1 (SGD), stopped by --stop_rule indistinguishable; "
            "explicit options still win."
        },
    )
    stop_rule: str | None = field(
        default=None,
        metadata={
            "help": "indistinguishable: stop once the forget set looks like the holdout split (stop.py)."
        },
    )
    stop_statistic: str = field(
        default="auto",
        metadata={
            "help": "truth_ratio (signed KS of per-question truth ratios; needs <holdout>_perturbed), auc (loss "
            "AUC - 1/2), ks (signed KS of losses); auto = truth_ratio if the holdout has perturbed answers, else auc."
        },
    )
    stop_check_interval: int = field(
        default=0, metadata={"help": "Check every N optimizer steps; 0 = once per epoch."}
    )
    stop_patience: int = field(
        default=3, metadata={"help": "Stop after N checks that bring the gap no closer to 0."}
    )
    stop_retain_tolerance: float = field(
        default=0.5,
        metadata={
            "help": "Stop (alarm) once the retain loss gives up more than this share of its lead over unseen "
            "data (holdout loss - retain loss); such weights are never kept."
        },
    )
    stop_heldout_fraction: float = field(
        default=0.1,
        metadata={"help": "Forget questions kept out of training and scored by the rule (per author)."},
    )
    stop_lr_damping: bool = field(
        default=False,
        metadata={
            "help": "After each check, scale the learning rate by the share of the gap still left (gap / first "
            "gap, at least 0.1), so that the crossing is approached in smaller steps; composes with GeN."
        },
    )
    stop_utility_tolerance: float = field(
        default=0.0,
        metadata={
            "help": "Also estimate model utility at each check, on --stop_utility_sample questions each of retain, "
            "real authors and world facts (as the evaluation scores them, greedy answers included); a check that "
            "lost more than this share of the first check's estimate stops the run (utility_alarm) and is never "
            "kept. 0 = off; 0.2 = the 80% floor."
        },
    )
    stop_utility_sample: int = field(
        default=20, metadata={"help": "Questions per role scored by --stop_utility_tolerance's estimate."}
    )
    stop_screen: bool = field(
        default=True,
        metadata={
            "help": "With the truth_ratio statistic, score only the answers (1 of 7 candidates per question) "
            "while their loss gap is still > 0, and truth ratios from its first crossing on (stop.py). Off with "
            "--stop_lr_damping, which needs the gap at every check."
        },
    )
    stop_holdout_split: str | None = field(
        default=None,
        metadata={"help": "Unseen split to compare with (default: the forget split's holdoutNN)."},
    )
    undo_alpha: float = field(
        default=0.0,
        metadata={
            "help": "After unlearning (and its evaluation), run UNDO (distill.py, arXiv 2506.06278) into "
            "OUTPUT_DIR-undo: mix this share of fresh initialization into a copy and distill the run into it "
            "(0: off; `llm-unlearn unlearn` only; same as `llm-unlearn distill OUTPUT_DIR --alpha A`)."
        },
    )
    undo_max_steps: int = field(
        default=-1, metadata={"help": "Distillation steps of --undo_alpha (-1: distill.py's default epochs)."}
    )
    # Trainer defaults that are wrong for unlearning.
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep our tokenized columns."})
    logging_steps: float = field(default=1, metadata={"help": "Log every N optimizer steps."})
    save_strategy: str = field(
        default="epoch", metadata={"help": "Checkpoint every epoch so a run can resume."}
    )
    save_total_limit: int | None = field(default=1, metadata={"help": "Keep only the newest checkpoint."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate."})
    num_train_epochs: float = field(default=5.0, metadata={"help": "Passes over the forget set."})
    per_device_train_batch_size: int = field(
        default=8, metadata={"help": "Forget micro-batch size per device."}
    )

    def __post_init__(self):
        from .methods import get_method

        self._check_ranges()
        if self.combine is None:
            self.combine = get_method(self.method).combine
        if self.combine not in COMBINES:
            raise ConfigError(f"unknown combine {self.combine!r}; choose {', '.join(COMBINES)}")
        if self.max_grad_norm is None:
            self.max_grad_norm = 0.0 if self.combine == "normalized" else 1.0
        elif self.combine == "normalized" and self.max_grad_norm > 0:
            logger.warning(
                "max_grad_norm=%g clips the normalized direction, whose norm is up to 2 by design; "
                "set --max_grad_norm 0 to follow NGDiff exactly", self.max_grad_norm,
            )  # fmt: skip
        if self.combine != "sum":
            # Both combinations run each term's backward themselves, outside the loss scaler and the engine.
            if self.fp16:
                raise ConfigError(
                    f"{self.combine} combination does not work with fp16: its per-term backward bypasses the "
                    "loss scaler (and under normalized the scale cancels in g/||g||); use --bf16 true or fp32"
                )
            if self.deepspeed:
                raise ConfigError(
                    f"{self.combine} combination is not supported under DeepSpeed, whose engine clips and "
                    "steps inside backward; use FSDP2 or DDP (recipes/accelerate/)"
                )
        if self.stop_rule is not None and self.stop_rule not in STOP_RULES:
            raise ConfigError(f"unknown stop_rule {self.stop_rule!r}{suggest(self.stop_rule, STOP_RULES)}; choose {', '.join(STOP_RULES)}")  # fmt: skip
        for name, choices in (("retain_loss", ("nll", "kl")), ("retain_kl_positions", ("answer", "all")),
                              ("gc_form", ("cosine", "inner")),
                              ("gc_forget_loss", ("npo", "ga")), ("stop_statistic", STOP_STATISTICS)):  # fmt: skip
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
        if self.retain_batch_size is None:
            self.retain_batch_size = self.per_device_train_batch_size
        import torch

        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinning needs an accelerator; avoid torch's warning
        super().__post_init__()
        if self.gen:
            self._check_gen_schedule()
        if self.stop_lr_damping:
            if not self.stop_rule:
                raise ConfigError(
                    "--stop_lr_damping scales the lr by the stop rule's gap: pass --stop_rule indistinguishable (or --auto)"
                )
            self._check_gen_schedule("--stop_lr_damping", "set --stop_lr_damping false")
        if self.stop_utility_tolerance > 0 and not self.stop_rule:
            raise ConfigError(
                "--stop_utility_tolerance guards the stop rule's checks: pass --stop_rule indistinguishable (or --auto)"
            )

    def _check_ranges(self) -> None:
        """Every numeric option in range before any work starts (one line naming the option and the fix)."""
        _require(
            self.per_device_train_batch_size >= 1,
            "per_device_train_batch_size",
            self.per_device_train_batch_size,
            "at least 1",
        )
        if self.retain_batch_size is not None:
            _require(self.retain_batch_size >= 1, "retain_batch_size", self.retain_batch_size, "at least 1")
        _require(
            self.gradient_accumulation_steps >= 1,
            "gradient_accumulation_steps",
            self.gradient_accumulation_steps,
            "at least 1",
        )
        _require(
            math.isfinite(self.learning_rate) and self.learning_rate > 0,
            "learning_rate",
            self.learning_rate,
            "a positive number",
        )
        if self.max_steps is None or self.max_steps <= 0:
            _require(
                math.isfinite(self.num_train_epochs) and self.num_train_epochs > 0,
                "num_train_epochs",
                self.num_train_epochs,
                "a positive number (or set --max_steps)",
            )
        for name in ("forget_weight", "retain_weight", "weight_decay"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value >= 0, name, value, "a finite number >= 0")
        if self.max_grad_norm is not None:
            _require(
                math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0,
                "max_grad_norm",
                self.max_grad_norm,
                ">= 0 (0 = no clipping)",
            )
        _require(self.gen_interval >= 1, "gen_interval", self.gen_interval, "at least 1 optimizer step")
        _require(self.stop_check_interval >= 0, "stop_check_interval", self.stop_check_interval, ">= 0 (0 = once per epoch)")  # fmt: skip
        _require(self.stop_patience >= 1, "stop_patience", self.stop_patience, "at least 1 check")
        _require(math.isfinite(self.stop_retain_tolerance) and self.stop_retain_tolerance > 0, "stop_retain_tolerance", self.stop_retain_tolerance, "a positive fraction (0.5 = half the retain set's lead over unseen data)")  # fmt: skip
        _require(0 <= self.stop_utility_tolerance < 1, "stop_utility_tolerance", self.stop_utility_tolerance, "in [0, 1) (0 = off; 0.2 = keep 80% of the estimated utility)")  # fmt: skip
        _require(self.stop_utility_sample >= 2, "stop_utility_sample", self.stop_utility_sample, "at least 2 questions per role")  # fmt: skip
        _require(0 <= self.stop_heldout_fraction < 1, "stop_heldout_fraction", self.stop_heldout_fraction, "in [0, 1)")  # fmt: skip
        _require(0 <= self.gen_gamma < 1, "gen_gamma", self.gen_gamma, "in [0, 1)")
        for name in ("npo_beta", "simnpo_beta", "dpo_beta", "rmu_coefficient", "undial_strength"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value > 0, name, value, "a positive number")
        for name in ("simnpo_gamma", "gc_weight"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value >= 0, name, value, "a finite number >= 0")
        if self.rmu_layer is not None:
            _require(self.rmu_layer >= 0, "rmu_layer", self.rmu_layer, ">= 0 (a decoder layer index)")
        _require(self.gc_chunks >= 2, "gc_chunks", self.gc_chunks, "at least 2 (gradients collide in pairs)")
        _require(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, ">= 0 (a fraction of the steps when below 1)")  # fmt: skip
        _require(self.max_steps == -1 or self.max_steps >= 1, "max_steps", self.max_steps, "-1 (use epochs) or at least 1")  # fmt: skip
        _require(self.logging_steps > 0, "logging_steps", self.logging_steps, "> 0 (a fraction of the steps when below 1)")  # fmt: skip
        if str(self.save_strategy) in ("steps", "SaveStrategy.STEPS"):
            _require(self.save_steps > 0, "save_steps", self.save_steps, "> 0 (a fraction of the steps when below 1)")  # fmt: skip
        if self.save_total_limit is not None:
            _require(self.save_total_limit >= 1, "save_total_limit", self.save_total_limit, "at least 1 (a run resumes from its newest checkpoint)")  # fmt: skip
        for name in ("adam_beta1", "adam_beta2"):
            _require(0 <= getattr(self, name) < 1, name, getattr(self, name), "in [0, 1)")
        _require(self.adam_epsilon > 0, "adam_epsilon", self.adam_epsilon, "> 0")
        _require(self.seed >= 0, "seed", self.seed, ">= 0")
        _require(self.retain_seed >= 0, "retain_seed", self.retain_seed, ">= 0")
        _require(self.dataloader_num_workers >= 0, "dataloader_num_workers", self.dataloader_num_workers, ">= 0")  # fmt: skip

    def _check_gen_schedule(self, option: str = "--gen", fix: str = "set --gen false") -> None:
        """GeN (and the stop rule's damping) scale a multiplier schedule (`LambdaLR`); refuse any other early."""
        import torch
        from transformers import get_scheduler

        dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        try:
            schedule = get_scheduler(
                self.lr_scheduler_type, optimizer=dummy, num_warmup_steps=0, num_training_steps=10,
                scheduler_specific_kwargs=self.lr_scheduler_kwargs or {},
            )  # fmt: skip
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"--lr_scheduler_type {self.lr_scheduler_type}: {err}; fix the scheduler options"
            ) from None
        if not isinstance(schedule, torch.optim.lr_scheduler.LambdaLR):
            raise ConfigError(
                f"{option} composes with multiplier schedules (linear, cosine, constant, ...), not "
                f"{getattr(self.lr_scheduler_type, 'value', self.lr_scheduler_type)}; choose one of those or {fix}"
            )


def _require(ok: bool, name: str, value, requirement: str) -> None:
    if not ok:
        raise ConfigError(f"--{name} {value} is out of range; it must be {requirement}")


@dataclass
class EvalArgs:
    """How a model is evaluated (TOFU metrics, arXiv 2401.06121)."""

    eval_batch_size: int = field(default=32, metadata={"help": "Batch size for scoring and generation."})
    max_new_tokens: int = field(default=64, metadata={"help": "Greedy generation length for ROUGE-L."})
    truth_ratio_variant: str = field(
        default="geometric", metadata={"help": "geometric (default) or arithmetic."}
    )
    reference_model: str | None = field(
        default=None, metadata={"help": "Retain-only reference model folder, evaluated for forget quality."}
    )
    reference_eval: str | None = field(
        default=None, metadata={"help": "eval.json of the reference (or a legacy eval_log_aggregated.json)."}
    )
    do_final_eval: bool = field(default=True, metadata={"help": "Evaluate at the end of `unlearn`."})
    eval_cache: bool = field(
        default=True,
        metadata={
            "help": "Reuse an earlier evaluation whose model files, data files, scoring code and settings are all "
            "the same (content hashes, in $LLM_UNLEARN_CACHE/evals; eval/cache.py); false recomputes."
        },
    )
    mia: bool = field(
        default=True,
        metadata={
            "help": "Membership inference (forget vs holdout split) in the evaluation, where a holdout exists."
        },
    )

    def __post_init__(self):
        _require(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, "at least 1")
        _require(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "at least 1")
        if self.truth_ratio_variant not in ("geometric", "arithmetic"):
            raise ConfigError(
                f"unknown truth_ratio_variant {self.truth_ratio_variant!r}; choose geometric or arithmetic"
            )


CONFIG_CLASSES = (ModelArgs, DataArgs, UnlearnConfig, EvalArgs)


def field_names(classes=CONFIG_CLASSES) -> set[str]:
    return {f.name for cls in classes for f in dataclasses.fields(cls) if f.init}


def suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_yaml(path: str | Path, classes=CONFIG_CLASSES) -> dict[str, Any]:
    """Read a flat recipe; refuse unknown keys with a suggestion."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {path} not found; pass an existing YAML recipe (see recipes/README.md)"
        )
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "unparsable"
        raise ConfigError(
            f"config file {path} is not valid YAML ({problem}{where}); fix its syntax"
        ) from None
    if not isinstance(values, dict):
        raise ConfigError(
            f"config file {path} must be a flat mapping of key: value; write one `key: value` per line "
            "(see recipes/world/graddiff.yaml)"
        )
    known = field_names(classes)
    scalar = _scalar_fields(classes)
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown config key {key!r} in {path}{suggest(key, known)}")
        if key in scalar and isinstance(value, (list, dict)):
            raise ConfigError(
                f"config key {key!r} in {path} must be a single {scalar[key]}, not a {type(value).__name__}; "
                "fix its value"
            )
    return values


_SCALAR_TYPES = ("int", "float", "bool", "str")


def _scalar_fields(classes) -> dict[str, str]:
    """Fields holding one int, float, bool or str (optionally None): name -> type name."""
    out = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            text = f.type if isinstance(f.type, str) else str(f.type)
            text = text.replace("<class '", "").replace("'>", "").replace(" | None", "")
            if f.init and text in _SCALAR_TYPES:
                out[f.name] = text
    return out


def _as_cli_text(value: Any) -> Any:
    """A YAML scalar as the command line would spell it, so argparse checks and converts its type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return value


def _wants_auto(argv: list[str], yaml_values: dict) -> bool:
    """`--auto` (bare or `--auto true`) on the command line, or `auto: true` in the recipe."""
    truthy = ("true", "1", "yes", "y", "t")
    for i, token in enumerate(argv):
        if token == "--auto":
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else "true"
            return value.lower() in truthy
        if token.startswith("--auto="):
            return token.split("=", 1)[1].lower() in truthy
    return str(yaml_values.get("auto", "")).lower() in truthy


# `--help` sections, in a recipe's order (model, data, method, training, evaluation), then Trainer's own
# options. UnlearnConfig's own fields go to the section `_FIELD_SECTIONS` names, else to the method knobs
# (those a registered method reads) or "unlearning, other options"; any TrainingArguments field in
# `_TRAINING_FIELDS` to "training", the others last; another dataclass's fields to its `_CLASS_SECTIONS`
# title (else its docstring's first line), with its docstring's first line below the title.
TRAINER_SECTION = "transformers.TrainingArguments options (standard Trainer settings)"
_METHOD_SECTION = "unlearning method and combination"
_KNOBS_SECTION = "options of particular methods (`llm-unlearn ls` lists which method reads which)"
_OTHER_SECTION = "unlearning, other options"
_GEN_SECTION = "GeN learning rate (arXiv 2407.02772)"
_STOP_SECTION = "stop rule (stop.py): stop once the forget set looks unseen"
_TRAINING_SECTION = "training (the Trainer settings most runs set)"
_CLASS_SECTIONS = {
    "ModelArgs": "model",
    "DataArgs": "data",
    "FinetuneArgs": "fine-tuning",
    "EvalArgs": "evaluation",
}
_FIELD_SECTIONS = {
    **dict.fromkeys(
        ("method", "auto", "combine", "retain_loss", "retain_kl_positions", "forget_weight", "retain_weight",
         "retain_batch_size", "retain_seed", "max_grad_norm"),
        _METHOD_SECTION,
    ),
    **dict.fromkeys(("gen", "gen_interval", "gen_gamma"), _GEN_SECTION),
}  # fmt: skip
_TRAINING_FIELDS = (
    "output_dir", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "learning_rate", "lr_scheduler_type", "warmup_steps", "optim", "weight_decay", "seed", "bf16",
    "logging_steps", "save_strategy", "save_total_limit", "remove_unused_columns", "push_to_hub", "hub_model_id",
)  # fmt: skip
_SECTION_ORDER = ("model", "data", "fine-tuning", None, _METHOD_SECTION, _KNOBS_SECTION, _OTHER_SECTION,
                  _GEN_SECTION, _STOP_SECTION, _TRAINING_SECTION, "evaluation", TRAINER_SECTION)  # fmt: skip


def help_section(cls: type, f: dataclasses.Field) -> str:
    """The `--help` section of field `f` of dataclass `cls` (see `_FIELD_SECTIONS`)."""
    from .methods import METHODS

    if issubclass(cls, TrainingArguments):
        inherited = TrainingArguments.__dataclass_fields__.get(f.name) is f  # not redeclared by `cls`
        if not inherited and f.name in _FIELD_SECTIONS:
            return _FIELD_SECTIONS[f.name]
        if f.name in _TRAINING_FIELDS:
            return _TRAINING_SECTION
        if inherited:
            return TRAINER_SECTION
        if f.name == "stop_rule" or f.name.startswith("stop_"):
            return _STOP_SECTION
        return _KNOBS_SECTION if any(f.name in m.knobs for m in METHODS.values()) else _OTHER_SECTION
    return _CLASS_SECTIONS.get(cls.__name__) or _first_line(cls)


def _first_line(cls: type) -> str:
    return (cls.__doc__ or cls.__name__).strip().splitlines()[0]


class _DefaultsOnceFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: ...)" suffix, except where the help already states its default in words."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(HfArgumentParser):
    """HfArgumentParser whose errors (a bad type, a bad choice) are one ConfigError line, not usage + exit,
    and whose `--help` shows our options first, in sections (`help_section`), and Trainer's last.

    argparse %-formats every help string when `--help` prints, so a literal percent sign in a field's
    help ("the 80% floor") would crash `--help`; every bare `%` is escaped once the fields are added.
    """

    def __init__(self, dataclass_types, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsOnceFormatter)
        kwargs.setdefault("usage", "%(prog)s [--config RECIPE.yaml] [--OPTION VALUE ...]")
        kwargs.setdefault(
            "description",
            "Options are the fields of a flat YAML recipe (--config) and flags; a flag wins over the recipe, "
            "which wins over the defaults. Booleans take true/false.",
        )
        super().__init__(dataclass_types, **kwargs)
        for action in self._actions:
            if isinstance(action.help, str):
                action.help = re.sub(
                    r"%%|%\(|%", lambda m: "%%" if m.group() == "%" else m.group(), action.help
                )
        self._group_help(dataclass_types)

    def _group_help(self, dataclass_types) -> None:
        """Move each option (and its `--no_` twin, same dest) into its section's argument group; parsing
        does not see groups, only `--help` does."""
        classes = dataclass_types if isinstance(dataclass_types, (list, tuple)) else [dataclass_types]
        section = {f.name: help_section(cls, f) for cls in classes for f in dataclasses.fields(cls) if f.init}
        rank = {title: i for i, title in enumerate(_SECTION_ORDER)}
        titles = sorted(dict.fromkeys(section.values()), key=lambda t: rank.get(t, rank[None]))
        described = {help_section(cls, f): _first_line(cls) for cls in classes
                     if not issubclass(cls, TrainingArguments) for f in dataclasses.fields(cls)}  # fmt: skip
        groups = {title: self.add_argument_group(title, described.get(title)) for title in titles}
        for action in self._actions:
            if action.dest in section:
                for group in self._action_groups:
                    if action in group._group_actions:
                        group._group_actions.remove(action)
                groups[section[action.dest]]._group_actions.append(action)
        listed = {name: i for i, name in enumerate([*_FIELD_SECTIONS, *_TRAINING_FIELDS])}  # in listed order
        for group in groups.values():
            group._group_actions.sort(key=lambda action: listed.get(action.dest, len(listed)))

    def error(self, message: str):
        raise ConfigError(f"{message}; see `llm-unlearn {self.prog.split()[-1]} --help`")


def parse_config(
    argv: list[str] | None = None,
    classes=CONFIG_CLASSES,
    overrides: dict | None = None,
    command: str = "unlearn",
):
    """Parse `--config FILE` and `--key value` flags into one instance of each dataclass.

    `overrides` (e.g. a subcommand's own defaults) sit between the dataclass defaults and the YAML.
    YAML scalars are handed to argparse as text, so a recipe's values are type-checked exactly like flags.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    yaml_values: dict[str, Any] = {}
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a YAML file path")
        yaml_values = load_yaml(argv[i + 1], classes)
        del argv[i : i + 2]
    if UnlearnConfig in classes and _wants_auto(argv, yaml_values):
        overrides = {**(overrides or {}), **AUTO_SETTINGS}
    parser = _Parser(classes, prog=f"llm-unlearn {command}")
    scalar = _scalar_fields(classes)
    yaml_values = {k: _as_cli_text(v) if k in scalar else v for k, v in yaml_values.items()}
    parser.set_defaults(**{**(overrides or {}), **yaml_values})
    known = field_names(classes)
    for i, token in enumerate(argv):
        if token == "-help" or (i == 0 and token == "help"):
            raise ConfigError(f"unknown argument {token!r} (did you mean '--help'?)")
        if token.startswith("--") and token != "--help":
            key = token[2:].split("=", 1)[0]
            if key not in known:
                raise ConfigError(f"unknown option --{key}{suggest(key, known | {'help'})}")
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        raise ConfigError(str(err).splitlines()[0]) from None


def to_dict(*configs) -> dict[str, Any]:
    """Flat dict of all fields, with secrets redacted (`runio.is_secret_option`, and any Hugging Face
    token in a text value), for `unlearn_config.yaml`."""
    from .runio import REDACTED, is_secret_option, redact_secrets

    out: dict[str, Any] = {}
    for cfg in configs:
        for f in dataclasses.fields(cfg):
            if not f.init:
                continue
            value = getattr(cfg, f.name)
            if isinstance(value, enum.Enum):
                value = value.value
            if isinstance(value, str) and value:
                value = REDACTED if is_secret_option(f.name) else redact_secrets(value)
            if isinstance(value, (str, int, float, bool, type(None))):
                out[f.name] = value
            elif isinstance(value, (list, tuple)):
                out[f.name] = [v if isinstance(v, (str, int, float, bool)) else str(v) for v in value]
            else:
                out[f.name] = str(value)
    return out
