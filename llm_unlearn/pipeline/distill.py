"""UNDO, unlearn-noise-distill-on-outputs (Lee et al., "Distillation Robustifies Unlearning", arXiv 2506.06278).

Unlearning by gradient on the outputs hides what a model knows more than it removes it: a few
fine-tuning steps on part of the forget set bring the rest back (`llm-unlearn probe`). UNDO takes
a finished unlearning run as the teacher, damages a copy of its weights and trains that copy to
imitate the teacher's outputs on data that holds no forget example. The student inherits the
teacher's behaviour; the latent knowledge that only the weights kept is partly destroyed by the
noise and is not taught back, since the teacher never shows it.

Noise. A fresh initialization theta_init is drawn with the model's own initializer
(`from_config`, i.e. `_init_weights`, under `torch.manual_seed(seed)`), and every parameter is mixed:

    theta_student = (1 - alpha) * theta_unlearned + alpha * beta * theta_init,   alpha in [0, 1]

alpha = 0 keeps the teacher (distillation then has nothing to repair), alpha = 1 is a student
trained from scratch (beta = 1). Buffers (rotary frequencies) are not parameters and are kept.
Our reading differs from the paper's code in the noise: it draws Xavier-uniform noise for matrices
and scales it by beta = 0.1, while we use the model's own initializer and beta = 1 by default
(`--noise_beta`), so that alpha = 1 is exactly a fresh model of the same architecture, norm gains
included, and any Hugging Face causal LM is handled alike.

Distillation. The teacher is frozen; on each batch the loss is the forward KL from the teacher's
next-token distribution to the student's over the full vocabulary, averaged over every non-padding
position (prompt and answer alike, as the paper distills on whole text):

    L = (1 / N) sum_{b, t : mask[b, t] = 1} sum_v p_T(v | x_<=t) (log p_T(v | x_<=t) - log p_S(v | x_<=t))

Data. Never the forget split: by default the run's retain split (each answer in all its training
phrasings) plus, from the same source, `pretrain` (the built-in world's real-author and world-fact
text) or, on TOFU, `real_authors` and `world_facts`, where they exist. On TOFU the latter two are
the evaluation's own questions, so model utility after distillation there is optimistic. Any
distillation question that is also a forget question is refused before work starts.

The output is a run directory like `unlearn`'s (status, run_info, unlearn_config.yaml with an
`undo` section, train_log.jsonl, marked checkpoints and resume, model and tokenizer), evaluated at
the end against the run's retain-only reference, and `llm-unlearn probe` reads it unchanged.
`llm-unlearn unlearn --undo_alpha A` runs this step after unlearning, into OUTPUT_DIR-undo.
A LoRA run saves its merged model beside the adapter; that merged model is the teacher, and the
student is a full-weight model (the noise touches every weight, so an adapter could not hold it).
The default Trainer settings (AdamW lr 1e-3, 3 epochs) fit the built-in world's tiny models; a
pretrained LLM wants the learning rate it was fine-tuned with (1e-5 to 1e-4).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from ..data.args import DataArgs
from ..data.qa import DataError, QACollator, QADataset, load_split, pad_id, shared_questions
from ..eval.args import EvalArgs
from ..eval.tofu import recorded_path
from ..models.args import ModelArgs
from ..models.loading import load_model, load_tokenizer
from ..runs.folder import (
    CONFIG_FILE,
    RunError,
    TrainClock,
    append_jsonl,
    claim_run_dir,
    ended_by,
    mark_and_rotate,
    pending_evaluation,
    read_run_config,
    read_status,
    require_complete,
    run_state,
    write_run_info,
    write_status,
)
from ..runs.options import (
    CommandParser,
    ConfigError,
    add_trust_remote_code,
    require,
    require_one_process,
    suggest,
)
from ..runs.resume import check_resume_settings

logger = logging.getLogger("llm_unlearn")

PAPER = "Lee et al., Distillation Robustifies Unlearning, arXiv 2506.06278"
EXTRA_SPLITS = ("pretrain", "real_authors", "world_facts")  # the world has the first, TOFU the others


@dataclass
class DistillSettings:
    """What `distill` does besides reading the unlearned run.

    alpha: share of fresh initialization in the student (0 keeps the teacher, 1 starts from scratch);
    noise_beta: scale of the fresh initialization; seed: the initialization, data order and Trainer;
    splits: distillation splits (None: the run's retain split and whichever of `EXTRA_SPLITS` exist).
    The rest are the Trainer settings of the distillation (AdamW, cosine schedule, warm-up).
    """

    alpha: float
    noise_beta: float = 1.0
    seed: int = 0
    splits: tuple[str, ...] | None = None
    max_steps: int = -1
    num_train_epochs: float = 3.0
    learning_rate: float = 1e-3
    per_device_train_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    warmup_steps: int = 10
    lr_scheduler_type: str = "cosine"
    save_steps: int = 50
    disable_tqdm: bool = False
    trust_remote_code: bool = False  # asked for by this command, not taken from the run's settings


# ------------------------------------------------------------------------------------------ the math


def perturb(student: torch.nn.Module, fresh: torch.nn.Module, alpha: float, beta: float = 1.0) -> None:
    """In place: theta_student <- (1 - alpha) theta_student + alpha beta theta_fresh, parameter by parameter.

    Tied parameters (shared embeddings) are one tensor in `named_parameters`, so they are mixed once.
    """
    fresh_params = dict(fresh.named_parameters())
    with torch.no_grad():
        for name, param in student.named_parameters():
            param.mul_(1 - alpha).add_(fresh_params[name].to(param.dtype), alpha=alpha * beta)


def noised_copy(teacher, alpha: float, beta: float, seed: int, trust_remote_code: bool = False):
    """A new model: the teacher's weights mixed with a fresh initialization of its architecture (seeded)."""
    with _seeded(seed):
        fresh = AutoModelForCausalLM.from_config(
            teacher.config, dtype=teacher.dtype, trust_remote_code=trust_remote_code
        )
    student = copy.deepcopy(teacher)
    perturb(student, fresh, alpha, beta)
    return student


@contextlib.contextmanager
def _seeded(seed: int):
    """Draw under `seed` without moving the global RNG state the Trainer seeds itself."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def distill_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean over positions with mask 1 of KL(p_teacher || p_student) over the vocabulary.

    Logits are [batch, time, vocab], mask [batch, time]; computed in float32.
    """
    log_s = F.log_softmax(student_logits.float(), dim=-1)
    log_t = F.log_softmax(teacher_logits.float(), dim=-1)
    per_position = (log_t.exp() * (log_t - log_s)).sum(-1)
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum().clamp(min=1)


class DistillTrainer(Trainer):
    """Trainer whose loss is `distill_kl` to a frozen teacher; checkpoints are marked as `unlearn`'s are."""

    train_clock = None  # runs/folder.TrainClock: the training seconds each checkpoint's mark records

    def __init__(self, *args, teacher, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
        # The loss is a per-micro-batch mean: Trainer must divide it by the accumulation steps.
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        feed = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        outputs = model(**feed)
        with torch.no_grad():
            teacher_logits = self.teacher(**feed).logits
        loss = distill_kl(outputs.logits, teacher_logits, inputs["attention_mask"])
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "train_loss" in logs:  # as unlearn's: Trainer averages the steps this process ran, not the run's
            logs["train_loss_first_step"] = self._initial_global_step + 1
        super().log(logs, start_time)
        if self.is_world_process_zero():
            record = {"step": self.state.global_step, "epoch": self.state.epoch, **logs}
            append_jsonl(Path(self.args.output_dir) / "train_log.jsonl", record)

    def _save_checkpoint(self, model, trial) -> None:
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # rotate only once the new checkpoint is marked complete
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if not self.is_world_process_zero():
            return
        out, step = Path(self.args.output_dir), self.state.global_step
        folder = mark_and_rotate(out, step, limit, self.train_clock)
        write_status(out, "running", method="undo", step=step, checkpoint=folder.name)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        # training_args.bin is a pickle; unlearn_config.yaml records the settings instead.
        args_file = Path(output_dir or self.args.output_dir) / "training_args.bin"
        if self.is_world_process_zero() and args_file.exists():
            os.remove(args_file)


# ------------------------------------------------------------------------------------------ inputs


def read_run(run_dir: str | Path) -> dict:
    """The resolved config of a complete unlearning run, refusing anything else with one line."""
    run = Path(run_dir)
    if run.is_file():
        raise FileNotFoundError(
            f"run directory {run} is a file; pass the output_dir of `llm-unlearn unlearn`"
        )
    if not run.is_dir():
        raise FileNotFoundError(
            f"run directory {run} does not exist; pass the output_dir of `llm-unlearn unlearn`"
        )
    if read_status(run) is None or not (run / CONFIG_FILE).is_file():
        raise RunError(
            f"{run} is not an llm-unlearn run directory (no status.json or {CONFIG_FILE}); "
            "pass the output_dir of a finished `llm-unlearn unlearn`"
        )
    require_complete(run, "distill")
    return read_run_config(run, required=True)


def _fields(cls, config: dict) -> dict:
    return {f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config}


def default_splits(config: dict) -> tuple[str, ...]:
    """The run's retain split and whichever of `EXTRA_SPLITS` its data source holds."""
    retain = config.get("retain_split")
    if not retain:
        raise RunError("the run's unlearn_config.yaml names no retain_split; pass --splits")
    if config.get("data_dir"):
        have = [s for s in EXTRA_SPLITS if (Path(config["data_dir"]) / f"{s}.json").is_file()]
    else:
        have = ["real_authors", "world_facts"]  # TOFU on the Hub
    return (retain, *have)


def distill_rows(config: dict, splits: tuple[str, ...]) -> list[dict]:
    """Question/answer rows to distill on, one per answer phrasing; refuses any forget question."""
    source = dict(data_dir=config.get("data_dir"), dataset_name=config.get("dataset_name"))
    forget_split = config["forget_split"]
    forget = load_split(forget_split, **source)
    rows = []
    for split in splits:
        loaded = load_split(split, **source)
        overlap = shared_questions(loaded, forget)
        if overlap:
            raise DataError(
                f"distillation split {split} shares {len(overlap)} question(s) with the forget split "
                f"{forget_split} (e.g. {overlap[0][:60]!r}); UNDO never trains on the forget set: pass "
                "--splits without it"
            )
        rows += [
            {"question": r["question"], "answer": a}
            for r in loaded
            for a in [r["answer"], *r.get("train_answers", [])]
        ]
    return rows


def check_settings(settings: DistillSettings) -> None:
    if not 0.0 <= settings.alpha <= 1.0:
        raise ValueError(
            f"--alpha {settings.alpha} is outside [0, 1]; pass the share of fresh initialization, e.g. 0.3"
        )
    if not (math.isfinite(settings.noise_beta) and settings.noise_beta >= 0):
        raise ValueError(f"--noise_beta {settings.noise_beta} is not a scale >= 0; pass one (default 1)")
    if settings.max_steps == 0 or (settings.max_steps < 0 and settings.num_train_epochs <= 0):
        raise ValueError("no distillation steps: pass --max_steps N > 0 or --num_train_epochs > 0")
    # The Trainer's own settings: the Trainer would take most of these and fail mid-run or divide by zero.
    require(
        math.isfinite(settings.num_train_epochs),
        "num_train_epochs",
        settings.num_train_epochs,
        "a finite number",
    )
    require(math.isfinite(settings.learning_rate) and settings.learning_rate > 0, "learning_rate",
            settings.learning_rate, "a positive number")  # fmt: skip
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "save_steps"):
        require(getattr(settings, name) >= 1, name, getattr(settings, name), "at least 1")
    require(settings.warmup_steps >= 0, "warmup_steps", settings.warmup_steps, ">= 0")
    require(settings.seed >= 0, "seed", settings.seed, ">= 0")
    from transformers.trainer_utils import SchedulerType

    kinds = [k.value for k in SchedulerType]
    if settings.lr_scheduler_type not in kinds:
        raise ConfigError(
            f"unknown --lr_scheduler_type {settings.lr_scheduler_type!r}{suggest(settings.lr_scheduler_type, kinds)}; choose one of {', '.join(kinds)}"
        )


# ------------------------------------------------------------------------------------------ the job


def distill(
    run_dir: str | Path,
    output_dir: str | Path,
    settings: DistillSettings,
    callbacks: list | None = None,
    command: list[str] | None = None,
    evaluation_follows: bool = False,
) -> Path:
    """Distill the unlearned model in `run_dir` into a noised copy of itself; return the new run directory.

    Checks everything first (settings, the run, the data and its overlap with the forget split, the
    output folder); a killed or failed distillation resumes from its last marked checkpoint when
    called again with the same arguments. `evaluation_follows`: as `unlearn()`'s (the run is complete
    with its evaluation pending until its eval.json is written).
    """
    from .unlearn import check_output_dir, drop_training_state, prepare_output_dir, write_run_config

    check_settings(settings)
    config = read_run(run_dir)
    splits = settings.splits or default_splits(config)
    rows = distill_rows(config, splits)
    out = Path(output_dir)
    if out.resolve() == Path(run_dir).resolve():
        raise RunError(f"--output_dir {out} is the unlearned run itself; choose a new folder")
    check_output_dir(str(out), evaluation_follows)
    data = DataArgs(**_fields(DataArgs, config))
    model_args = ModelArgs(**_fields(ModelArgs, config))
    load = dict(trust_remote_code=settings.trust_remote_code)
    with claim_run_dir(out):
        resume = prepare_output_dir(str(out), evaluation_follows)
        tokenizer = load_tokenizer(str(run_dir), **load)
        dataset = QADataset(rows, tokenizer, data.prompt_format, data.max_length, data.system_prompt)
        teacher = load_model(str(run_dir), **load, torch_dtype=model_args.torch_dtype)
        student = noised_copy(teacher, settings.alpha, settings.noise_beta, settings.seed, **load)
        args = TrainingArguments(
            output_dir=str(out), seed=settings.seed, data_seed=settings.seed, max_steps=settings.max_steps,
            num_train_epochs=settings.num_train_epochs, learning_rate=settings.learning_rate,
            per_device_train_batch_size=settings.per_device_train_batch_size,
            gradient_accumulation_steps=settings.gradient_accumulation_steps, warmup_steps=settings.warmup_steps,
            lr_scheduler_type=settings.lr_scheduler_type, weight_decay=0.0, adam_beta2=0.98,
            save_strategy="steps", save_steps=settings.save_steps, save_total_limit=1, logging_steps=1,
            report_to=[], disable_tqdm=settings.disable_tqdm, remove_unused_columns=False,
            dataloader_pin_memory=torch.cuda.is_available(),  # pinning is for a GPU; on the CPU torch warns
        )  # fmt: skip
        trainer = DistillTrainer(
            model=student, args=args, train_dataset=dataset, data_collator=QACollator(pad_id(tokenizer)),
            processing_class=tokenizer, teacher=teacher, callbacks=callbacks,
        )  # fmt: skip
        source = read_status(run_dir)
        record = dict(config, output_dir=str(out)) | {
            "undo": dataclasses.asdict(settings) | {"splits": list(splits), "source_run": recorded_path(run_dir),
                                                    "source_train_seconds": source.get("train_seconds"),
                                                    "paper": PAPER, "distill_rows": len(rows)},
        }  # fmt: skip
        check_resume_settings(out, record)  # an unfinished distillation goes on only with its own settings
        if run_state(read_status(out)) == "unevaluated" and evaluation_follows:
            logger.info("%s was distilled to the end; its final evaluation is what is left", out)
            write_run_config(out, record)
            write_run_info(out, command)
            return out
        out.mkdir(parents=True, exist_ok=True)
        write_run_config(out, record)
        write_run_info(out, command, resumed_from=resume)
        write_status(out, "running", method="undo")
        trainer.train_clock = clock = TrainClock(resume)  # seconds over every resume, not this one's alone
        try:
            trainer.train(resume_from_checkpoint=resume)
            trainer.save_model(str(out))
        except BaseException as err:
            state, fields = ended_by(err)
            write_status(out, state, method="undo", **fields)
            raise
        seconds = round(clock.seconds(), 2)
        write_status(
            out,
            "complete",
            method="undo",
            train_seconds=seconds,
            **(pending_evaluation() if evaluation_follows else {}),
        )
        drop_training_state(out)
    logger.info("distillation finished in %.1f s: %s", seconds, out)
    return out


def eval_args_of(config: dict, reference_model: str | None, reference_eval: str | None) -> EvalArgs:
    """The run's evaluation settings; a reference given here replaces the run's."""
    eval_args = EvalArgs(**_fields(EvalArgs, config))
    if reference_model or reference_eval:
        eval_args.reference_model, eval_args.reference_eval = reference_model, reference_eval
    return eval_args


def make_parser() -> argparse.ArgumentParser:
    d = DistillSettings(alpha=0.0)

    p = CommandParser(prog="llm-unlearn distill", description=f"UNDO ({PAPER}): noise a copy of an unlearned run's "
               "model and distill the run's outputs into it, on data without the forget set.")  # fmt: skip
    p.add_argument("run_dir", help="a complete `llm-unlearn unlearn` run directory (the teacher)")
    p.add_argument("--alpha", type=float, required=True, help="share of fresh initialization in [0, 1]")
    p.add_argument("--output_dir", required=True, help="the new run directory")
    p.add_argument("--noise_beta", type=float, default=d.noise_beta, help="scale of the fresh initialization")
    p.add_argument("--seed", type=int, default=d.seed, help="fresh initialization, data order, Trainer")
    p.add_argument("--splits", help="comma-separated distillation splits (default: the run's retain split "
                   "and pretrain, or real_authors and world_facts, where they exist)")  # fmt: skip
    p.add_argument("--max_steps", type=int, default=d.max_steps, help="optimizer steps (-1: by epochs)")
    p.add_argument("--num_train_epochs", type=float, default=d.num_train_epochs)
    p.add_argument("--learning_rate", type=float, default=d.learning_rate)
    p.add_argument("--per_device_train_batch_size", type=int, default=d.per_device_train_batch_size)
    p.add_argument("--gradient_accumulation_steps", type=int, default=d.gradient_accumulation_steps)
    p.add_argument("--warmup_steps", type=int, default=d.warmup_steps)
    p.add_argument("--lr_scheduler_type", default=d.lr_scheduler_type)
    p.add_argument("--save_steps", type=int, default=d.save_steps, help="checkpoint every N steps (resume)")
    p.add_argument("--reference_model", help="retain-only model for forget quality (default: the run's)")
    p.add_argument("--reference_eval", help="its eval.json instead (default: the run's)")
    p.add_argument("--no_eval", action="store_true", help="skip the final evaluation")
    p.add_argument("--disable_tqdm", action="store_true")
    add_trust_remote_code(p)
    return p


def distill_cli(argv: list[str]) -> tuple[Path, dict | None]:
    """`llm-unlearn distill`: distill, then evaluate like `unlearn` (eval.json); returns (run, eval result)."""
    from .evaluate import check_reference, evaluate_with_reference

    args = make_parser().parse_args(argv)
    require_one_process("distill")
    names = {f.name for f in dataclasses.fields(DistillSettings)} - {"splits"}
    settings = DistillSettings(**{k: v for k, v in vars(args).items() if k in names})
    settings.splits = tuple(s for s in args.splits.split(",") if s) if args.splits else None
    check_settings(settings)
    if settings.disable_tqdm:  # transformers' own bars too (loading and writing weights)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    config = read_run(args.run_dir)
    eval_args = eval_args_of(config, args.reference_model, args.reference_eval)
    if not args.no_eval:
        check_reference(eval_args)
    out = distill(
        args.run_dir, args.output_dir, settings, command=["llm-unlearn", "distill", *argv],
        evaluation_follows=not args.no_eval,
    )  # fmt: skip
    if args.no_eval:
        return out, None
    data, model_args = DataArgs(**_fields(DataArgs, config)), ModelArgs(**_fields(ModelArgs, config))
    model_args.trust_remote_code = settings.trust_remote_code
    result = evaluate_with_reference(str(out), data, eval_args, model_args, out_path=out / "eval.json")
    return out, result
