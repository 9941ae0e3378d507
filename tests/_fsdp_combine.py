"""NGDiff's direction under FSDP2 on two CPU ranks vs one unsharded process (tests/test_distributed.py).

usage: _fsdp_combine.py MODEL_DIR DATA_DIR OUT_FILE [unforced]
Each rank takes two micro-batches of two forget and two retain examples (rank r gets examples
2r, 2r+1 of each window half). Terms are normalized as the trainer does: divided by the window's
answer-token count over both ranks and multiplied by the world size (FSDP averages gradients).
The window runs as HF Trainer runs it: every micro-batch but the last inside `no_sync`, which for
FSDP2 is `set_requires_gradient_sync(False)` (accelerate's `no_sync` and transformers' own deferral
both do exactly this). `unforced` turns off the combiner's forced sync, the negative control.
Rank 0 also computes d without sharding on the same four micro-batches and saves both.
"""

from __future__ import annotations

import contextlib
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM, AutoTokenizer

import llm_unlearn.core.optim
from llm_unlearn.core.optim import NormalizedCombiner
from llm_unlearn.data.qa import QACollator, QADataset, load_split, pad_id
from llm_unlearn.eval.shard import exit_process_group
from llm_unlearn.methods.common import nll_sum


@contextlib.contextmanager
def no_sync_fsdp2(model):
    """What `Accelerator.no_sync` does for an FSDP2 model (accelerate 1.15)."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def two_term_setup(model_dir: str, data_dir: str, world: int):
    """The forget and retain micro-batches of every rank and the graddiff terms over them (also used by
    tests/_hsdp_combine.py): micro-batch m of rank r holds examples 4m + 2r and 4m + 2r + 1."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    encode = dict(prompt_format="chat_template", max_length=128)
    collate = QACollator(pad_id(tok))
    streams = {
        "forget": QADataset(load_split("forget10", data_dir)[:8], tok, **encode),
        "retain": QADataset(load_split("retain90", data_dir)[:8], tok, **encode),
    }
    batches = {
        s: [[collate([ds[4 * m + 2 * r], ds[4 * m + 2 * r + 1]]) for m in range(2)] for r in range(world)]
        for s, ds in streams.items()
    }
    tokens = {
        s: sum(int(b["labels"][:, 1:].ne(-100).sum()) for rb in bs for b in rb) for s, bs in batches.items()
    }
    sign = {"forget": -1.0, "retain": 1.0}

    def terms(model, r, m):
        return {s: sign[s] * nll_sum(model, batches[s][r][m]) / tokens[s] for s in batches}

    return batches, terms


def main(model_dir: str, data_dir: str, out_file: str, mode: str = "forced") -> None:
    if mode == "unforced":
        llm_unlearn.core.optim.gradient_sync_forced = lambda module: contextlib.nullcontext()
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    batches, terms = two_term_setup(model_dir, data_dir, world)
    reference_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    params = [p for p in model.parameters() if p.requires_grad]
    combiner = NormalizedCombiner(params, sharded=True, module=model)
    combiner.reset()
    for m in range(2):
        last = m == 1
        with contextlib.nullcontext() if last else no_sync_fsdp2(model):
            combiner.accumulate({s: t * world for s, t in terms(model, rank, m).items()})
    stats = combiner.combine({"forget": 1.0, "retain": 1.0}, world_size=world)
    sharded = torch.cat([p.grad.full_tensor().flatten() for p in params])

    if rank == 0:
        ref_params = [p for p in reference_model.parameters() if p.requires_grad]
        grads = {}
        for s in batches:
            total = sum(terms(reference_model, r, m)[s] for r in range(world) for m in range(2))
            grads[s] = torch.cat([g.flatten() for g in torch.autograd.grad(total, ref_params)])
        d = grads["retain"] / grads["retain"].norm() + grads["forget"] / grads["forget"].norm()
        torch.save(
            {
                "sharded": sharded,
                "reference": d,
                "stats": stats,
                "norm_forget": float(grads["forget"].norm()),
            },
            out_file,
        )
    exit_process_group()  # both ranks done (rank 0 has written); gloo teardown can hang or abort


if __name__ == "__main__":
    main(*sys.argv[1:5])
