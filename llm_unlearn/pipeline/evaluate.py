"""Evaluation jobs: evaluate a model folder or run directory and attach forget quality.

Forget quality compares the model's per-sample forget truth ratios with those of the retain-only
reference model on the same split, format and code (TOFU, arXiv 2401.06121), so an evaluation
either evaluates the reference too (`reference_model`) or reads its `eval.json` / a legacy TOFU
`eval_log_aggregated.json` (`reference_eval`), and refuses otherwise.

Launched on several processes (`accelerate launch`, `torchrun`), every rank runs these functions:
each scores a share of the batches (`eval/shard.py`), all get the same result, and only rank 0
writes eval.json and logs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from transformers import TrainerCallback

from ..data.args import DataArgs
from ..data.world import read_world_config
from ..eval.args import EvalArgs
from ..eval.shard import Shard, process_shard
from ..models.args import ModelArgs
from ..models.loading import check_model_folder, is_missing_local_path, load_model_and_tokenizer
from ..runs.folder import (
    STATUS_FILE,
    RunError,
    mark_evaluated,
    read_run_config,
    read_status,
    require_complete,
)

logger = logging.getLogger("llm_unlearn")


def eval_shard() -> Shard:
    """This process's share of an evaluation, joining the process group first under a multi-process launch.

    accelerate and torchrun set WORLD_SIZE; `PartialState` then forms the group (gloo on CPU, NCCL on
    GPUs) and sets this rank's CUDA device, or reuses the group a training run already formed.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env
        from transformers.utils import logging as hf_logging

        # Without cpu=True on a machine without GPUs, accelerate would see no distributed setup at all.
        cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
        if not PartialState(cpu=cpu).is_main_process:
            hf_logging.disable_progress_bar()  # rank 0 alone shows progress (loading weights, ...)
    return process_shard()


def is_main_process() -> bool:
    """False on the ranks other than 0 of a multi-process launch, which print and write nothing."""
    return process_shard().is_main


def _parameters_sharded(model) -> bool:
    """FSDP and DeepSpeed ZeRO-3 gather parameters inside each forward, so every rank must run the same forwards."""
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled() or any(
        isinstance(m, (FSDPModule, FullyShardedDataParallel)) for m in model.modules()
    )


class EpochEvaluator(TrainerCallback):
    """Evaluate the model being trained, in place, at the end of chosen epochs (all by default), with the
    data's `max_length` and, given `eval_args`, its batch size, generation length, truth-ratio variant and
    membership setting (as `evaluate_path` would).

    Forget quality is taken against `reference` (an eval result of the retain-only model); each
    evaluation appends {"epoch": k, metric: value for metric in `keys`} to `sink`. Used by the
    sweeps in benchmarks/ to record a run's trajectory without saving a checkpoint per epoch.
    Under multi-process training the ranks share the evaluation's batches, unless the parameters
    are sharded (FSDP, ZeRO-3): then every rank evaluates everything, as the sharded forwards need.
    """

    def __init__(
        self,
        tokenizer,
        data: DataArgs,
        reference: dict,
        sink: list,
        keys,
        epochs=None,
        eval_args: EvalArgs | None = None,
    ):
        self.tokenizer, self.data, self.reference, self.sink = tokenizer, data, reference, sink
        self.keys, self.epochs = tuple(keys), epochs
        # The evaluation's settings, as `evaluate_path` takes them (evaluate's own defaults without eval_args).
        self.settings = dict(max_length=data.max_length)
        if eval_args is not None:
            self.settings |= dict(batch_size=eval_args.eval_batch_size, max_new_tokens=eval_args.max_new_tokens,
                                  truth_ratio_variant=eval_args.truth_ratio_variant, mia=eval_args.mia)  # fmt: skip

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        from ..eval.tofu import add_forget_quality, evaluate

        epoch = round(state.epoch)
        if self.epochs is not None and epoch not in self.epochs:
            return
        result = evaluate(
            model, self.tokenizer, data_dir=self.data.data_dir, dataset_name=self.data.dataset_name,
            forget_split=self.data.forget_split, prompt_format=self.data.prompt_format,
            system_prompt=self.data.system_prompt, progress=False,
            shard=Shard() if _parameters_sharded(model) else process_shard(), **self.settings,
        )  # fmt: skip
        result = add_forget_quality(result, self.reference)
        self.sink.append({"epoch": epoch, **{k: result["metrics"][k]["value"] for k in self.keys}})


