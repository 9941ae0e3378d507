"""The epoch-end evaluation callback on every process of a launch (tests/test_distributed_eval.py).

usage: _dist_epoch_eval.py MODEL_DIR DATA_DIR OUT_JSON [fsdp]
Calls `EpochEvaluator.on_epoch_end` on MODEL_DIR as HF Trainer does after an epoch, with the
model's own `evaluate_path` result as the reference; `fsdp` first wraps the model in FSDP2, as a
sharded training run would. Rank 0 writes the callback's record and the eval result it computed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

from torch.distributed.fsdp import fully_shard

import llm_unlearn.eval.tofu as tofu
from llm_unlearn.data.args import DataArgs
from llm_unlearn.eval.args import EvalArgs
from llm_unlearn.eval.shard import exit_process_group
from llm_unlearn.models.loading import load_model_and_tokenizer
from llm_unlearn.pipeline.evaluate import EpochEvaluator, evaluate_path, is_main_process


def main(model_dir: str, data_dir: str, out_file: str, mode: str = "") -> None:
    data = DataArgs(data_dir=data_dir, forget_split="forget10")
    reference = evaluate_path(model_dir, data, EvalArgs(eval_batch_size=8, max_new_tokens=8))
    seen = []
    evaluate = tofu.evaluate

    def recording_evaluate(*args, **kwargs):  # the callback imports `evaluate` from this module when called
        seen.append(evaluate(*args, **kwargs))
        return seen[-1]

    tofu.evaluate = recording_evaluate
    model, tokenizer = load_model_and_tokenizer(model_dir)
    if mode == "fsdp":
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    sink: list[dict] = []
    callback = EpochEvaluator(tokenizer, data, reference, sink, ("forget_quality", "model_utility"))
    callback.on_epoch_end(None, SimpleNamespace(epoch=1.0), None, model=model)
    if is_main_process():
        result = seen[0]
        record = {"sink": sink, "timing": result["meta"]["timing"]}
        record |= {key: result[key] for key in ("metrics", "losses", "generations")}
        Path(out_file).write_text(json.dumps(record))
    exit_process_group()  # gloo teardown can hang or abort after the work is done (pytorch/pytorch#190489)


if __name__ == "__main__":
    main(*sys.argv[1:])
