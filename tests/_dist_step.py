"""One SGD unlearning step, run under `accelerate launch` by tests/test_distributed.py.

usage: _dist_step.py MODEL_DIR DATA_DIR OUT_FILE BATCH_SIZE METHOD [SAM_RHO]
Writes (rank 0) the parameter update as safetensors.
"""

from __future__ import annotations

import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_unlearn.core.config import UnlearnConfig
from llm_unlearn.core.trainer import UnlearnTrainer
from llm_unlearn.data.qa import QACollator, QADataset, load_split, pad_id
from llm_unlearn.eval.shard import exit_process_group
from llm_unlearn.methods import get_method


def main(
    model_dir: str, data_dir: str, out_file: str, batch_size: int, method: str, sam_rho: float = 0.0
) -> None:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    encode = dict(prompt_format="chat_template", max_length=128)
    config = UnlearnConfig(
        method=method,
        output_dir=out_file + ".run",
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        max_steps=1,
        save_strategy="no",
        retain_weight=0.5,
        sam_rho=sam_rho,
        per_device_train_batch_size=batch_size,
        disable_tqdm=True,
        seed=0,
    )
    trainer = UnlearnTrainer(
        model=model,
        args=config,
        train_dataset=QADataset(load_split("forget10", data_dir)[:4], tok, **encode),
        retain_dataset=QADataset(load_split("retain90", data_dir)[:4], tok, **encode),
        data_collator=QACollator(pad_id(tok)),
        processing_class=tok,
        method=get_method(method),
        # rmu steers against the frozen original model
        reference_model=AutoModelForCausalLM.from_pretrained(model_dir)
        if get_method(method).needs_reference(config)
        else None,
    )
    trainer.train()
    if trainer.is_world_process_zero():
        update = {n: (p.detach() - before[n]).contiguous() for n, p in trainer.model.named_parameters()}
        save_file(update, out_file)
    exit_process_group()  # gloo teardown can hang or abort after the work is done


if __name__ == "__main__":
    torch.manual_seed(0)
    main(*sys.argv[1:4], int(sys.argv[4]), sys.argv[5], *(float(r) for r in sys.argv[6:7]))
