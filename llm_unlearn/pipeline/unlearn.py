"""`unlearn()`: the Python API behind `llm-unlearn unlearn` (load, validate, train, save, evaluate).

Everything that can be checked before training is checked first (data, method, model path, run
directory; with the final evaluation, its data and the reference's tokenizer too: `core/inputs.py`), so bad
input fails with one line and leaves nothing behind. During training the run
directory carries `status.json` = running; a failure marks it failed with the error, and only a
finished run is marked complete.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import shutil
from pathlib import Path

import torch
import yaml
from transformers import ProgressCallback

from ..core.auto import (
    FIRST_ATTEMPT_DIR,
    MARK_FILE,
    archive_first_attempt,
    fallback_applies,
    fallback_config,
    log_fallback,
    own_regime,
)
from ..core.auto import describe as describe_fallback
from ..core.config import UnlearnConfig
from ..core.inputs import check_eval_lengths, check_same_vocabulary, validate_inputs
from ..core.repair import ANCHOR_FILE
from ..core.stop_state import BEST_FILE
from ..data.args import DataArgs
from ..data.qa import (
    DataError,
    QACollator,
    QADataset,
    check_forget_retain,
    forget_pct,
    load_split,
    pad_id,
    paired_split,
)
from ..eval.args import EvalArgs
from ..eval.tofu import recorded_path
from ..methods import get_method
from ..methods.common import eval_mode
from ..models.args import ModelArgs
from ..models.loading import check_tokenizer_fits, load_model, load_tokenizer
from ..runs.folder import (
    CLAIM_FILE,
    CONFIG_FILE,
    RunError,
    TrainClock,
    checkpoints,
    claim_run_dir,
    ended_by,
    pending_evaluation,
    plain_permissions,
    read_checkpoint_mark,
    read_run_config,
    read_status,
    run_state,
    write_run_info,
    write_status,
    write_text_atomic,
)
from ..runs.redact import to_dict
from ..runs.resume import BOUND, check_resume_settings
from .forget_tokens import (
    check_df_rows,
    check_nll_cap,
    keep_contrast_forget_tokens,
    keep_rare_forget_tokens,
    resolve_nll_cap,
)

logger = logging.getLogger("llm_unlearn")

ADAPTER_DIR = "adapter"  # LoRA runs: the trained adapter, beside the merged model


def resolve_retain_split(data: DataArgs) -> str:
    if data.retain_split:
        return data.retain_split
    if forget_pct(data.forget_split) is None:
        raise DataError(
            f"no retain split pairs with forget split {data.forget_split!r} (TOFU's names pair: forget10 -> "
            "retain90); pass --retain_split NAME"
        )
    return paired_split(data.forget_split, "retain")


def check_output_dir(output_dir: str | None, finish_eval: bool = False) -> dict | None:
    """Refuse an existing directory unless it is our unfinished run; return its status (None: a new run).

    With `finish_eval` (the command evaluates the run next), a run trained to the end whose final
    evaluation was cut short counts as unfinished too. Only reads: it runs once before any work, and again
    under the run's claim (`prepare_output_dir`).
    """
    if not output_dir:
        raise RunError("no --output_dir given; pass a new directory for the run")
    out = Path(output_dir)
    if not out.exists():
        return None
    if not out.is_dir():
        raise RunError(f"output dir {out} is a file; choose a new --output_dir")
    status = read_status(out)
    if status is None:
        if all(p.name == CLAIM_FILE for p in out.iterdir()):
            return None  # an empty folder made for the run, or left by one killed before its first write
        raise RunError(f"output dir {out} exists and is not an llm-unlearn run; choose a new --output_dir")
    state = run_state(status)
    if state == "unevaluated" and finish_eval:
        return status
    if state == "unevaluated":
        raise RunError(
            f"output dir {out} holds a run trained to the end whose final evaluation was cut short; evaluate it "
            f"(`llm-unlearn eval --model_name_or_path {out} ...`) or choose a new --output_dir"
        )
    if state == "complete":
        raise RunError(f"output dir {out} holds a complete run; choose a new --output_dir")
    if state in ("running", "evaluating"):
        raise RunError(
            f"output dir {out} is in use by a running process ({status.get('pid')}); wait for it, or choose a "
            "new --output_dir"
        )
    return status


def prepare_output_dir(output_dir: str | None, finish_eval: bool = False) -> str | None:
    """Check the (claimed) output directory again and return a checkpoint to resume, if any.

    Only a checkpoint marked complete is resumed from; folders cut short by a kill are removed, and
    `train_log.jsonl` is cut back to what the checkpoint covers (later steps will be run again).
    """
    if check_output_dir(output_dir, finish_eval) is None:
        return None
    out = Path(output_dir)
    complete, partial = checkpoints(out)
    if complete:
        _check_checkpoint(complete[-1])  # before anything in the folder changes
        if not any(complete[-1].glob("optimizer*")):  # optimizer.pt, or .bin / optimizer_0/ under accelerate
            logger.warning(
                "%s holds the model only (--save_only_model true): the optimizer and learning-rate schedule "
                "start afresh, so the rest of this run differs from an uninterrupted one",
                complete[-1].name,
            )
    for folder in partial:
        logger.info("removing %s: it was being written when the run stopped", folder.name)
        shutil.rmtree(folder)
    log = out / "train_log.jsonl"
    if complete:
        covered = read_checkpoint_mark(complete[-1])["train_log_bytes"]
        if log.is_file() and log.stat().st_size > covered:
            with open(log, "r+b") as f:
                f.truncate(covered)
        logger.info("resuming %s from %s", out, complete[-1].name)
        return str(complete[-1])
    log.unlink(missing_ok=True)
    logger.info("restarting unfinished run %s (no complete checkpoint yet)", out)
    return None


def _check_checkpoint(folder: Path) -> None:
    """The checkpoint a run resumes from is whole: weights that open and a trainer state that parses (a
    file damaged after the checkpoint was marked complete: a disk error, a hand edit)."""
    import json

    from ..models.loading import check_weight_files

    fix = f"remove {folder} to resume from the checkpoint before it, or choose a new --output_dir"
    try:
        check_weight_files(folder)
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (RunError, OSError, ValueError) as err:
        raise RunError(
            f"{folder.name} of {folder.parent} is damaged ({str(err).splitlines()[0][:160]}); {fix}"
        ) from None
    if not isinstance(state, dict) or "global_step" not in state:
        raise RunError(
            f"{folder.name} of {folder.parent} is damaged (trainer_state.json has no global_step); {fix}"
        )


class AdaptersDisabled:
    """The frozen original model under LoRA: the same base weights with the adapters switched off.

    Deliberately not an `nn.Module`: the trainer freezes its reference model, and freezing this
    wrapper must not freeze the adapters being trained.
    """

    def __init__(self, peft_model):
        self.peft_model = peft_model

    def eval(self):
        return self

    def requires_grad_(self, flag: bool):
        return self

    def __call__(self, **inputs):
        # Deterministic like a frozen copy: the Trainer keeps the wrapped model in train mode, so
        # dropout in the base model would otherwise make every reference call different.
        with torch.no_grad(), eval_mode(self.peft_model), self.peft_model.disable_adapter():
            return self.peft_model(**inputs)


def add_lora(model, model_args: ModelArgs):
    from peft import LoraConfig

    from ..models.loading import with_lora

    targets = model_args.lora_target_modules
    lora = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        # "q_proj, v_proj" names two modules: peft would look for " v_proj" and train q_proj alone
        target_modules=targets
        if targets.strip() == "all-linear"
        else [t.strip() for t in targets.split(",")],
        task_type="CAUSAL_LM",
    )
    return with_lora(model, lora)


class _BarOnly(ProgressCallback):
    """Trainer's progress bar (steps, rate, time left) without its per-step log lines."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


