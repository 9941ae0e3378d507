"""NGDiff's and PCGrad's directions under HSDP on two CPU ranks vs one unsharded process (tests/test_hsdp.py).

usage: _hsdp_combine.py MODEL_DIR DATA_DIR OUT_FILE [all_ranks]
FSDP2 on a 2D mesh (replicate=2 x shard=1): every rank holds whole parameters and backward all-reduces
gradients across the two replicas, the layout accelerate builds for `dp_replicate_size=2`. Each rank
takes two micro-batches of two forget and two retain examples (the first inside FSDP2's `no_sync`, as
HF Trainer runs it); terms are normalized as the trainer does (window token count over both ranks,
times the world size). Rank 0 also computes both directions without sharding on the same batches.
`all_ranks` sums the partial dot products over every rank (the old reduction), the negative control.
"""

from __future__ import annotations

import contextlib
import sys

import torch
import torch.distributed as dist
from _fsdp_combine import no_sync_fsdp2, two_term_setup  # noqa: E402  (tests/ is the script's folder)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

from llm_unlearn.core.optim import NormalizedCombiner, PCGradCombiner, pcgrad_orders
from llm_unlearn.eval.shard import exit_process_group


def _reduce_over_all_ranks(self, sums, world_size):
    reduced = torch.tensor(sums, dtype=torch.float64)
    dist.all_reduce(reduced)
    return reduced.tolist()


def main(model_dir: str, data_dir: str, out_file: str, mode: str = "shard_group") -> None:
    if mode == "all_ranks":
        NormalizedCombiner._reduce = _reduce_over_all_ranks
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world, 1), mesh_dim_names=("replicate", "shard"))
    batches, terms = two_term_setup(model_dir, data_dir, world)
    weights = {"forget": 1.0, "retain": 0.5}

    reference_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    params = [p for p in model.parameters() if p.requires_grad]
    out = {}
    for name, combiner in {
        "normalized": NormalizedCombiner(params, sharded=True, module=model),
        "pcgrad": PCGradCombiner(params, sharded=True, module=model, seed=3),
    }.items():
        combiner.reset()
        for m in range(2):
            with contextlib.nullcontext() if m == 1 else no_sync_fsdp2(model):
                combiner.accumulate({s: t * world for s, t in terms(model, rank, m).items()})
        stats = combiner.combine(weights, world_size=world, step=5)
        out[name] = torch.cat([p.grad.full_tensor().flatten() for p in params])
        out[f"{name}_norm_forget"] = torch.tensor(stats["grad_norm_forget"])
        for p in params:
            p.grad = None

    if rank == 0:
        ref_params = [p for p in reference_model.parameters() if p.requires_grad]
        grads = {}
        for s in batches:
            total = sum(terms(reference_model, r, m)[s] for r in range(world) for m in range(2))
            grads[s] = torch.cat([g.flatten() for g in torch.autograd.grad(total, ref_params)])
        out["reference_normalized"] = sum(weights[s] * grads[s] / grads[s].norm() for s in batches)
        # PCGrad by its definition on explicit vectors, in the order the combiner draws for (3, 5).
        gs = [weights[s] * grads[s] for s in batches]
        total = torch.zeros_like(gs[0])
        for i, order in enumerate(pcgrad_orders(2, 3, 5)):
            g = gs[i].clone()
            for j in order:
                inner = torch.dot(g, gs[j])
                if inner < 0:
                    g = g - inner / torch.dot(gs[j], gs[j]) * gs[j]
            total += g
        out["reference_pcgrad"] = total
        out["reference_norm_forget"] = grads["forget"].norm()
        torch.save(out, out_file)
    exit_process_group()  # both ranks done (rank 0 has written); gloo teardown can hang or abort


if __name__ == "__main__":
    main(*sys.argv[1:5])
