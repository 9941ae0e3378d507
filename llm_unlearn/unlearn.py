"""`unlearn()`: the Python API behind `llm-unlearn unlearn` (load, validate, train, save, evaluate).

Everything that can be checked before training is checked first (data, method, model path, run
directory), so bad input fails with one line and leaves nothing behind. During training the run
directory carries `status.json` = running; a failure marks it failed with the error, and only a
finished run is marked complete.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import torch
import yaml
from transformers import ProgressCallback

from .config import DataArgs, EvalArgs, ModelArgs, UnlearnConfig, to_dict
from .data import QACollator, QADataset, check_forget_retain, load_split, pad_id, paired_split
from .methods import get_method
from .methods.common import eval_mode
from .runio import (
    RunError,
    load_model,
    load_tokenizer,
    read_status,
    write_run_info,
    write_status,
    write_text_atomic,
)

logger = logging.getLogger("llm_unlearn")

ADAPTER_DIR = "adapter"  # LoRA runs: the trained adapter, beside the merged model


def resolve_retain_split(data: DataArgs) -> str:
    return data.retain_split or paired_split(data.forget_split, "retain")


def prepare_output_dir(output_dir: str | None) -> str | None:
    """Refuse an existing directory unless it is our unfinished run; return a checkpoint to resume."""
    if not output_dir:
        raise RunError("no --output_dir given; pass a new directory for the run")
    out = Path(output_dir)
    if not out.exists():
        return None
    status = read_status(out)
    if status is None:
        raise RunError(f"output dir {out} exists and is not an llm-unlearn run; choose a new --output_dir")
    if status["state"] == "complete":
        raise RunError(f"output dir {out} holds a complete run; choose a new --output_dir")
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    checkpoints = [c for c in checkpoints if (c / "trainer_state.json").is_file()]
    if checkpoints:
        logger.info("resuming %s from %s", out, checkpoints[-1].name)
        return str(checkpoints[-1])
    logger.info("restarting unfinished run %s (no checkpoint yet)", out)
    return None


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
    from peft import LoraConfig, get_peft_model

    targets = model_args.lora_target_modules
    lora = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=targets if targets == "all-linear" else targets.split(","),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


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
) -> Path:
    """Run one unlearning job and return its run directory (extra `TrainerCallback`s may be given)."""
    from .trainer import UnlearnTrainer

    method = get_method(config.method)
    if not model_args.model_name_or_path:
        raise RunError("no --model_name_or_path given; pass a model folder or Hub id")
    retain_split = resolve_retain_split(data)
    source = dict(data_dir=data.data_dir, dataset_name=data.dataset_name)
    forget_rows = load_split(data.forget_split, **source)
    retain_rows = load_split(retain_split, **source)
    check_forget_retain(forget_rows, retain_rows, data.forget_split, retain_split)
    resume = prepare_output_dir(config.output_dir)
    load = dict(trust_remote_code=model_args.trust_remote_code)
    tokenizer = load_tokenizer(model_args.model_name_or_path, **load)
    encode = dict(
        prompt_format=data.prompt_format, max_length=data.max_length, system_prompt=data.system_prompt
    )
    forget_ds = QADataset(forget_rows, tokenizer, **encode)
    retain_ds = QADataset(retain_rows, tokenizer, **encode)
    load |= dict(allow_pickle=model_args.allow_pickle, torch_dtype=model_args.torch_dtype)
    model = load_model(model_args.model_name_or_path, **load)
    reference = None
    if model_args.use_lora:
        model = add_lora(model, model_args)
        if method.needs_reference(config):
            reference = AdaptersDisabled(model)
    elif method.needs_reference(config):
        reference = load_model(model_args.model_name_or_path, **load)

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    resolved = to_dict(model_args, data, config, eval_args) | {"retain_split": retain_split}
    write_text_atomic(out / "unlearn_config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    write_run_info(out)
    write_status(out, "running", method=method.name)
    trainer = UnlearnTrainer(
        model=model,
        args=config,
        train_dataset=forget_ds,
        retain_dataset=retain_ds,
        data_collator=QACollator(pad_id(tokenizer)),
        processing_class=tokenizer,
        method=method,
        reference_model=reference,
        callbacks=callbacks,
    )
    start = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=resume)
        if model_args.use_lora:
            # The adapter alone (small, for `push`), then the merged model: a plain HF folder that
            # eval, push and from_pretrained read as is.
            if trainer.is_world_process_zero():
                trainer.model.save_pretrained(str(out / ADAPTER_DIR))
            trainer.model = trainer.model.merge_and_unload()
        trainer.save_model(str(out))
    except BaseException as err:
        _close_progress_bars(trainer)
        if trainer.is_world_process_zero():
            write_status(out, "failed", method=method.name, error=f"{type(err).__name__}: {err}")
        raise
    if trainer.is_world_process_zero():
        for checkpoint in out.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)
        write_status(out, "complete", method=method.name, train_seconds=round(time.perf_counter() - start, 2))
    logger.info("unlearning finished in %.1f s: %s", time.perf_counter() - start, out)
    return out