# Files that make a folder a model's: an eval.json beside them is read as theirs.
MODEL_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "adapter_model.safetensors",
    "config.json",
)


def default_eval_path(model_path: str, output_dir: str | None) -> Path:
    if output_dir:
        out = Path(output_dir)
        if out.exists() and not out.is_dir():  # refused before the evaluation, not after it
            raise FileExistsError(f"--output_dir {out} is a file; pass a folder for the eval.json")
        existing = next((p for p in out.absolute().parents if p.exists()), None)
        if existing is not None and not existing.is_dir():  # mkdir would fail only after the evaluation
            raise FileExistsError(
                f"--output_dir {out} lies under {existing}, which is a file; pass a folder path"
            )
        holds_model = read_status(out) is not None or any((out / f).is_file() for f in MODEL_FILES)
        if out.is_dir() and any(
            (d / STATUS_FILE).is_file() or (d / "eval.json").is_file() for d in out.iterdir()
        ):
            # `report DIR` reads a folder with its own eval.json as one run, not as the runs inside it.
            raise RunError(
                f"--output_dir {out} holds runs or evaluated models; an eval.json there would make `llm-unlearn "
                "report` read the folder as one run: pass a folder of its own"
            )
        if holds_model and not (Path(model_path).exists() and Path(model_path).resolve() == out.resolve()):
            # Its eval.json is read as the numbers of the weights beside it (report, push's model card).
            raise RunError(
                f"--output_dir {out} holds another model (a run or model folder), so an eval.json of {model_path} "
                "there would be read as that model's; pass a new --output_dir, or evaluate that folder itself"
            )
        return out / "eval.json"
    from ..models.sources import is_builtin

    if not Path(model_path).exists() and not is_builtin(model_path):
        raise RunError(
            f"model {model_path} does not exist here (no such folder); pass a model folder or run directory, "
            "or a Hub id together with --output_dir"
        )
    if read_status(model_path) is not None:
        return Path(model_path) / "eval.json"
    raise RunError(f"{model_path} is not a run directory; pass --output_dir for its eval.json")


def check_reference(eval_args: EvalArgs, required: bool = True) -> None:
    """The reference named exists (a folder, an eval file); `required`: one is named."""
    if required and not (eval_args.reference_model or eval_args.reference_eval):
        raise RunError(
            "forget quality needs the retain-only reference model: pass --reference_model DIR or "
            "--reference_eval FILE (its eval.json or a TOFU eval_log_aggregated.json)"
        )
    if eval_args.reference_model and Path(eval_args.reference_model).is_file():
        raise FileNotFoundError(
            f"reference model {eval_args.reference_model} is a file; pass the model folder (an evaluated "
            "reference's eval.json goes to --reference_eval)"
        )
    if eval_args.reference_model and is_missing_local_path(eval_args.reference_model):
        raise FileNotFoundError(
            f"reference model {eval_args.reference_model} does not exist; pass a model folder or Hub id"
        )
    if eval_args.reference_eval and not Path(eval_args.reference_eval).is_file():
        raise FileNotFoundError(
            f"reference eval file {eval_args.reference_eval} does not exist; evaluate the reference first"
        )
    if eval_args.reference_eval:
        _check_reference_file(Path(eval_args.reference_eval))


