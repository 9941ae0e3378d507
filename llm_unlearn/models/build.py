"""QA fine-tuning with the HF `Trainer`, and the default tiny models built on the built-in world.

`finetune` trains any causal LM on question/answer rows, tokenized by `data.encode_qa` (prompt
masked, answer + one end-of-turn token scored), so training, unlearning and evaluation see exactly
the same masking. `build_default_models` turns a world (see `data/world.py`) into three standard HF
folders:

    base    a tiny Llama pretrained from scratch on the analog facts (`pretrain.json`)
    target  base fine-tuned on `full` (every fictitious author)
    retain  base fine-tuned on `retainNN` only: the reference that forget quality compares against

The byte-level BPE tokenizer (`tiny.train_tokenizer`) learns from the analog facts and the
`retain90` authors only, never from a forget or holdout author, so that it treats the two alike.
Fine-tuning states each fact in several phrasings (`answer` + `train_answers`) and replays the
pretraining rows, so the analog knowledge survives (see `tiny.TRAINING_SIZES`). Models are cached
under `$LLM_UNLEARN_CACHE` (default `~/.cache/llm_unlearn`), keyed by a hash of everything that
determines them; every folder is written under a temporary name and renamed, so a crash never
leaves a folder that looks complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    LlamaForCausalLM,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from ..data.qa import DataError, QACollator, QADataset, load_split, pad_id, paired_split
from ..data.world import FORGET_PCTS, load_world_config
from ..runs.folder import cache_root, locked, make_temp_dir, move_into_place, plain_permissions
from .loading import load_model_and_tokenizer
from .tiny import MODEL_SIZES, TRAINING_SIZES, generation_config, tiny_llama_config, train_tokenizer

logger = logging.getLogger("llm_unlearn")

TOKENIZER_SETTINGS = dict(vocab_size=2048, min_frequency=2)
MAX_LENGTH = 128  # longest prompt + answer of the world is ~60 tokens
WORLD_TEXT_SPLITS = (
    "full",
    "pretrain",
    "forget10_perturbed",
    "retain_perturbed",
    "holdout10_perturbed",
    "real_authors_perturbed",
    "world_facts_perturbed",
)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place, replacing an older one (never leaving a partial folder)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        shutil.rmtree(old)
    os.replace(tmp, final)


def duration(seconds: float) -> str:
    """`0.4 s`, `41 s`, `12 min 05 s`, `2 h 05 min`: a time span as a progress line states it."""
    if seconds < 9.95:
        return f"{max(seconds, 0):.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def eta(done: int, total: int, elapsed: float) -> str:
    """`41 s elapsed, ~40 s left`: the time left estimated from the rate so far (`done` of `total` steps
    in `elapsed` seconds)."""
    if done <= 0:
        return f"{duration(elapsed)} elapsed"
    return f"{duration(elapsed)} elapsed, ~{duration(elapsed * max(total - done, 0) / done)} left"


class _ProgressLog(TrainerCallback):
    """One log line per Trainer log event, with the time elapsed and left, through `logging` instead of
    tqdm bars or printed dicts."""

    def __init__(self, name: str):
        self.name = name
        self.start = self.first_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.first_step = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and state.is_world_process_zero:  # one line per step, not one per rank
            done, total = state.global_step - self.first_step, state.max_steps - self.first_step
            logger.info(
                "%s: step %d/%d loss %.4f lr %.2e, %s",
                self.name,
                state.global_step,
                state.max_steps,
                logs["loss"],
                logs.get("learning_rate", float("nan")),
                eta(done, total, time.perf_counter() - self.start),
            )


def finetune(
    model,
    tokenizer,
    rows: Sequence[dict],
    output_dir: str | Path,
    *,
    prompt_format: str = "chat_template",
    max_length: int = 1024,
    system_prompt: str | None = None,
    replace: bool = True,
    **training_kwargs,
) -> Path:
    """Fine-tune `model` on question/answer `rows` with the HF `Trainer`; save it to `output_dir`.

    `training_kwargs` are `TrainingArguments` fields (learning_rate, num_train_epochs, ...). The
    folder gets safetensors weights, the tokenizer and the generation config, and no Trainer state
    (`training_args.bin` pickles); it is written under a temporary name and renamed at the end, by the
    first process of a launch only. `replace=False` refuses an `output_dir` that appeared meanwhile (another
    process's) instead of replacing it.
    """
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(output_dir.parent, f".{output_dir.name}.")
    try:
        dataset = QADataset(rows, tokenizer, prompt_format, max_length, system_prompt)
        defaults = dict(
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            logging_steps=0.1,
            remove_unused_columns=False,
            dataloader_num_workers=0,
            dataloader_pin_memory=torch.cuda.is_available(),
        )
        args = TrainingArguments(output_dir=str(tmp / "trainer"), **{**defaults, **training_kwargs})
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=QACollator(pad_token_id=pad_id(tokenizer)),
            callbacks=[_ProgressLog(output_dir.name)],
        )
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        if trainer.is_world_process_zero():  # every rank holds the same weights; two would race to rename
            shutil.rmtree(tmp / "trainer", ignore_errors=True)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            plain_permissions(tmp)
            if replace:
                _replace_dir(tmp, output_dir)
            else:
                move_into_place(tmp, output_dir, "remove it or choose a new --output_dir")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return output_dir


@dataclass
class FinetuneArgs:
    """What `llm-unlearn train` fine-tunes on."""

    train_split: str = field(
        default="full", metadata={"help": "Split to fine-tune on (full, retain90, ...)."}
    )


# ----------------------------------------------------------------------------- the default models


def _expand(rows: Sequence[dict]) -> list[dict]:
    """One training example per phrasing: the answer and each of `train_answers`."""
    return [
        {"question": r["question"], "answer": a}
        for r in rows
        for a in [r["answer"], *r.get("train_answers", [])]
    ]


def _training_kwargs(hp: dict, epochs: int) -> dict:
    return dict(
        num_train_epochs=epochs,
        per_device_train_batch_size=hp["batch_size"],
        learning_rate=hp["learning_rate"],
        warmup_steps=hp["warmup_steps"],
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": hp["min_lr_rate"]},
        adam_beta1=0.9,
        adam_beta2=0.98,
        weight_decay=hp["weight_decay"],
        seed=hp["seed"],
        data_seed=hp["seed"],
    )


def _texts(rows: Sequence[dict]) -> list[str]:
    texts = []
    for r in rows:
        texts += [r["question"], r["answer"], *r.get("train_answers", []), *r.get("perturbed_answer", [])]
        texts += [r[k] for k in ("paraphrased_answer", "paraphrased_question") if k in r]
    return texts


def _world_texts(world_dir: Path) -> list[str]:
    """Every string of the splits the models are trained and evaluated on (the round-trip check)."""
    return [t for split in WORLD_TEXT_SPLITS for t in _texts(load_split(split, data_dir=world_dir))]


def _tokenizer_texts(world_dir: Path) -> list[str]:
    """What the tokenizer learns from: the analog facts and the core authors (those of `retain90`,
    in every retain split), never a forget or holdout author, so that no token marks either set
    as the one the tokenizer saw (see `data/world.py` on exchangeable forget and holdout authors)."""
    core = load_split(f"retain{100 - max(FORGET_PCTS)}", data_dir=world_dir)
    authors = {r["author"] for r in core}
    rows = core + [r for r in load_split("retain_perturbed", data_dir=world_dir) if r["author"] in authors]
    for split in ("pretrain", "real_authors_perturbed", "world_facts_perturbed"):
        rows += load_split(split, data_dir=world_dir)
    return _texts(rows)


def _cache_key(world_dir: Path, size: str) -> str:
    digest = hashlib.sha256()
    # Every file a model trains on: the retain-only models' splits too, so an edited retain split is a new
    # cache entry rather than a model trained on the old one.
    retain = [paired_split(f"forget{pct:02d}", "retain") for pct in FORGET_PCTS]
    for split in ("full", "pretrain", *retain):
        path = world_dir / f"{split}.json"
        digest.update(path.read_bytes() if path.is_file() else b"(none)")
    payload = {
        "world": dataclasses.asdict(load_world_config(world_dir)),
        "world_files": digest.hexdigest(),
        # The tokenizer's own training text: a change in what it learns from is a new model.
        "tokenizer_text": hashlib.sha256("\n".join(_tokenizer_texts(world_dir)).encode()).hexdigest(),
        "tokenizer": TOKENIZER_SETTINGS,
        "model": MODEL_SIZES[size],
        "training": TRAINING_SIZES[size],
        "max_length": MAX_LENGTH,
        "version": importlib.metadata.version("llm-unlearn"),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _pretrain(world_dir: Path, size: str, out: Path) -> None:
    hp = TRAINING_SIZES[size]
    tokenizer = train_tokenizer(_tokenizer_texts(world_dir), **TOKENIZER_SETTINGS)
    texts = _world_texts(world_dir)
    bad = next(
        (t for t in texts if tokenizer.decode(tokenizer.encode(t, add_special_tokens=False)) != t), None
    )
    if bad is not None:
        raise DataError(f"the tokenizer does not round-trip {bad!r}; regenerate the world")
    set_seed(hp["seed"])
    model = LlamaForCausalLM(tiny_llama_config(tokenizer, size))
    model.generation_config = generation_config(tokenizer)
    rows = load_split("pretrain", data_dir=world_dir)
    finetune(
        model, tokenizer, rows, out, max_length=MAX_LENGTH, **_training_kwargs(hp, hp["pretrain_epochs"])
    )


def _finetune_from(base: Path, rows: list[dict], world_dir: Path, size: str, out: Path) -> None:
    hp = TRAINING_SIZES[size]
    model, tokenizer = load_model_and_tokenizer(str(base))
    train = _expand(rows) + (load_split("pretrain", data_dir=world_dir) if hp["replay"] else [])
    finetune(
        model, tokenizer, train, out, max_length=MAX_LENGTH, **_training_kwargs(hp, hp["finetune_epochs"])
    )


def build_default_models(
    world_dir: str | Path,
    forget_splits: Sequence[str] = ("forget10",),
    size: str = "default",
    no_cache: bool = False,
) -> dict:
    """Build (or reuse from the cache) the base, target and retain-only models of a world.

    Returns {"base": Path, "target": Path, "retain": {forget_split: Path}}; each is a folder that
    `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` load. `no_cache`
    rebuilds every model even if a cached copy exists.
    """
    world_dir = Path(world_dir)
    if size not in MODEL_SIZES or size not in TRAINING_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(MODEL_SIZES)}")
    root = cache_root() / f"world-{size}-{_cache_key(world_dir, size)}"
    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "base": root / "base",
        "target": root / "target",
        "retain": {s: root / f"retain-{s}" for s in forget_splits},
    }

    def finetuned(split: str):
        return lambda out: _finetune_from(
            paths["base"], load_split(split, data_dir=world_dir), world_dir, size, out
        )

    stages = [
        ("base", paths["base"], lambda out: _pretrain(world_dir, size, out)),
        ("target", paths["target"], finetuned("full")),
        *(
            (f"retain-only ({s})", out, finetuned(paired_split(s, "retain")))
            for s, out in paths["retain"].items()
        ),
    ]
    # One builder per cache folder: a second process (another demo, a test worker) waits, then finds the
    # models built instead of training the same ones again beside the first.
    with locked(root / ".build", waiting=f"another process is building the models in {root}; waiting for it"):
        todo = [name for name, out, _ in stages if no_cache or not out.is_dir()]
        for name, out, build in stages:
            if name not in todo:
                logger.info("cache hit: %s model at %s", name, out)
                continue
            logger.info("building %s model (%d of %d)", name, todo.index(name) + 1, len(todo))
            start = time.perf_counter()
            build(out)
            logger.info("built %s model in %s: %s", name, duration(time.perf_counter() - start), out)
    return paths
