"""A few NGDiff + GeN steps under two gloo ranks, recording each rank's window rows and GeN probe rows.

usage: _dist_gen_probes.py MODEL_DIR DATA_DIR OUT_PREFIX
Each rank writes OUT_PREFIX.rank<r>.json: per probe step, the forget and retain dataset indices of its own
window and of its probe batch. Driven by tests/test_distributed.py, which checks them across ranks.
"""

from __future__ import annotations

import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_unlearn.core.config import UnlearnConfig
from llm_unlearn.core.streams import example_keys
from llm_unlearn.core.trainer import UnlearnTrainer
from llm_unlearn.data.qa import QACollator, QADataset, load_split, pad_id
from llm_unlearn.eval.shard import exit_process_group
from llm_unlearn.methods import get_method


class RecordingTrainer(UnlearnTrainer):
    """Records rows from the batches themselves, not from the trainer's own exclusion sets."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.record: dict[int, dict] = {}
        for name, stream in self.probe_streams.items():
            stream.indices = self._recording(name, stream.indices)

    def _recording(self, name, indices):
        def wrapped(step, exclude=frozenset()):
            rows = indices(step, exclude)
            self.record.setdefault(step, {})[f"probe_{name}"] = rows
            return rows

        return wrapped

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        samples, n = super().get_batch_samples(epoch_iterator, num_batches, device)
        step = self.state.global_step
        forget = [self._forget_index[k] for s in samples for k in example_keys(s["forget"])]
        first = self._retain_batches_consumed()
        retain = [i for k in range(len(samples)) for i in self.retain_stream.indices(first + k)]
        self.record.setdefault(step, {}).update(window_forget=forget, window_retain=retain)
        return samples, n


def main(model_dir: str, data_dir: str, out_prefix: str) -> None:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    encode = dict(prompt_format="chat_template", max_length=128)
    config = UnlearnConfig(
        method="ngdiff",
        output_dir=out_prefix + ".run",
        optim="sgd",
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        gen=True,
        gen_interval=1,
        max_steps=4,
        save_strategy="no",
        per_device_train_batch_size=2,
        disable_tqdm=True,
        seed=0,
    )
    trainer = RecordingTrainer(
        model=model,
        args=config,
        train_dataset=QADataset(load_split("forget10", data_dir)[:12], tok, **encode),
        retain_dataset=QADataset(load_split("retain90", data_dir)[:12], tok, **encode),
        data_collator=QACollator(pad_id(tok)),
        processing_class=tok,
        method=get_method("ngdiff"),
    )
    trainer.train()
    with open(f"{out_prefix}.rank{trainer.args.process_index}.json", "w") as f:
        json.dump({str(k): v for k, v in trainer.record.items()}, f)
    exit_process_group()  # gloo teardown can hang or abort after the work is done


if __name__ == "__main__":
    torch.manual_seed(0)
    main(*sys.argv[1:4])
