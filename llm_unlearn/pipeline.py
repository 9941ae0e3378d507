"""Evaluation jobs: evaluate a model folder or run directory and attach forget quality.

Forget quality compares the model's per-sample forget truth ratios with those of the retain-only
reference model on the same split, format and code (TOFU, arXiv 2401.06121), so an evaluation
either evaluates the reference too (`reference_model`) or reads its `eval.json` / a legacy TOFU
`eval_log_aggregated.json` (`reference_eval`), and refuses otherwise.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import yaml
from transformers import TrainerCallback

from .config import DataArgs, EvalArgs, ModelArgs
from .runio import RunError, is_missing_local_path, load_model_and_tokenizer, read_status, require_complete

logger = logging.getLogger("llm_unlearn")


class EpochEvaluator(TrainerCallback):
    """Evaluate the model being trained, in place, at the end of chosen epochs (all by default).

    Forget quality is taken against `reference` (an eval result of the retain-only model); each
    evaluation appends {"epoch": k, metric: value for metric in `keys`} to `sink`. Used by the
    sweeps in benchmarks/ to record a run's trajectory without saving a checkpoint per epoch.
    """

    def __init__(self, tokenizer, data: DataArgs, reference: dict, sink: list, keys, epochs=None):
        self.tokenizer, self.data, self.reference, self.sink = tokenizer, data, reference, sink
        self.keys, self.epochs = tuple(keys), epochs

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        from .eval.tofu import add_forget_quality, evaluate

        epoch = round(state.epoch)
        if self.epochs is not None and epoch not in self.epochs:
            return
        result = evaluate(
            model, self.tokenizer, data_dir=self.data.data_dir, dataset_name=self.data.dataset_name,
            forget_split=self.data.forget_split, prompt_format=self.data.prompt_format,
            system_prompt=self.data.system_prompt, progress=False,
        )  # fmt: skip
        result = add_forget_quality(result, self.reference)
        model.train()
        self.sink.append({"epoch": epoch, **{k: result["metrics"][k]["value"] for k in self.keys}})


def default_eval_path(model_path: str, output_dir: str | None) -> Path:
    if output_dir:
        return Path(output_dir) / "eval.json"
    from .sources import is_builtin

    if not Path(model_path).exists() and not is_builtin(model_path):
        raise RunError(
            f"model {model_path} does not exist here (no such folder); pass a model folder or run directory, "
            "or a Hub id together with --output_dir"
        )
    if read_status(model_path) is not None:
        return Path(model_path) / "eval.json"
    raise RunError(f"{model_path} is not a run directory; pass --output_dir for its eval.json")


def check_reference(eval_args: EvalArgs) -> None:
    if not (eval_args.reference_model or eval_args.reference_eval):
        raise RunError(
            "forget quality needs the retain-only reference model: pass --reference_model DIR or "
            "--reference_eval FILE (its eval.json or a TOFU eval_log_aggregated.json)"
        )
    if eval_args.reference_model and is_missing_local_path(eval_args.reference_model):
        raise FileNotFoundError(
            f"reference model {eval_args.reference_model} does not exist; pass a model folder or Hub id"
        )
    if eval_args.reference_eval and not Path(eval_args.reference_eval).is_file():
        raise FileNotFoundError(
            f"reference eval file {eval_args.reference_eval} does not exist; evaluate the reference first"
        )


def _seeds(model_path: str, data: DataArgs) -> dict[str, int]:
    """The seeds behind a model and its data, where recorded: a run's config, a world's config."""
    seeds = {}
    run_config = Path(model_path) / "unlearn_config.yaml"
    if run_config.is_file():
        config = yaml.safe_load(run_config.read_text())
        seeds |= {k: config[k] for k in ("seed", "retain_seed", "data_seed") if config.get(k) is not None}
    world_config = Path(data.data_dir or "") / "world_config.json"
    if data.data_dir and world_config.is_file():
        seeds["world_seed"] = json.loads(world_config.read_text())["seed"]
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
    """Evaluate one model folder; attach forget quality from `reference` (an eval dict or file) if given."""
    from .eval.tofu import add_forget_quality, evaluate, write_eval

    require_complete(model_path, "eval")
    model_args = model_args or ModelArgs()
    model, tokenizer = load_model_and_tokenizer(
        model_path,
        trust_remote_code=model_args.trust_remote_code,
        allow_pickle=model_args.allow_pickle,
        torch_dtype=model_args.torch_dtype,
    )
    start = time.perf_counter()
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
        seeds=_seeds(model_path, data),
    )
    result["meta"]["model"] = str(model_path)
    if reference is not None:
        result = add_forget_quality(result, reference)
    logger.info("evaluated %s in %.1f s", model_path, time.perf_counter() - start)
    if out_path is not None:
        write_eval(result, out_path)
    return result


def evaluate_with_reference(
    model_path: str, data: DataArgs, eval_args: EvalArgs, model_args: ModelArgs | None = None, out_path=None
) -> dict:
    """Evaluate a model and its reference (or read the reference's eval file), then forget quality."""
    check_reference(eval_args)
    reference: dict | str
    if eval_args.reference_eval:
        reference = eval_args.reference_eval
    else:
        reference = evaluate_path(eval_args.reference_model, data, eval_args, model_args)
    return evaluate_path(model_path, data, eval_args, model_args, reference=reference, out_path=out_path)