def _check_reference_file(path: Path) -> None:
    """Read the reference's eval file before any work, so a bad one never wastes a training run."""
    from ..eval.legacy import is_legacy_log

    fix = "pass the eval.json of `llm-unlearn eval` on the retain-only model, or a TOFU eval_log_aggregated.json"
    try:
        reference = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(f"reference eval file {path} is not valid JSON ({err}); {fix}") from None
    if not isinstance(reference, dict):
        raise RunError(f"reference eval file {path} is not a JSON object; {fix}")
    if is_legacy_log(reference):
        return
    entry = reference.get("metrics", {}).get("forget_truth_ratio", {})
    if not isinstance(entry, dict) or "per_sample_ratio" not in entry:
        raise RunError(f"reference eval file {path} has no per-sample forget truth ratios; {fix}")


def _seeds(model_path: str, data: DataArgs) -> dict[str, int]:
    """The seeds behind a model and its data, where recorded: a run's config, a world's config."""
    seeds = {}
    config = read_run_config(model_path) if Path(model_path).is_dir() else {}
    seeds |= {k: config[k] for k in ("seed", "retain_seed", "data_seed") if config.get(k) is not None}
    if isinstance(config.get("undo"), dict) and config["undo"].get("seed") is not None:  # a distilled run
        seeds["undo_seed"] = config["undo"]["seed"]  # its noise and data order; `seed` is the unlearning's
    if data.data_dir and (world := read_world_config(data.data_dir)) is not None:
        seeds["world_seed"] = world.seed
    return seeds


def evaluate_path(
    model_path: str,
    data: DataArgs,
    eval_args: EvalArgs,
    model_args: ModelArgs | None = None,
    *,
    reference: dict | str | None = None,
    out_path: str | Path | None = None,
) -> dict:
    """Evaluate one model folder; attach forget quality from `reference` (an eval dict or file) if given.

    Under a multi-process launch every rank calls this and gets the result; only rank 0 writes `out_path`.
    """
    from ..eval import cache
    from ..eval.tofu import add_forget_quality, evaluate, recorded_path, write_eval
    from .run_eval import check_replaces_own_eval

    shard = eval_shard()
    # After multi-process training rank 0 alone writes the run and marks it complete: wait for it.
    shard.barrier()
    require_complete(model_path, "eval")
    seeds = _seeds(model_path, data)
    model_args = model_args or ModelArgs()
    check_replaces_own_eval(model_path, out_path, (model_args, data, eval_args))
    start = time.perf_counter()
    keyed = _cache_key(model_path, data, eval_args, model_args) if shard.world_size == 1 else None
    result = cache.load(keyed[0]) if keyed else None
    if result is not None:
        result["meta"]["eval_cache"]["hit"] = True
        result["meta"].pop("seeds", None)
        if seeds:
            result["meta"]["seeds"] = seeds
        logger.info("evaluation of %s reused: same weights, data, code and settings (eval cache)", model_path)
    else:
        model, tokenizer = load_model_and_tokenizer(
            model_path,
            trust_remote_code=model_args.trust_remote_code,
            allow_pickle=model_args.allow_pickle,
            torch_dtype=model_args.torch_dtype,
        )
        if shard.world_size > 1:
            from accelerate import PartialState

            model.to(PartialState().device)  # cuda:LOCAL_RANK on GPUs, the CPU otherwise
        result = evaluate(
            model,
            tokenizer,
            data_dir=data.data_dir,
            dataset_name=data.dataset_name,
            forget_split=data.forget_split,
            prompt_format=data.prompt_format,
            system_prompt=data.system_prompt,
            max_length=data.max_length,
            batch_size=eval_args.eval_batch_size,
            max_new_tokens=eval_args.max_new_tokens,
            truth_ratio_variant=eval_args.truth_ratio_variant,
            mia=eval_args.mia,
            seeds=seeds,
            shard=shard,
        )
        if keyed:
            result = cache.store(*keyed, result)
        if shard.is_main:
            logger.info("evaluated %s in %.1f s", model_path, time.perf_counter() - start)
    # This call's model and data, whatever a cached result recorded (the cache is keyed by content, not path).
    result["meta"]["model"] = recorded_path(model_path)
    result["meta"]["data"] = {"data_dir": recorded_path(data.data_dir) if data.data_dir else None,
                              "dataset_name": data.dataset_name}  # fmt: skip
    if reference is not None:
        result = add_forget_quality(result, reference)
    if out_path is not None:
        failed = None
        if shard.is_main:
            try:
                write_eval(result, out_path)
                if Path(out_path).parent.resolve() == Path(model_path).resolve():
                    mark_evaluated(model_path)  # the run's own eval.json: its final evaluation is done
            except Exception as err:  # noqa: BLE001 - re-raised below, once the other ranks know
                failed = err
        # Rank 0 alone writes; the others learn how that went instead of dying in the teardown's barrier
        # with a "connection closed by peer" traceback once rank 0 has left with its error.
        outcome = shard.all_gather(None if failed is None else str(failed))[0]
        if failed is not None:
            raise failed
        if outcome is not None:
            raise RunError(f"rank 0 could not write {out_path} ({outcome}); it names the fix")
    return result


