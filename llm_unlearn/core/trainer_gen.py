"""GeN inside `UnlearnTrainer`: the probe steps that fit the learning rate (the fit itself: `gen.py`).

On a probe step (`GenScheduler.should_probe`), at the synchronizing micro-batch, the trainer draws
fresh forget and retain probe batches (`streams.ProbeStream`, keeping out every rank's window), scores
the step's objective L0 at theta0 and keeps theta0; after the real `optimizer.step()` (Trainer's
`on_optimizer_step` hook, `GenProbeCallback`) it scores L- at theta1 and L+ at 2 theta0 - theta1 and
refits eta. The objective is the one the step descended: sum_k w_k T_k under `--combine sum`, and the
frozen-norm potential sum_k w_k T_k / ||G_k|| under `normalized` (its gradient at theta0 is NGDiff's d).

`GenStepMixin` holds that part of the trainer; it reads the state `UnlearnTrainer.__init__` sets
(`probe_streams`, `_window_exclude`, `_norms`, `_gen_*`) and is mixed into `UnlearnTrainer` only.
"""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback, get_scheduler

from ..methods import MethodContext
from ..methods.common import eval_mode
from .gen import GenScheduler, probe_losses
from .optim import local_shard
from .streams import batch_counts


class GenStepMixin:
    """GeN's scheduler, probe snapshot and probe losses for `UnlearnTrainer` (module docstring)."""

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer = None):
        if not self.args.gen:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            # The usual schedule's multiplier, read off a throwaway optimizer, scales GeN's eta.
            dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
            schedule = get_scheduler(
                self.args.lr_scheduler_type,
                optimizer=dummy,
                num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
                num_training_steps=num_training_steps,
                scheduler_specific_kwargs=self.args.lr_scheduler_kwargs,
            )
            if not isinstance(schedule, torch.optim.lr_scheduler.LambdaLR):
                raise ValueError(
                    f"GeN composes with multiplier schedules (linear, cosine, constant, ...), not "
                    f"{self.args.lr_scheduler_type}; choose one of those or set --gen false"
                )
            self.lr_scheduler = GenScheduler(
                self.optimizer if optimizer is None else optimizer,
                factor=schedule.lr_lambdas[0],
                interval=self.args.gen_interval,
                gamma=self.args.gen_gamma,
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def _maybe_snapshot_for_gen(self, model, skipped: bool = False) -> None:
        """On the synchronizing micro-batch of a probe step: draw the probe batches, score L0, keep theta0.

        A step that moves nothing (every gradient zero: skipped by the combiner, or all-zero under sum)
        is not a probe: its three losses would coincide and read as a failed fit.
        """
        if not (self.args.gen and self.accelerator.sync_gradients):
            return
        step = self.state.global_step
        if not self.lr_scheduler.should_probe(step):
            return
        params = [p for p in model.parameters() if p.requires_grad]
        if skipped or (self.args.combine == "sum" and self._gradients_all_zero(params)):
            return
        self._gen_probe_batches = tuple(
            self._prepare_inputs(self.probe_streams[s].batch(step, self._window_exclude.get(s, set())))
            for s in ("forget", "retain")
        )
        self._gen_l0 = self._probe_objective()
        self._gen_theta0 = [p.detach().clone() for p in params]

    def _gradients_all_zero(self, params: list[torch.Tensor]) -> bool:
        local = sum(float(local_shard(p.grad).float().pow(2).sum()) for p in params if p.grad is not None)
        if self.is_fsdp_enabled and self.args.world_size > 1:
            # Sharded gradients: each rank holds a part; DDP's are already synchronized here.
            local = self._sum_over_ranks([local])[0]
        return local == 0.0

    def _sum_over_ranks(self, values: list[float]) -> list[float]:
        tensor = torch.tensor(values, device=self.args.device, dtype=torch.float64)
        if self.args.world_size > 1:
            tensor = self.accelerator.reduce(tensor, reduction="sum")
        return tensor.tolist()

    @torch.no_grad()
    def _probe_objective(self) -> float:
        """GeN's objective on the probe batches at the current weights, in eval mode (dropout off).

        Each term is its stream's mean over the probe examples of every rank (token or sequence mean,
        as in training), weighted as the step combined it: sum_k w_k T_k under `sum`, and under
        `normalized` the frozen-norm potential sum_k w_k T_k / ||G_k|| whose gradient at theta0 is d.
        """
        forget, retain = self._gen_probe_batches
        ctx = MethodContext(config=self.args, reference_model=self.reference_model)
        with eval_mode(self.model), self.compute_loss_context_manager():
            raw = self.method.fn(self.model, forget, retain, ctx)
        names = list(raw)
        counts = {"forget": batch_counts([forget]).tolist(), "retain": batch_counts([retain]).tolist()}
        reduced = self._sum_over_ranks(
            [float(raw[n].total) for n in names] + counts["forget"] + counts["retain"]
        )
        totals = dict(zip(names, reduced[: len(names)]))
        count = {"forget": reduced[len(names) : len(names) + 2], "retain": reduced[len(names) + 2 :]}
        objective = 0.0
        for n in names:
            term = raw[n]
            mean = totals[n] / max(count[term.stream][0 if term.reduction == "token" else 1], 1.0)
            if self.args.combine == "normalized":
                norm = self._norms.get(n, math.nan)
                if not (math.isfinite(norm) and norm > 0):
                    continue  # a term dropped from the step is not part of its potential
                objective += term.weight * mean / norm
            else:
                objective += term.weight * mean
        return objective

    def _gen_probe(self) -> None:
        """After the real optimizer step: L- at theta1, L+ at 2 theta0 - theta1, then refit eta and log it."""
        if self._gen_theta0 is None:
            return
        params = [p for p in self.model.parameters() if p.requires_grad]
        l0 = self._gen_l0
        l_minus, l_plus = probe_losses(params, self._gen_theta0, self._probe_objective)
        self._gen_theta0, self._gen_probe_batches = None, None
        scheduler = self.lr_scheduler
        lr = max(float(group["lr"]) for group in self.optimizer.param_groups)
        fit = scheduler.observe(l0, l_minus, l_plus)
        next_lr = max(eta * scheduler.factor(scheduler.last_epoch + 1) for eta in scheduler.etas)
        # Every probe gets its own record, so no fit is lost between logging steps.
        self._append_log({
            "step": self.state.global_step + 1, "epoch": self.state.epoch, "gen_lr": lr,
            "gen_eta_star": fit.eta_star, "gen_curvature": fit.curvature, "gen_slope": fit.slope,
            "gen_l0": l0, "gen_l_minus": l_minus, "gen_l_plus": l_plus, "gen_accepted": float(fit.accepted),
            "gen_reason": fit.reason, "gen_next_lr": next_lr,
            "gen_acceptance_rate": scheduler.accepted / scheduler.probes,
        })  # fmt: skip


class GenProbeCallback(TrainerCallback):
    """Runs GeN's probes between `optimizer.step()` and the scheduler's step (Trainer's hook there)."""

    def __init__(self, trainer: GenStepMixin):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._gen_probe()
