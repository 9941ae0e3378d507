"""Options of the TOFU evaluation (arXiv 2401.06121): batch size, generation length, reference, cache, MIA."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..runs.options import ConfigError, check_field_types, require


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
        check_field_types(self)
        require(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, "at least 1")
        require(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "at least 1")
        if self.truth_ratio_variant not in ("geometric", "arithmetic"):
            raise ConfigError(
                f"unknown truth_ratio_variant {self.truth_ratio_variant!r}; choose geometric or arithmetic"
            )