def _cache_key(model_path: str, data: DataArgs, eval_args: EvalArgs, model_args: ModelArgs):
    """(key, inputs) of this evaluation for eval/cache.py, or None when it must be computed."""
    if not eval_args.eval_cache or model_args.trust_remote_code:  # remote code is an input we do not hash
        return None
    from ..eval import cache
    from ..models.sources import resolve

    settings = {
        "forget_split": data.forget_split, "prompt_format": data.prompt_format, "system_prompt": data.system_prompt,
        "max_length": data.max_length, "batch_size": eval_args.eval_batch_size,
        "max_new_tokens": eval_args.max_new_tokens, "truth_ratio_variant": eval_args.truth_ratio_variant,
        "mia": eval_args.mia, "torch_dtype": model_args.torch_dtype, "allow_pickle": model_args.allow_pickle,
    }  # fmt: skip
    return cache.eval_key(resolve(model_path), data.data_dir, data.dataset_name, settings)


def evaluate_with_reference(
    model_path: str, data: DataArgs, eval_args: EvalArgs, model_args: ModelArgs | None = None, out_path=None
) -> dict:
    """Evaluate a model and its reference (or read the reference's eval file), then forget quality; with no
    reference named, every metric but forget quality (which compares with the reference).

    Every input is checked before the first model is scored: the data and the reference eval file
    (`inputs.validate_inputs`), and that the model and the reference model share one tokenizer.
    """
    from ..core.inputs import check_same_vocabulary, validate_inputs
    from .run_eval import check_replaces_own_eval

    check_reference(eval_args, required=False)
    eval_shard().barrier()  # after multi-process training, rank 0 may still be writing the run
    require_complete(model_path, "eval")  # an unfinished run is the first thing to say, whatever the data
    _seeds(model_path, data)  # then a damaged unlearn_config.yaml, before any model is scored
    # A run's own eval.json is replaced only by an evaluation of the same data and settings.
    check_replaces_own_eval(model_path, out_path, (model_args or ModelArgs(), data, eval_args))
    if Path(model_path).is_dir():  # and weights cut short or a foreign config, before the reference is scored
        check_model_folder(model_path, trust_remote_code=(model_args or ModelArgs()).trust_remote_code)
    validate_inputs(data, eval_args)
    if eval_args.reference_model:
        check_same_vocabulary(
            {"model": model_path, "reference model": eval_args.reference_model},
            trust_remote_code=(model_args or ModelArgs()).trust_remote_code,
        )
    reference: dict | str | None = None
    if eval_args.reference_eval:
        reference = eval_args.reference_eval
    elif eval_args.reference_model:
        reference = evaluate_path(eval_args.reference_model, data, eval_args, model_args)
    return evaluate_path(model_path, data, eval_args, model_args, reference=reference, out_path=out_path)
