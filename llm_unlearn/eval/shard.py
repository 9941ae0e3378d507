"""Data-parallel evaluation: each process scores a share of the batches, and all get every result.

Per-sample scores depend on batch composition (a left-padded greedy generation can flip an argmax
under different padding; float sums change with the rows beside them), so the unit of work is the
exact batch one process would form after length sorting: rank r scores batches r, r + W, r + 2W, ...
of every pass, and the gathered results are put back by sample index. Every per-sample value is
then bit-identical to a one-process run (same kernels and thread count), and so is every aggregate.

Gathers use `torch.distributed.all_gather_object`, which works on gloo (CPU) and NCCL (with the
rank's CUDA device set, as `accelerate.PartialState` does). Every rank gets every result, so all
ranks compute the same metrics and only the main process writes or prints them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch.distributed as dist
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

T = TypeVar("T")


@dataclass
class Shard:
    """This process's part of an evaluation over `world_size` processes; the default is all of it.

    `batches_run` counts the batches this process has scored, recorded in eval.json's timing as
    evidence of how the work was split.
    """

    rank: int = 0
    world_size: int = 1
    batches_run: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_gather(self, obj: Any) -> list:
        """`obj` from every rank, in rank order (no communication in a one-process run)."""
        if self.world_size == 1:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def map_batches(
        self, batches: list[list[int]], score: Callable[[list[int]], T], progress: bool, desc: str
    ) -> list[tuple[list[int], T]]:
        """(indices, score(indices)) for every batch of every rank, this rank's share scored here."""
        mine = batches[self.rank :: self.world_size]
        # Also off where transformers' bars are (`--disable_tqdm` turns both off, cli/commands.py).
        show = progress and self.is_main and hf_logging.is_progress_bar_enabled()
        done = [(idx, score(idx)) for idx in tqdm(mine, desc=desc, disable=not show)]
        self.batches_run += len(mine)
        return [piece for part in self.all_gather(done) for piece in part]


def process_shard() -> Shard:
    """The initialised `torch.distributed` process group as a Shard, or one process if there is none."""
    if dist.is_available() and dist.is_initialized():
        return Shard(rank=dist.get_rank(), world_size=dist.get_world_size())
    return Shard()


def exit_process_group() -> None:
    """End a successful multi-process run (torchrun / accelerate launch): wait for every rank, then exit 0.

    Returns at once in a one-process run. Otherwise it does not return: after the barrier every output
    is on disk, and the process leaves with `os._exit`, skipping interpreter teardown. That teardown is
    where gloo runs go wrong after the work is done: freeing the DDP reducer and the group's work
    objects can hang forever (seen in 1 of 7 two-rank runs under CPU load, after
    `destroy_process_group` had returned) or abort with SIGABRT (pytorch/pytorch#190489). Only for
    success: a failed rank would wait at the barrier for peers that never come, so failures exit
    normally and torchrun stops the rest.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
