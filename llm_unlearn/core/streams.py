"""Deterministic batch streams beside Trainer's forget loader: the retain stream and GeN's probe stream.

Both are pure functions of (seed, position, rank), so resuming a run needs no stream state beyond the
optimizer step count, and two ranks never need to agree on anything but the seed.
"""

from __future__ import annotations

import math

import torch

from ..data.qa import IGNORE_INDEX

# Distinct seeds for the probe streams, so probes never replay the retain stream's own order.
PROBE_SALT = {"forget": 1, "retain": 2}


def batch_counts(batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """[answer tokens, sequences] of a list of micro-batches (labels are shifted by one when scored)."""
    tokens = sum(int(b["labels"][:, 1:].ne(IGNORE_INDEX).sum()) for b in batches)
    sequences = sum(int(b["labels"].size(0)) for b in batches)
    return torch.tensor([tokens, sequences], dtype=torch.float64)


class RetainStream:
    """Cyclic, rank-sharded retain micro-batches.

    Retain micro-batch k of this rank is global batch g = k * world_size + rank, taken from cycle
    floor(g / n) at position g mod n of a permutation that is a pure function of (seed, cycle). Ranks
    see disjoint batches.
    """

    def __init__(self, dataset, batch_size: int, collate_fn, seed: int, rank: int = 0, world_size: int = 1):
        if len(dataset) == 0:
            raise ValueError("retain set is empty; choose a retain split with at least one example")
        self.dataset, self.batch_size, self.collate_fn = dataset, batch_size, collate_fn
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.batches_per_cycle = math.ceil(len(dataset) / batch_size)

    def indices(self, k: int) -> list[int]:
        """Dataset indices of this rank's k-th retain micro-batch."""
        g = k * self.world_size + self.rank
        cycle, pos = divmod(g, self.batches_per_cycle)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + cycle)
        perm = torch.randperm(len(self.dataset), generator=generator).tolist()
        return perm[pos * self.batch_size : (pos + 1) * self.batch_size]

    def batch(self, k: int) -> dict[str, torch.Tensor]:
        return self.collate_fn([self.dataset[i] for i in self.indices(k)])


class ProbeStream:
    """GeN's probe micro-batch of one stream for optimizer step `step`: fresh examples where possible.

    A permutation of the dataset seeded by (seed, salt, step); the examples of the step's window on every rank
    (`exclude`) are moved to its end, so the probe is made of examples the step was not computed from
    whenever the set has enough of them, and rank r takes positions r*b .. r*b + b - 1 (cyclically).
    Why fresh: a fit on the step's own batch measures how fast that batch's loss falls, whose slope is
    ~||Delta||^2 by construction; GeN (arXiv 2407.02772) probes on a separate batch.
    """

    def __init__(self, dataset, batch_size: int, collate_fn, seed: int, salt: int, rank: int = 0):
        if len(dataset) == 0:
            raise ValueError("cannot probe an empty set")
        self.dataset, self.batch_size, self.collate_fn = dataset, batch_size, collate_fn
        self.seed, self.salt, self.rank = seed, salt, rank

    def indices(self, step: int, exclude: set[int] = frozenset()) -> list[int]:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + step) * 8 + self.salt)
        perm = torch.randperm(len(self.dataset), generator=generator).tolist()
        pool = [i for i in perm if i not in exclude] + [i for i in perm if i in exclude]
        size = min(self.batch_size, len(pool))
        start = self.rank * size
        return [pool[(start + j) % len(pool)] for j in range(size)]

    def batch(self, step: int, exclude: set[int] = frozenset()) -> dict[str, torch.Tensor]:
        return self.collate_fn([self.dataset[i] for i in self.indices(step, exclude)])


def example_keys(batch: dict[str, torch.Tensor]) -> list[tuple[int, ...]]:
    """Each row's unpadded token ids: identifies an example of a collated batch (either padding side)."""
    return [
        tuple(ids[mask.bool()].tolist()) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])
    ]
