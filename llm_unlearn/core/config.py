"""`UnlearnConfig`: `transformers.TrainingArguments` plus the options of the training core.

As TRL's `DPOConfig` does, it extends `TrainingArguments`, so every Trainer field is a config key
too. The options of the core (method choice and term weights, the combination of per-term
gradients, GeN, the stop rule and `--auto`) are declared here; the options of particular methods
come from `methods/args.py` (`MethodOptions`, a mixin). Parsing recipes and command lines is
`cli/parse.py`'s job.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..methods import COMBINES
from ..methods.args import MethodOptions
from ..runs.options import ConfigError, check_field_types, require, suggest

# `--auto`: what it sets, below anything given in a recipe or on the command line (parse_config); its
# second regime, used where the first costs model utility, is in auto.py.
from .auto import AUTO_SETTINGS, own_regime  # AUTO_SETTINGS re-exported: cli/parse.py, benchmarks

logger = logging.getLogger("llm_unlearn")


STOP_RULES = ("indistinguishable",)
# stop.py; `auto`: truth_ratio where the holdout has paraphrased and perturbed answers, else auc.
STOP_STATISTICS = ("auto", "truth_ratio", "truth_ratio_constructed", "auc", "ks")
# Scored alike; they differ in where the perturbed answers come from (stop_data.py).
TRUTH_RATIO_STATISTICS = ("truth_ratio", "truth_ratio_constructed")


# Values `__post_init__` derives from other fields where none is given (combine from the method, max_grad_norm
# from combine, retain_batch_size from the forget batch). Marked by type, so that `dataclasses.replace`, which
# passes every field on, derives them again from the changed fields instead of keeping the old method's.
class _DerivedStr(str):
    pass


class _DerivedFloat(float):
    pass


class _DerivedInt(int):
    pass


# Trainer's own fields, type-checked by us only where our checks read them (`_check_ranges`): Trainer's
# `__post_init__` rewrites some of the others (e.g. include_num_input_tokens_seen to "no"), which a
# `dataclasses.replace` then passes back in.
_TRAINER_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainingArguments)) - {
    "learning_rate", "weight_decay", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "seed", "max_grad_norm", "warmup_steps",
}  # fmt: skip


@dataclass
class UnlearnConfig(MethodOptions, TrainingArguments):
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
        vanish_ratio (`float`, *optional*, defaults to 1e-3): under `normalized`, a term whose gradient
            norm falls below this fraction of its largest earlier norm is left out of that step, as a
            saturated loss (NPO's forget term once the forget set is forgotten) would otherwise be
            scaled back up to a full step (core/optim.py); 0 keeps every nonzero term.
        vanish_stop (`int`, *optional*, defaults to 0): under `normalized`, end training once the forget
            terms have been left out as vanished in this many optimizer steps (in all): the forget loss
            has saturated, and every later step would fine-tune on the retain set alone. 0: never.
        max_grad_norm (`float`, *optional*): defaults to 1.0, or 0 (no clipping) for `normalized`.
        sam_rho (`float`, *optional*, defaults to 0.0): sharpness-aware unlearning (arXiv 2502.05374,
            core/sam.py): the method's forget terms are minimized at their worst-case neighbour
            theta + rho g / ||g|| (g their gradient at theta), its retain terms at theta; composes with
            every method and combination, GeN and LoRA, at one extra forward/backward per step. 0: off.
        forget_token_max_df (`float`, *optional*): the forget term trains only on answer tokens that at
            most this share of the retain answers contain (data/rare_tokens.py). Unset or 1: whole answers.
        forget_token_df_split (`str`, *optional*): the split those shares are counted on; defaults to the
            retain split (a larger one when the retain split is a small sample).
        forget_token_siblings (`int`, *optional*, defaults to 0): > 0: the forget term trains only on the
            answer tokens that none of this many sibling answers has (other entities' answers to the most
            similar retain questions, data/constructed.py); data/rare_tokens.py, `keep_contrast_labels`.
        forget_token_nll_cap (`str`, *optional*): graddiff and ngdiff ascend on a forget answer token only
            while its NLL is below this many nats (`holdout`: the mean NLL the model gives the stop rule's
            holdout answer tokens before training); methods/common.py, `capped_nll_sum`. Unset: unbounded.

    Options of particular methods (npo_beta, rmu_layer, gc_form, ...) are in `methods/args.py`.
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
    vanish_ratio: float = field(
        default=1e-3,
        metadata={
            "help": "Under combine normalized: leave out of a step a term whose gradient norm fell below this "
            "fraction of its largest earlier norm (a saturated loss, e.g. NPO's forget term); 0 turns it off."
        },
    )
    vanish_stop: int = field(
        default=0,
        metadata={
            "help": "Under combine normalized: end training once --vanish_ratio has left the forget terms out of "
            "this many steps (nothing is left to unlearn; later steps would train on the retain set alone); 0: never."
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
    max_grad_norm: float | None = field(
        default=None,
        metadata={
            "help": "Gradient clipping; default 1.0, or none (0) for normalized combination (||d|| <= 2)."
        },
    )
    sam_rho: float = field(
        default=0.0,
        metadata={
            "help": "Sharpness-aware unlearning (arXiv 2502.05374): radius of the worst-case weight perturbation "
            "at which the forget terms are minimized (retain terms stay at the weights); resists relearning "
            "(0 = off)."
        },
    )
    forget_token_max_df: float | None = field(
        default=None,
        metadata={
            "help": "Train the forget term only on answer tokens found in at most this share of the retain "
            "answers (0: in none), leaving the phrasing both sets share alone (data/rare_tokens.py; unset or 1: "
            "whole answers)."
        },
    )
    forget_token_df_split: str | None = field(
        default=None,
        metadata={
            "help": "Split whose answers --forget_token_max_df counts token frequency on (default: the retain "
            "split). Pass a larger one when the retain split is a small sample: on a few dozen answers, common "
            "words count as rare (data/rare_tokens.py). It must not share questions with the forget split."
        },
    )
    forget_token_siblings: int = field(
        default=0,
        metadata={
            "help": "Train the forget term only on the answer tokens that none of this many sibling answers has: "
            "other entities' answers to the most similar retain questions, names replaced (the constructed "
            "wrong answers of the stop rule, data/constructed.py). Keeps the facts, drops the shared template. "
            "0: off."
        },
    )
    forget_token_nll_cap: str | None = field(
        default=None,
        metadata={
            "help": "Bound the forget term of graddiff and ngdiff: ascend on an answer token only while its NLL "
            "is below this many nats, so that forgetting stops where a token is as unlikely as an unseen fact's. "
            "holdout: the mean NLL the model gives the stop rule's holdout answer tokens (those "
            "--forget_token_max_df or --forget_token_siblings keeps) before training. Unset: unbounded ascent."
        },
    )
    auto: bool = field(
        default=False,
        metadata={
            "help": "No tuning: NPO on rare answer tokens, NGDiff steps with GeN from lr 0.1 (SGD), stopped by "
            "--stop_rule indistinguishable, then a retain-only repair; where those steps cost model utility, "
            "again from the start with AdamW at lr 1e-4 (docs/auto.md). Explicit options still win."
        },
    )
    auto_fallback: bool = field(
        default=True,
        metadata={
            "help": "Under --auto: if the utility guard fires in the first regime, start again from the original "
            "weights in the second (core/auto.py). Off by itself once you set one of its training choices (method, "
            "combination, optimizer, learning rate, GeN, schedule, epochs, weight decay, --forget_token_max_df) "
            "to another value than --auto's."
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
            "help": "truth_ratio (signed KS of per-question truth ratios; needs <holdout>_perturbed), "
            "truth_ratio_constructed (the same, with wrong answers built from other retain authors' answers to "
            "similar questions, for a holdout without perturbed answers, e.g. TOFU's; docs/auto.md), auc (loss "
            "AUC - 1/2), ks (signed KS of losses); auto = truth_ratio if the holdout has perturbed answers, else "
            "truth_ratio_constructed."
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
            "kept (under --auto: switches to its second regime instead). 0 = off; --auto: 0.2 (the 80% floor)."
        },
    )
    stop_utility_sample: int = field(
        default=20, metadata={"help": "Questions per role scored by --stop_utility_tolerance's estimate."}
    )
    stop_retain_recall_tolerance: float = field(
        default=0.0,
        metadata={
            "help": "Also answer --stop_retain_recall_sample retain questions greedily at each check and score what "
            "the report's collateral-damage line scores (fact recall where rows carry a fact, else ROUGE-L recall); "
            "a check that lost more than this share of the first check's stops the run (retain_recall_alarm) and is "
            "never kept. 0 = off; --auto: 0.15."
        },
    )
    stop_retain_recall_sample: int = field(
        default=100, metadata={"help": "Retain questions answered by --stop_retain_recall_tolerance's guard."}
    )
    stop_screen: bool = field(
        default=True,
        metadata={
            "help": "With the truth_ratio statistic, score only the answers (1 of 7 candidates per question) "
            "while their loss gap is still > 0, and truth ratios from its first crossing on (stop.py). Off with "
            "--stop_lr_damping, which needs the gap at every check."
        },
    )
    stop_repair: bool = field(
        default=False,
        metadata={
            "help": "Let the retain-recall guard stop nothing while unlearning, then fine-tune on the retain set "
            "alone until the sampled retain recall is back within --stop_repair_tolerance of the first "
            "check's (core/repair.py): deeper forgetting at the same retain recall on the built-in worlds."
        },
    )
    stop_repair_tolerance: float = field(
        default=0.1,
        metadata={
            "help": "--stop_repair trains until the sampled retain recall has lost at most this share of the first "
            "check's: stricter than the guard's 0.15, since stopping at the first check past a noisy threshold "
            "overestimates (core/repair.py)."
        },
    )
    stop_repair_lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate of --stop_repair."})
    stop_repair_interval: int = field(
        default=5, metadata={"help": "Retain-only steps of --stop_repair between two recall checks."}
    )
    stop_repair_max_steps: int = field(
        default=200, metadata={"help": "At most this many retain-only steps for --stop_repair."}
    )
    stop_repair_anchors: int = field(
        default=0,
        metadata={
            "help": "--stop_repair also fine-tunes on this many texts the model wrote itself before unlearning "
            "(sampled from its BOS token), until their loss is back within --stop_repair_tolerance of what it was "
            "then: they carry what the model knew outside the retain set, which retain-only repair does not "
            "restore (core/repair.py; experimental: on SmolLM2 it brought forgetting back, docs/auto.md). 0 = off."
        },
    )
    stop_repair_anchor_length: int = field(
        default=64, metadata={"help": "New tokens per --stop_repair_anchors text."}
    )
    stop_holdout_split: str | None = field(
        default=None,
        metadata={"help": "Unseen split to compare with (default: the forget split's holdoutNN)."},
    )
    undo_alpha: float = field(
        default=0.0,
        metadata={
            "help": "After unlearning (and its evaluation), run UNDO (pipeline/distill.py, arXiv 2506.06278) into "
            "OUTPUT_DIR-undo: mix this share of fresh initialization into a copy and distill the run into it "
            "(0: off; `llm-unlearn unlearn` only; same as `llm-unlearn distill OUTPUT_DIR --alpha A`)."
        },
    )
    undo_max_steps: int = field(
        default=-1,
        metadata={"help": "Distillation steps of --undo_alpha (-1: pipeline/distill.py's default epochs)."},
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

    @classmethod
    def for_auto(cls, **changes) -> UnlearnConfig:
        """`--auto` from Python: its settings (`core/auto.AUTO_SETTINGS`) under `changes`, as `llm-unlearn
        unlearn --auto` gives them. As there, a regime setting of your own turns the fallback off."""
        config = cls(**{**AUTO_SETTINGS, "auto": True, **changes})
        config.end_fallback_for_own_regime()
        return config

    def end_fallback_for_own_regime(self) -> list[str]:
        """`--auto` with one of its training choices set to another value keeps the user's regime: the fallback
        to the second is off (core/auto.fallback_applies), and unlearn_config.yaml records it off. Returns the
        options that made the regime the user's ([] where nothing changed)."""
        own = own_regime(self) if self.auto and self.auto_fallback else []
        if own:
            self.auto_fallback = False
        return own

    def __post_init__(self):
        from ..methods import get_method

        if self.auto and self.stop_rule is None:
            # The field alone changes nothing: its settings are applied where options are parsed.
            raise ConfigError(
                "auto=True alone trains with the plain defaults (no stop rule, no GeN): in Python build --auto's "
                "settings with UnlearnConfig.for_auto(output_dir=..., **your_changes)"
            )
        check_field_types(self, skip=_TRAINER_FIELDS)  # before any check or derivation reads them
        self._check_ranges()
        if self.forget_token_max_df == 1:  # whole answers, the same as unset: one spelling in saved configs
            self.forget_token_max_df = None
        if self.combine is None or isinstance(self.combine, _DerivedStr):
            self.combine = _DerivedStr(get_method(self.method).combine)
        if self.combine not in COMBINES:
            raise ConfigError(f"unknown combine {self.combine!r}; choose {', '.join(COMBINES)}")
        if self.max_grad_norm is None or isinstance(self.max_grad_norm, _DerivedFloat):
            self.max_grad_norm = _DerivedFloat(0.0 if self.combine == "normalized" else 1.0)
        elif self.combine == "normalized" and self.max_grad_norm > 0:
            logger.warning(
                "max_grad_norm=%g clips the normalized direction, whose norm is up to 2 by design; "
                "set --max_grad_norm 0 to follow NGDiff exactly", self.max_grad_norm,
            )  # fmt: skip
        if self.vanish_stop and (self.combine != "normalized" or self.vanish_ratio <= 0):
            raise ConfigError(
                f"--vanish_stop ends training on a forget term left out by --vanish_ratio, which only the normalized "
                f"combination does (here combine {self.combine}, vanish_ratio {self.vanish_ratio:g}): pass --combine "
                "normalized and --vanish_ratio > 0, or drop --vanish_stop"
            )
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
        if self.sam_rho > 0:
            # SAM's pre-pass runs the forget and retain backward passes itself, as the combinations do.
            if self.fp16:
                raise ConfigError(
                    "--sam_rho does not work with fp16: its forget-gradient pre-pass bypasses the loss scaler; "
                    "use --bf16 true or fp32"
                )
            if self.deepspeed:
                raise ConfigError(
                    "--sam_rho is not supported under DeepSpeed, whose engine clips and steps inside backward; "
                    "use DDP (recipes/accelerate/)"
                )
        if self.stop_rule is not None and self.stop_rule not in STOP_RULES:
            raise ConfigError(f"unknown stop_rule {self.stop_rule!r}{suggest(self.stop_rule, STOP_RULES)}; choose {', '.join(STOP_RULES)}")  # fmt: skip
        for name, choices in (("retain_loss", ("nll", "kl")), ("retain_kl_positions", ("answer", "all")),
                              ("stop_statistic", STOP_STATISTICS)):  # fmt: skip
            if getattr(self, name) not in choices:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}; choose {' or '.join(choices)}")
        self.check_method_options()
        if self.retain_batch_size is None or isinstance(self.retain_batch_size, _DerivedInt):
            self.retain_batch_size = _DerivedInt(self.per_device_train_batch_size)
        import torch

        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinning needs an accelerator; avoid torch's warning
        super().__post_init__()
        self._check_schedule()
        if self.gen:
            self._check_gen_schedule()
        if self.stop_lr_damping:
            if not self.stop_rule:
                raise ConfigError(
                    "--stop_lr_damping scales the lr by the stop rule's gap: pass --stop_rule indistinguishable (or --auto)"
                )
            self._check_gen_schedule("--stop_lr_damping", "set --stop_lr_damping false")
        if self.stop_repair and self.deepspeed:
            raise ConfigError(
                "--stop_repair is not supported under DeepSpeed (its retain-only steps run on the whole model in "
                "every process); use DDP, or set --stop_repair false"
            )
        if self.stop_repair and not (self.stop_rule and self.stop_retain_recall_tolerance > 0):
            raise ConfigError(
                "--stop_repair repairs until the retain-recall guard is met: pass --auto (or --stop_rule "
                "indistinguishable with --stop_retain_recall_tolerance > 0)"
            )
        if self.stop_repair_anchors and not self.stop_repair:
            raise ConfigError(
                "--stop_repair_anchors are trained on by --stop_repair: pass --stop_repair true, or "
                "--stop_repair_anchors 0"
            )
        for name in ("stop_utility_tolerance", "stop_retain_recall_tolerance"):
            if getattr(self, name) > 0 and not self.stop_rule:
                raise ConfigError(
                    f"--{name} guards the stop rule's checks: pass --stop_rule indistinguishable (or --auto)"
                )

    def _check_ranges(self) -> None:
        """Every numeric option in range before any work starts (one line naming the option and the fix)."""
        # Named as given: `distill` checks its own --alpha too, but that is not what this user typed.
        require(0 <= self.undo_alpha <= 1, "undo_alpha", self.undo_alpha, "in [0, 1] (0: off)")
        require(
            self.per_device_train_batch_size >= 1,
            "per_device_train_batch_size",
            self.per_device_train_batch_size,
            "at least 1",
        )
        if self.retain_batch_size is not None:
            require(self.retain_batch_size >= 1, "retain_batch_size", self.retain_batch_size, "at least 1")
        require(
            self.gradient_accumulation_steps >= 1,
            "gradient_accumulation_steps",
            self.gradient_accumulation_steps,
            "at least 1",
        )
        require(
            math.isfinite(self.learning_rate) and self.learning_rate > 0,
            "learning_rate",
            self.learning_rate,
            "a positive number",
        )
        if self.max_steps is None or self.max_steps <= 0:
            require(
                math.isfinite(self.num_train_epochs) and self.num_train_epochs > 0,
                "num_train_epochs",
                self.num_train_epochs,
                "a positive number (or set --max_steps)",
            )
        for name in ("forget_weight", "retain_weight", "weight_decay"):
            value = getattr(self, name)
            require(math.isfinite(value) and value >= 0, name, value, "a finite number >= 0")
        if (
            self.forget_weight == 0 and self.retain_weight == 0
        ):  # (a method's own terms: UnlearnTrainer checks)
            raise ConfigError(
                "--forget_weight and --retain_weight are both 0, so training would change nothing; set one above 0"
            )
        if self.max_grad_norm is not None:
            require(
                math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0,
                "max_grad_norm",
                self.max_grad_norm,
                ">= 0 (0 = no clipping)",
            )
        require(self.gen_interval >= 1, "gen_interval", self.gen_interval, "at least 1 optimizer step")
        require(0 <= self.vanish_ratio < 1, "vanish_ratio", self.vanish_ratio, "in [0, 1) (0 = off; 1e-3 = leave out a term at a thousandth of its peak norm)")  # fmt: skip
        require(self.vanish_stop >= 0, "vanish_stop", self.vanish_stop, ">= 0 optimizer steps (0 = never stop on a vanished forget term)")  # fmt: skip
        require(math.isfinite(self.sam_rho) and self.sam_rho >= 0, "sam_rho", self.sam_rho, "a finite number >= 0 (0 = off)")  # fmt: skip
        require(self.stop_check_interval >= 0, "stop_check_interval", self.stop_check_interval, ">= 0 (0 = once per epoch)")  # fmt: skip
        require(self.stop_patience >= 1, "stop_patience", self.stop_patience, "at least 1 check")
        require(math.isfinite(self.stop_retain_tolerance) and self.stop_retain_tolerance > 0, "stop_retain_tolerance", self.stop_retain_tolerance, "a positive fraction (0.5 = half the retain set's lead over unseen data)")  # fmt: skip
        require(0 <= self.stop_utility_tolerance < 1, "stop_utility_tolerance", self.stop_utility_tolerance, "in [0, 1) (0 = off; 0.2 = keep 80% of the estimated utility)")  # fmt: skip
        require(self.stop_utility_sample >= 2, "stop_utility_sample", self.stop_utility_sample, "at least 2 questions per role")  # fmt: skip
        require(0 <= self.stop_retain_recall_tolerance < 1, "stop_retain_recall_tolerance", self.stop_retain_recall_tolerance, "in [0, 1) (0 = off; 0.15 = keep 85% of the sampled retain recall)")  # fmt: skip
        require(0 <= self.stop_repair_tolerance < 1, "stop_repair_tolerance", self.stop_repair_tolerance, "in [0, 1) (0.1 = repair to 90% of the first check's sampled retain recall)")  # fmt: skip
        require(math.isfinite(self.stop_repair_lr) and self.stop_repair_lr > 0, "stop_repair_lr", self.stop_repair_lr, "a positive learning rate")  # fmt: skip
        require(self.stop_repair_interval >= 1, "stop_repair_interval", self.stop_repair_interval, "at least 1 step")  # fmt: skip
        require(self.stop_repair_anchors >= 0, "stop_repair_anchors", self.stop_repair_anchors, "0 (off) or a number of texts")  # fmt: skip
        require(self.stop_repair_anchor_length >= 1, "stop_repair_anchor_length", self.stop_repair_anchor_length, "at least 1 token")  # fmt: skip
        require(self.stop_repair_max_steps >= 1, "stop_repair_max_steps", self.stop_repair_max_steps, "at least 1 step")  # fmt: skip
        require(self.stop_retain_recall_sample >= 2, "stop_retain_recall_sample", self.stop_retain_recall_sample, "at least 2 questions")  # fmt: skip
        if self.forget_token_df_split is not None and (
            self.forget_token_max_df is None or self.forget_token_max_df >= 1
        ):
            raise ConfigError(
                "--forget_token_df_split sets where --forget_token_max_df counts token frequency: pass "
                "--forget_token_max_df (e.g. 0) as well, or drop --forget_token_df_split"
            )
        require(self.forget_token_siblings >= 0, "forget_token_siblings", self.forget_token_siblings, "at least 0 (0 = off)")  # fmt: skip
        if (
            self.forget_token_siblings
            and self.forget_token_max_df is not None
            and self.forget_token_max_df < 1
        ):
            raise ConfigError(
                "--forget_token_siblings and --forget_token_max_df each choose the forget tokens: pass one of them"
            )
        if self.forget_token_nll_cap is not None and self.forget_token_nll_cap != "holdout":
            try:
                cap = float(self.forget_token_nll_cap)
            except ValueError:
                cap = math.nan
            require(math.isfinite(cap) and cap > 0, "forget_token_nll_cap", self.forget_token_nll_cap, "a positive number of nats, or holdout")  # fmt: skip
        if self.forget_token_max_df is not None:
            require(0 <= self.forget_token_max_df <= 1, "forget_token_max_df", self.forget_token_max_df, "in [0, 1] (0 = tokens no retain answer has; 1 = whole answers)")  # fmt: skip
        require(0 <= self.stop_heldout_fraction < 1, "stop_heldout_fraction", self.stop_heldout_fraction, "in [0, 1)")  # fmt: skip
        require(0 <= self.gen_gamma < 1, "gen_gamma", self.gen_gamma, "in [0, 1)")
        require(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, ">= 0 (a fraction of the steps when below 1)")  # fmt: skip
        require(self.max_steps == -1 or self.max_steps >= 1, "max_steps", self.max_steps, "-1 (use epochs) or at least 1")  # fmt: skip
        require(self.logging_steps > 0, "logging_steps", self.logging_steps, "> 0 (a fraction of the steps when below 1)")  # fmt: skip
        if str(self.save_strategy) in ("steps", "SaveStrategy.STEPS"):
            require(self.save_steps > 0, "save_steps", self.save_steps, "> 0 (a fraction of the steps when below 1)")  # fmt: skip
        if self.save_total_limit is not None:
            require(self.save_total_limit >= 1, "save_total_limit", self.save_total_limit, "at least 1 (a run resumes from its newest checkpoint)")  # fmt: skip
        for name in ("adam_beta1", "adam_beta2"):
            require(0 <= getattr(self, name) < 1, name, getattr(self, name), "in [0, 1)")
        require(self.adam_epsilon > 0, "adam_epsilon", self.adam_epsilon, "> 0")
        require(0 <= self.seed < 2**32, "seed", self.seed, "in [0, 2**32)")
        require(0 <= self.retain_seed < 2**32, "retain_seed", self.retain_seed, "in [0, 2**32)")
        require(self.dataloader_num_workers >= 0, "dataloader_num_workers", self.dataloader_num_workers, ">= 0")  # fmt: skip
        if self.optim_args:  # transformers splits "k=v,k2=v2" and unpacks each part in two
            pairs = str(self.optim_args).replace(" ", "").split(",")
            require(all(p.count("=") == 1 and not p.startswith("=") for p in pairs), "optim_args", self.optim_args,
                    "comma-separated name=value pairs, e.g. 'eps=1e-8,weight_decay=0'")  # fmt: skip

    def _check_schedule(self):
        """The schedule built once on a stand-in optimizer: options it does not take (`--lr_scheduler_kwargs
        '{"min_lr": 0}'` for linear) fail here in one line, not as a traceback when training starts."""
        import torch
        from transformers import get_scheduler

        dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        try:
            return get_scheduler(
                self.lr_scheduler_type, optimizer=dummy, num_warmup_steps=0, num_training_steps=10,
                scheduler_specific_kwargs=self.lr_scheduler_kwargs or {},
            )  # fmt: skip
        except (TypeError, ValueError) as err:
            name = getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type)
            raise ConfigError(
                f"--lr_scheduler_type {name} with --lr_scheduler_kwargs {self.lr_scheduler_kwargs or {}}: {err}; "
                "fix the scheduler options"
            ) from None

    def _check_gen_schedule(self, option: str = "--gen", fix: str = "set --gen false") -> None:
        """GeN (and the stop rule's damping) scale a multiplier schedule (`LambdaLR`); refuse any other early."""
        import torch

        schedule = self._check_schedule()
        if not isinstance(schedule, torch.optim.lr_scheduler.LambdaLR):
            raise ConfigError(
                f"{option} composes with multiplier schedules (linear, cosine, constant, ...), not "
                f"{getattr(self.lr_scheduler_type, 'value', self.lr_scheduler_type)}; choose one of those or {fix}"
            )