def _close_progress_bars(trainer) -> None:
    """Close Trainer's bar on failure, so the error message starts on a line of its own."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, ProgressCallback) and callback.training_bar is not None:
            callback.training_bar.close()
            callback.training_bar = None


def unlearn(
    model_args: ModelArgs,
    data: DataArgs,
    config: UnlearnConfig,
    eval_args: EvalArgs,
    callbacks: list | None = None,
    command: list[str] | None = None,
    progress_bar_only: bool = False,
    evaluation_follows: bool = False,
    distill_follows: bool = False,
) -> Path:
    """Run one unlearning job and return its run directory.

    Extra `TrainerCallback`s may be given; `command` (argv, program first) is recorded in
    `run_info.json` with secrets redacted (default: this process's `sys.argv`). `progress_bar_only`
    (the demo's choice) shows one progress bar with its time estimate and no per-step log lines on
    stdout; `train_log.jsonl` records every step either way. `evaluation_follows` (the CLI's final
    evaluation): the run is marked complete with its evaluation pending, so that `push` and `report` wait
    for the eval.json, and a run whose evaluation was cut short is returned untrained to be evaluated.
    `distill_follows` (the CLI's `--undo_alpha`): the caller distills the run afterwards, so `undo_alpha` is
    the run's to record; otherwise it is refused, since this function does not distill.
    """
    # The run resolves some settings into numbers it records (`forget_token_nll_cap holdout`); on its own
    # copy, so the caller's config stays as given for another model or a rerun.
    config = copy.copy(config)
    method = get_method(config.method)
    if config.push_to_hub:
        # Trainer would create the repo at start and push every checkpoint, before any evaluation.
        raise RunError(
            "unlearn() does not push: leave push_to_hub off and call llm_unlearn.hub.push.push(run_dir, repo_id=...) "
            "after evaluating, or use `llm-unlearn unlearn --push_to_hub --hub_model_id ORG/NAME`"
        )
    if config.undo_alpha and not distill_follows:
        # The command runs UNDO after the final evaluation; recorded here, it would say a run was distilled.
        raise RunError(
            "unlearn() does not distill: leave undo_alpha at 0 and call llm_unlearn.pipeline.distill.distill on the "
            "run directory after evaluating it, or use `llm-unlearn unlearn --undo_alpha A`"
        )
    if not model_args.model_name_or_path:
        raise RunError("no --model_name_or_path given; pass a model folder or Hub id")
    retain_split = resolve_retain_split(data)
    source = dict(data_dir=data.data_dir, dataset_name=data.dataset_name)
    forget_rows = load_split(data.forget_split, **source)
    retain_rows = load_split(retain_split, **source)
    check_forget_retain(forget_rows, retain_rows, data.forget_split, retain_split)
    df_rows = None
    if config.forget_token_df_split:  # config.py refuses it without --forget_token_max_df < 1
        df_rows = load_split(config.forget_token_df_split, **source)
        check_df_rows(forget_rows, df_rows, data.forget_split, config.forget_token_df_split)
    stop_data = None
    if config.stop_rule:
        from ..core.stop_data import load_stop_data

        stop_data = load_stop_data(data, forget_rows, retain_rows, config)
    check_nll_cap(config, method, stop_data)
    final_eval = eval_args if eval_args.do_final_eval else None
    read = validate_inputs(data, final_eval, retain_split=retain_split)
    if final_eval is not None:
        check_eval_lengths(
            model_args.model_name_or_path, data, read, trust_remote_code=model_args.trust_remote_code
        )
    if final_eval is not None and eval_args.reference_model:
        check_same_vocabulary(
            {"model": model_args.model_name_or_path, "reference model": eval_args.reference_model},
            trust_remote_code=model_args.trust_remote_code,
        )
    check_output_dir(config.output_dir, evaluation_follows)  # a folder not ours is refused before any work
    # Claimed before anything is written into it: of two runs started on one folder, one goes on and
    # the other is refused. Only rank 0 writes into the run directory, so only rank 0 claims it.
    rank_zero = int(os.environ.get("RANK", "0")) == 0
    with claim_run_dir(config.output_dir) if rank_zero else contextlib.nullcontext():
        out = Path(config.output_dir)
        mark = describe_fallback(out) if fallback_applies(config) else None
        # A resumed run that had switched to --auto's second regime goes on there.
        ours = [fallback_config(config), config] if mark is not None else [config]
        # An unfinished run goes on only with its own settings (runs/resume.py), checked before anything in
        # the folder changes; one that fell back may have been killed before it saved the second regime's.
        digest = data_digest({data.forget_split: forget_rows, retain_split: retain_rows}, stop_data)
        # Runs started before 2026-12-08 recorded auto_fallback true with a regime of their own, where the
        # fallback was as inert as the false recorded now: either resumes.
        inert = [dataclasses.replace(c, auto_fallback=True) for c in ours if c.auto and own_regime(c)]
        check_resume_settings(
            out,
            *(settings(model_args, data, c, eval_args, retain_split, digest) for c in [*ours, *inert]),
            progress=mark is not None,
        )
        if run_state(read_status(out)) == "unevaluated" and evaluation_follows:
            logger.info("%s was trained to the end; its final evaluation is what is left", out)
            if rank_zero:  # this command's evaluation settings (free to differ) are what eval.json will hold
                values = settings(model_args, data, ours[0], eval_args, retain_split, digest)
                saved = read_run_config(out) or {}
                # What trained is the run's record: the settings bound to the steps only while training (free
                # to differ now), and the nats `holdout` resolved to. eval_batch_size is this evaluation's, as
                # eval.json records it.
                for key in (*(BOUND - {"eval_batch_size"}), "forget_token_nll_cap"):
                    if key in saved:
                        values[key] = saved[key]
                write_run_config(out, values)
                write_run_info(out, command)
            return out
        resume = prepare_output_dir(config.output_dir, evaluation_follows)
        config = ours[0]
        if mark is not None:
            logger.info("resuming --auto's second regime (%s)", MARK_FILE)
            if rank_zero:  # restarted from its first step: its log begins again with the reason
                log_fallback(out, mark)
        run = _Attempt(model_args, data, config, eval_args, callbacks, progress_bar_only, forget_rows,
                       retain_rows, df_rows, stop_data, out, digest)  # fmt: skip
        asked_cap, recorded = config.forget_token_nll_cap, read_run_config(out) if resume else {}
        trainer = run.build(config)
        if asked_cap == "holdout" and recorded.get("forget_token_nll_cap") not in (
            None,
            config.forget_token_nll_cap,
        ):
            # `holdout` resolves on the model as loaded, so the same command gives the same nats; a run that
            # trained with a number of its own, or on other weights, would go on under another bound.
            raise RunError(
                f"{out} trained with --forget_token_nll_cap {recorded['forget_token_nll_cap']}, but holdout gives "
                f"{config.forget_token_nll_cap} now: rerun with --forget_token_nll_cap "
                f"{recorded['forget_token_nll_cap']} to resume it, or choose a new --output_dir"
            )
        if trainer.is_world_process_zero():
            out.mkdir(parents=True, exist_ok=True)
            run.write_config(config)
            write_run_info(out, command, resumed_from=resume)
            write_status(out, "running", method=get_method(config.method).name)
        trainer.train_clock = clock = TrainClock(resume)  # seconds over every resume, not this one's alone
        try:
            stop = run.train(trainer, resume)
            if stop is not None and stop.decision == "utility_alarm" and fallback_applies(config):
                second = fallback_config(config)
                logger.warning(
                    "--auto: the estimated model utility fell more than %.0f%% at step %d of the fast regime, so "
                    "those steps cost knowledge the forget set never named; starting again from the original "
                    "weights with %s at lr %g (%s, %g epochs; docs/auto.md). The first attempt's records are in %s",
                    100 * config.stop_utility_tolerance, stop.history[-1]["step"],
                    getattr(second.optim, "value", second.optim), second.learning_rate, second.method,
                    second.num_train_epochs, FIRST_ATTEMPT_DIR,
                )  # fmt: skip
                if trainer.is_world_process_zero():
                    archive_first_attempt(out, stop)
                config = second
                # The first attempt's model, optimizer and kept weights go before the second model loads.
                first_check = stop.history[0] if stop.history else None
                trainer = stop = run.stop = None
                _free_memory()
                trainer = run.build(config)
                trainer.train_clock = clock  # the first attempt's seconds count too
                run.stop.replay = first_check  # from the same weights: not scored twice (stop.py)
                if trainer.is_world_process_zero():
                    run.write_config(config)
                    write_status(out, "running", method=get_method(config.method).name)
                run.train(trainer, None)
            if model_args.use_lora:
                # The adapter alone (small, for `push`), then the merged model: a plain HF folder that
                # eval, push and from_pretrained read as is.
                if trainer.is_world_process_zero():
                    trainer.model.save_pretrained(str(out / ADAPTER_DIR))
                trainer.model = trainer.model.merge_and_unload()
            trainer.save_model(str(out))
        except BaseException as err:
            if trainer is not None:
                _close_progress_bars(trainer)
            if rank_zero:
                state, fields = ended_by(err)
                write_status(out, state, method=get_method(config.method).name, **fields)
            raise
        if trainer.is_world_process_zero():
            # Complete first, then drop the checkpoints: a kill in between leaves a complete run with
            # spare checkpoints, never an unfinished run without any.
            write_status(
                out,
                "complete",
                method=get_method(config.method).name,
                train_seconds=round(clock.seconds(), 2),
                **(pending_evaluation() if evaluation_follows else {}),
            )
            drop_training_state(out)
        logger.info("unlearning finished in %.1f s: %s", clock.seconds(), out)
        return out


# Options that name local files: saved absolute, so that `eval`, `probe`, `distill` and `push` read the same
# files from any folder (relative, they would resolve against wherever those commands run).
PATH_OPTIONS = ("model_name_or_path", "data_dir", "reference_model", "reference_eval", "refusals_file")


def data_digest(splits: dict[str, list[dict]], stop_data: dict | None = None) -> dict[str, str]:
    """split -> a short hash of its questions and answers, in order, for the data that decides the steps: the
    forget and retain splits, and what the stop rule scores (the holdout; with the truth-ratio statistic the
    paraphrased and perturbed answers of both sides, `stop_scored`; the utility guard's samples of the
    evaluation splits, `stop_utility_<role>`). Saved with the run, so that a resume with a file changed in
    place is refused like one with another split."""
    import hashlib
    import json

    def short(obj) -> str:
        return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]

    digest = {name: short([[r["question"], r["answer"]] for r in rows]) for name, rows in splits.items()}
    if stop_data is not None:
        digest["stop_holdout"] = short([[r["question"], r["answer"]] for r in stop_data["holdout"]])
        if stop_data["statistic"].startswith("truth_ratio"):  # whole rows: their wrong answers are scored too
            digest["stop_scored"] = short([stop_data["forget_scored"], stop_data["holdout"]])
        for role, rows in (stop_data.get("utility_rows") or {}).items():
            digest[f"stop_utility_{role}"] = short(rows)
    return digest


def settings(model_args, data, config, eval_args, retain_split: str, digest: dict | None = None) -> dict:
    """A run's settings as `unlearn_config.yaml` holds them (secrets redacted, local paths absolute, the
    `data_digest` of its splits, and the number of processes: the global batch is the per-device batch times
    it, so a run resumed under another count would train another schedule)."""
    values = to_dict(model_args, data, config, eval_args) | {"retain_split": retain_split}
    values["processes"] = int(os.environ.get("WORLD_SIZE", "1"))
    if digest is not None:
        values["data_sha256"] = digest
    for key in PATH_OPTIONS:
        if isinstance(values.get(key), str) and values[key]:
            values[key] = recorded_path(values[key])
    return values


def write_run_config(out: Path, values: dict) -> None:
    # One line per value: a long path folded over two lines could not be found whole (push's redaction).
    write_text_atomic(out / CONFIG_FILE, yaml.safe_dump(values, sort_keys=False, width=1 << 16))


def _free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def drop_training_state(out: Path) -> None:
    """What only training reads, once the run is complete: its checkpoints, and the stop rule's kept weights
    and the repair's anchors (each as large as the trainable weights: a second copy of a 7B model)."""
    for checkpoint in out.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    for name in (BEST_FILE, ANCHOR_FILE):
        (out / name).unlink(missing_ok=True)
    plain_permissions(out)


class _Attempt:
    """Build and train one `UnlearnTrainer` on the run's data; `--auto`'s second regime builds a second."""

    def __init__(self, model_args, data, config, eval_args, callbacks, progress_bar_only, forget_rows,
                 retain_rows, df_rows, stop_data, out: Path, digest: dict):  # fmt: skip
        self.model_args, self.data, self.eval_args = model_args, data, eval_args
        self.callbacks, self.progress_bar_only = callbacks, progress_bar_only
        self.forget_rows, self.retain_rows, self.df_rows = forget_rows, retain_rows, df_rows
        self.stop_data, self.out, self.digest = stop_data, out, digest
        self.retain_split = resolve_retain_split(data)
        self.stop = None

    def write_config(self, config) -> None:
        write_run_config(
            self.out,
            settings(self.model_args, self.data, config, self.eval_args, self.retain_split, self.digest),
        )

    def build(self, config):
        """Tokenize, load the model (and the reference a method needs) and make the trainer with its callbacks."""
        from ..core.trainer import UnlearnTrainer

        model_args, data, method = self.model_args, self.data, get_method(config.method)
        load = dict(trust_remote_code=model_args.trust_remote_code)
        tokenizer = load_tokenizer(model_args.model_name_or_path, **load)
        encode = dict(
            prompt_format=data.prompt_format, max_length=data.max_length, system_prompt=data.system_prompt
        )
        # The stop rule's held-out forget questions are scored, never trained on (stop.py).
        heldout = set(self.stop_data["heldout"]) if self.stop_data else set()
        trained_rows = [r for i, r in enumerate(self.forget_rows) if i not in heldout]
        forget_ds = QADataset(trained_rows, tokenizer, **encode)
        retain_ds = QADataset(self.retain_rows, tokenizer, **encode)
        frequency = None
        if config.forget_token_max_df is not None and config.forget_token_max_df < 1:
            frequency = keep_rare_forget_tokens(forget_ds, retain_ds, self.df_rows, config, tokenizer, encode)
        if config.forget_token_siblings:
            keep_contrast_forget_tokens(forget_ds, trained_rows, self.retain_rows, config, tokenizer, encode)
        load |= dict(allow_pickle=model_args.allow_pickle, torch_dtype=model_args.torch_dtype)
        model = load_model(model_args.model_name_or_path, **load)
        check_tokenizer_fits(tokenizer, model, model_args.model_name_or_path)
        if config.forget_token_nll_cap == "holdout":
            resolve_nll_cap(
                model, config, self.stop_data["holdout"], self.retain_rows, frequency, tokenizer, encode
            )
        reference = None
        if model_args.use_lora:
            from transformers import set_seed

            # The adapters' random start is part of the run: drawn from --seed, before the Trainer's own
            # seeding (which comes after the model exists), so the same command gives the same weights.
            set_seed(config.seed)
            model = add_lora(model, model_args)
            if method.needs_reference(config):
                reference = AdaptersDisabled(model)
        elif method.needs_reference(config):
            reference = load_model(model_args.model_name_or_path, **load)

        # Built before anything is written: a method that refuses its settings (a layer index out of
        # range, say) fails here, and the claim removes the run directory it made.
        trainer = UnlearnTrainer(
            model=model,
            args=config,
            train_dataset=forget_ds,
            retain_dataset=retain_ds,
            data_collator=QACollator(pad_id(tokenizer)),
            processing_class=tokenizer,
            method=method,
            reference_model=reference,
            callbacks=self.callbacks,
        )
        if self.progress_bar_only:
            from transformers import PrinterCallback

            trainer.remove_callback(PrinterCallback)
            trainer.remove_callback(ProgressCallback)
            trainer.add_callback(_BarOnly())
        self.stop = None
        if self.stop_data is not None:
            from ..core.stop import IndistinguishableStop

            stop_data = self.stop_data
            if (
                not config.stop_utility_tolerance
            ):  # --auto's second regime: its samples were drawn for the first
                stop_data = dict(stop_data, utility_rows=None)

            score = dict(
                encode,
                batch_size=self.eval_args.eval_batch_size,
                max_new_tokens=self.eval_args.max_new_tokens,
            )
            repair = None
            if config.stop_repair:
                from ..core.repair import RetainRepair

                repair = RetainRepair(retain_ds, QACollator(pad_id(tokenizer)), config)
            self.stop = IndistinguishableStop(
                tokenizer, self.forget_rows, stop_data, config, score, trainer._append_log, self.out,
                repair=repair,
            )  # fmt: skip
            trainer.add_callback(self.stop)
        return trainer

    def train(self, trainer, resume):
        """Train; return the stop rule's callback (None without the rule)."""
        trainer.train(resume_from_checkpoint=resume)
        return self.stop
