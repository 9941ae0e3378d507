"""`UnlearnTrainer`: a `transformers.Trainer` that trains on a forget stream and a retain stream.

The forget loader is Trainer's own train loader and drives the epoch (one epoch = one pass over
the forget set). The retain stream (`streams.RetainStream`) cycles for as long as the forget loader
runs; it is a pure function of (retain_seed, position, rank), so resuming needs no retain state
beyond the optimizer step count. With GeN, a probe stream (`streams.ProbeStream`, a pure function of
(seed, step, rank)) supplies fresh forget and retain batches for the learning-rate fit.

Normalization. Trainer counts `num_items_in_batch` from the train stream only and rescales the loss
in version-dependent ways (`model_accepts_loss_kwargs`, `loss_is_scaled_for_ga`). We own it instead:
`get_batch_samples` fetches a window's forget and retain micro-batches together and counts, per
stream, the answer tokens and sequences of the whole window summed over ranks. A method's term is a
sum over one micro-batch; the trainer divides it by its stream's window count (and multiplies by
the number of ranks, since DDP averages gradients), so every term's gradient equals the gradient of
the window mean, however the window is split into micro-batches and ranks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, get_scheduler
from transformers.trainer_utils import get_last_checkpoint

from ..data.qa import IGNORE_INDEX
from ..methods import Method, MethodContext, Term
from ..methods.common import eval_mode
from ..runs.folder import mark_and_rotate, read_status, write_status, write_text_atomic
from .gen import GenScheduler, probe_losses
from .optim import NormalizedCombiner, PCGradCombiner, _graphs_overlap, local_shard
from .sam import SharpnessAwareStep, is_forget_term
from .streams import PROBE_SALT, ProbeStream, RetainStream, example_keys

__all__ = ["NonFiniteLossError", "RetainStream", "UnlearnTrainer"]

logger = logging.getLogger("llm_unlearn")
COMBINER_FILE = "combiner.json"  # in each checkpoint: the normalized combination's peak term norms


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite: training stops on every rank."""


def _counts(batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """[answer tokens, sequences] of a list of micro-batches (labels are shifted by one when scored)."""
    tokens = sum(int(b["labels"][:, 1:].ne(IGNORE_INDEX).sum()) for b in batches)
    sequences = sum(int(b["labels"].size(0)) for b in batches)
    return torch.tensor([tokens, sequences], dtype=torch.float64)


class UnlearnTrainer(Trainer):
    """Trainer for unlearning: `train_dataset` is the forget set, `retain_dataset` the retain set.

    `method` is a registry entry (`llm_unlearn.methods.get_method`); `reference_model` is the frozen
    original model for methods that declare they need one. Per-step values are appended to
    `<output_dir>/train_log.jsonl` on rank 0.
    """

    def __init__(self, *args, retain_dataset, method: Method, reference_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.method = method
        if self.is_fsdp_enabled and self.args.combine != "sum":
            version = getattr(self.accelerator.state.fsdp_plugin, "fsdp_version", 1)
            if version != 2:
                raise ValueError(
                    f"{self.args.combine} combination under FSDP needs FSDP2, whose sharded gradients it "
                    "accumulates per term; set fsdp_config version: 2 (or fsdp_version: 2 in the accelerate config)"
                )
        if self.is_fsdp_enabled and self.args.sam_rho > 0:
            raise ValueError(
                "--sam_rho is not supported under FSDP (its forget-gradient pre-pass needs the full gradient "
                "on every rank); use DDP, or set --sam_rho 0"
            )
        if self.is_fsdp_enabled and self.args.stop_repair:
            raise ValueError(
                "--stop_repair is not supported under FSDP (its retain-only steps run on the whole model in "
                "every process); use DDP, or set --stop_repair false"
            )
        # What the method declared it needs (methods/__init__.py), provided without knowing which method.
        if method.forget_alternatives is not None:
            self.train_dataset = self.train_dataset.with_alternative_answers(
                method.forget_alternatives(self.args), seed=self.args.seed
            )
        if method.trainable is not None:
            keep = method.trainable(self.model, self.args)
            for name, param in self.model.named_parameters():
                if name not in keep:
                    param.requires_grad_(False)
        self.retain_dataset = retain_dataset
        self.reference_model = reference_model
        if reference_model is not None:
            reference_model.eval().requires_grad_(False)
            if isinstance(reference_model, torch.nn.Module):
                # Trainer places only the trained model; the frozen copy must sit on the same device.
                reference_model.to(self.args.device)
        self.retain_stream = RetainStream(
            retain_dataset,
            self.args.retain_batch_size,
            self.data_collator,
            self.args.retain_seed,
            rank=self.args.process_index,
            world_size=self.args.world_size,
        )
        self._forget_batches_per_epoch: int | None = None
        self._window_counts: dict[str, torch.Tensor] = {}
        self._term_log: dict[str, float] = {}
        self._term_log_steps = 0
        self._combiner: NormalizedCombiner | None = None
        self._vanish_said = False  # has this run logged a term left out by --vanish_ratio?
        # Steps whose forget terms were all left out as vanished (--vanish_stop); None until read on resume.
        self._forget_vanished_steps: int | None = None
        self._norms: dict[str, float] = {}
        self._window_start = True
        self._step_stats: dict[str, float] = {}
        # SAM (sam.py): the window's micro-batches, for the forget-gradient pre-pass, and its results.
        self._window_samples: list[dict] = []
        self._sam: SharpnessAwareStep | None = None
        self._sam_at_theta: list[dict[str, torch.Tensor]] = []
        self._sam_norm = math.nan
        # GeN state for the current optimizer step: the window's examples, probe batches, L0, theta0.
        self._window_exclude: dict[str, set[int]] = {}
        self._gen_probe_batches: tuple[dict, dict] | None = None
        self._gen_l0 = math.nan
        self._gen_theta0: list[torch.Tensor] | None = None
        if self.args.gen:
            rank = self.args.process_index
            self._forget_index = {tuple(f["input_ids"]): i for i, f in enumerate(self.train_dataset)}
            self.probe_streams = {
                "forget": ProbeStream(self.train_dataset, self.args.per_device_train_batch_size,
                                      self.data_collator, self.args.seed, PROBE_SALT["forget"], rank),
                "retain": ProbeStream(retain_dataset, self.args.retain_batch_size,
                                      self.data_collator, self.args.seed, PROBE_SALT["retain"], rank),
            }  # fmt: skip
            self.add_callback(_GenProbe(self))

    # ------------------------------------------------------------------ data

    def get_train_dataloader(self):
        loader = super().get_train_dataloader()
        self._forget_batches_per_epoch = len(loader)
        per_step = self.args.per_device_train_batch_size * self.args.world_size
        if self.args.world_size > 1 and len(self.train_dataset) % per_step:
            # accelerate's even_batches pads the last global batch by repeating forget samples.
            logger.warning(
                "forget set of %d examples is not a multiple of %d (batch x ranks): the last batch of each "
                "epoch repeats %d forget examples",
                len(self.train_dataset), per_step, per_step - len(self.train_dataset) % per_step,
            )  # fmt: skip
        return loader

    def _retain_batches_consumed(self) -> int:
        """Retain micro-batches this rank used before the current optimizer step.

        A pure function of the global step: every epoch uses one retain batch per forget batch, and
        every full window of an epoch has `gradient_accumulation_steps` of them.
        """
        per_epoch = self._forget_batches_per_epoch
        accum = self.args.gradient_accumulation_steps
        windows_per_epoch = math.ceil(per_epoch / accum)
        epoch, window = divmod(self.state.global_step, windows_per_epoch)
        return epoch * per_epoch + window * accum

    def get_batch_samples(
        self, epoch_iterator: Iterator, num_batches: int, device: torch.device
    ) -> tuple[list, torch.Tensor | int | None]:
        forget = []
        for _ in range(num_batches):
            try:
                forget.append(next(epoch_iterator))
            except StopIteration:
                break
        first = self._retain_batches_consumed()
        retain = [self.retain_stream.batch(first + i) for i in range(len(forget))]
        counts = torch.stack([_counts(forget), _counts(retain)]).to(device)
        counts = self.accelerator.reduce(counts, reduction="sum") if self.args.world_size > 1 else counts
        self._window_counts = {"forget": counts[0], "retain": counts[1]}
        self._window_start = True
        if self.args.gen and self.lr_scheduler.should_probe(self.state.global_step):
            # The window's examples on every rank, kept out of GeN's probe batches for this step. The union
            # (not this rank's rows alone): the step was computed from all of them, and every rank must
            # exclude the same set for the probe stream's rank slices to stay disjoint.
            local = {
                "forget": {
                    self._forget_index[k] for f in forget for k in example_keys(f) if k in self._forget_index
                },
                "retain": {i for k in range(len(forget)) for i in self.retain_stream.indices(first + k)},
            }
            self._window_exclude = {name: self._union_over_ranks(rows) for name, rows in local.items()}
        samples = [{"forget": f, "retain": r} for f, r in zip(forget, retain)]
        self._window_samples, self._sam_at_theta = samples, []
        # No `num_items_in_batch`: our terms are normalized by the window counts above.
        return samples, None

    def _union_over_ranks(self, rows: set[int]) -> set[int]:
        """The union of every rank's set of dataset indices (one padded all-gather of tensors, no pickling)."""
        if self.args.world_size == 1:
            return rows
        ids = torch.tensor(sorted(rows), dtype=torch.long, device=self.args.device)
        longest = int(self.accelerator.gather(torch.tensor([len(ids)], device=self.args.device)).max())
        if longest == 0:
            return set()
        padded = torch.full((longest,), -1, dtype=torch.long, device=self.args.device)
        padded[: len(ids)] = ids
        return {int(i) for i in self.accelerator.gather(padded).tolist() if i >= 0}

    def _run_epoch(self, *args, **kwargs):
        # Trainer checks the stop flag only after a step; one raised before any (the stop rule's decision
        # restored on resume, or a forget set already like unseen data) must not train another step.
        if self.control.should_training_stop:
            return None
        if self.args.vanish_stop and self._vanished_forget_count() >= self.args.vanish_stop:
            # Resumed from a checkpoint written after --vanish_stop's limit: the first run trained no further.
            self._stop_on_vanished(self.state.global_step)
            return None
        return super()._run_epoch(*args, **kwargs)

    # ------------------------------------------------------------------ loss

    def _normalize(self, term: Term) -> torch.Tensor:
        tokens, sequences = self._window_counts[term.stream]
        count = tokens if term.reduction == "token" else sequences
        # Gradients are averaged over ranks: multiply by world size so the average is the global mean.
        # Under normalized and pcgrad combination the combiner applies the weights (optim.py).
        weight = term.weight if self.args.combine == "sum" else 1.0
        return weight * term.total * self.args.world_size / count.clamp_min(1).to(term.total.dtype)

    def _check_finite(self, terms: dict[str, torch.Tensor]) -> None:
        values = torch.stack([t.detach().float() for t in terms.values()])
        bad = (~torch.isfinite(values)).float().max().reshape(1)
        if self.args.world_size > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item() > 0:
            names = [n for n, t in terms.items() if not torch.isfinite(t.detach()).all()]
            raise NonFiniteLossError(
                f"loss term(s) {', '.join(names) or 'on another rank'} became non-finite at step "
                f"{self.state.global_step}; lower --learning_rate or check the data (see train_log.jsonl)"
            )

    def training_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor | object],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        model.train()
        forget = self._prepare_inputs(inputs["forget"])
        retain = self._prepare_inputs(inputs["retain"])
        ctx = MethodContext(config=self.args, reference_model=self.reference_model)
        if self.args.sam_rho > 0:
            return self._sam_step(model, forget, retain, ctx)
        if self.args.combine != "sum":
            return self._normalized_step(model, forget, retain, ctx)
        with self.compute_loss_context_manager():
            terms = {
                name: self._normalize(t) for name, t in self.method.fn(model, forget, retain, ctx).items()
            }
        self._check_finite(terms)
        loss = sum(terms.values())
        self.accelerator.backward(loss)
        self._maybe_snapshot_for_gen(model)
        self._record_terms(terms)
        # Trainer logs the mean over ranks of this value: with the world-size factor that is the window mean.
        return loss.detach()

    def _normalized_step(self, model, forget, retain, ctx: MethodContext) -> torch.Tensor:
        """Accumulate each term's gradient apart; on the synchronizing micro-batch, combine them.

        Under DDP it runs inside `no_sync` on every micro-batch and the term buffers are averaged
        across ranks explicitly in `NormalizedCombiner.combine`. Under FSDP backward synchronizes on
        every micro-batch (reduce-scatter into each term's sharded buffer) and the norms are
        reduced from the shards. The Trainer's clipping that follows sees d.
        """
        fsdp = self.is_fsdp_enabled
        self._start_combiner(model)
        sync = contextlib.nullcontext() if fsdp else self.accelerator.no_sync(model)
        with sync, self.compute_loss_context_manager():
            raw = self.method.fn(model, forget, retain, ctx)
            terms = {name: self._normalize(t) for name, t in raw.items()}
            self._check_finite(terms)
            self._combiner.accumulate(terms)
        self._maybe_combine(model, raw)
        self._record_terms(terms)
        # Reported loss: the weighted objective (the update itself is the normalized direction).
        return sum(raw[name].weight * value.detach() for name, value in terms.items())

    def _start_combiner(self, model) -> None:
        """Build the combiner on first use; at a window's first micro-batch, drop the last step's buffers."""
        fsdp = self.is_fsdp_enabled
        if self._combiner is None:
            params = [p for p in model.parameters() if p.requires_grad]
            module = model if fsdp else None
            if self.args.combine == "pcgrad":
                self._combiner = PCGradCombiner(params, sharded=fsdp, module=module, seed=self.args.seed)
            else:
                self._combiner = NormalizedCombiner(
                    params, sharded=fsdp, module=module, vanish_ratio=self.args.vanish_ratio
                )
                self._combiner.peak_norms = self._resumed_combiner_state()["peak_norms"]
        if self._window_start:
            self._combiner.reset()
            self._window_start = False

    def _maybe_combine(self, model, raw: dict[str, Term]) -> None:
        """On the synchronizing micro-batch: combine the term buffers into `.grad` (and GeN's snapshot)."""
        if self.accelerator.sync_gradients:
            weights = {name: t.weight for name, t in raw.items()}
            stats = self._combiner.combine(
                weights, world_size=self.args.world_size, step=self.state.global_step
            )
            capped = self.args.forget_token_nll_cap is not None and stats.get("grad_norm_forget", 1.0) == 0.0
            if capped and stats["dropped_terms"] == 1 and not stats["skipped"]:
                # Expected, not a fault: every forget token of the batch is past --forget_token_nll_cap.
                logger.debug(
                    "step %d: the forget term is past its cap on every token", self.state.global_step
                )
            elif stats["dropped_terms"]:
                logger.warning("step %d: %d loss term(s) had a zero or non-finite gradient norm and were dropped%s",
                               self.state.global_step, int(stats["dropped_terms"]),
                               "; the step is skipped" if stats["skipped"] else "")  # fmt: skip
            if stats.get("vanished_terms"):
                # Expected, not a fault: a saturated loss (module docstring of optim.py). Said once per run at
                # info level (it may recur every step; train_log.jsonl's `vanished_terms` counts each).
                log = logger.debug if self._vanish_said else logger.info
                log("step %d: %d loss term(s) fell below --vanish_ratio of their peak gradient norm and were "
                    "left out%s", self.state.global_step, int(stats["vanished_terms"]),
                    "; the step is skipped" if stats["skipped"] else "")  # fmt: skip
                self._vanish_said = True
            self._count_vanished_forget(raw, stats)
            self._step_stats = stats
            self._norms = {name: stats[f"grad_norm_{name}"] for name in raw}
            self._maybe_snapshot_for_gen(model, skipped=bool(stats["skipped"]))

    def _count_vanished_forget(self, raw: dict[str, Term], stats: dict[str, float]) -> None:
        """--vanish_stop: count the steps whose forget terms were all left out, and end training at the limit.

        The step being combined is still taken (it is a retain-only step, as the rule of optim.py made it);
        Trainer then leaves its loop. The count is the same on every rank (the norms are reduced first).
        """
        forget = [name for name, term in raw.items() if is_forget_term(term)]
        if not forget or self.args.combine != "normalized":
            return
        count = self._vanished_forget_count()
        if all(name in self._combiner.vanished for name in forget):
            count += 1
        self._forget_vanished_steps = count
        stats["forget_vanished_steps"] = float(count)
        if self.args.vanish_stop and count >= self.args.vanish_stop:
            self._stop_on_vanished(self.state.global_step + 1)

    def _vanished_forget_count(self) -> int:
        if self._forget_vanished_steps is None:
            self._forget_vanished_steps = self._resumed_combiner_state()["forget_vanished_steps"]
        return self._forget_vanished_steps

    def _stop_on_vanished(self, step: int) -> None:
        """End training after `step`: tell the stop rule (its reason) or log the reason ourselves."""
        if self.control.should_training_stop:
            return
        self.control.should_training_stop = True
        logger.info(
            "step %d: the forget terms were left out as vanished in %d steps (--vanish_stop %d): nothing is left "
            "to unlearn at this step size, so training ends here", step, self._forget_vanished_steps,
            self.args.vanish_stop,
        )  # fmt: skip
        rules = [cb for cb in self.callback_handler.callbacks if hasattr(cb, "stopped_by")]
        for rule in rules:
            rule.stopped_by("forget_vanished")
        if not rules:
            self._append_log({"step": step, "training_stopped": "forget_vanished",
                              "forget_vanished_steps": self._forget_vanished_steps})  # fmt: skip

    # ------------------------------------------------------------------ sharpness-aware forget term

    def _sam_step(self, model, forget, retain, ctx: MethodContext) -> torch.Tensor:
        """One micro-batch with SAM (sam.py): forget terms at theta + delta, retain terms at theta.

        At a window's first micro-batch a pre-pass over the whole window runs the method at theta:
        its retain terms' gradients go where they always go (`.grad` under `sum`, the combiner's
        buffers otherwise), its forget terms' gradient g into a separate buffer, from which delta =
        rho g / ||g||. Every micro-batch then runs the method at theta + delta and backpropagates its
        forget terms only, then theta is restored. Under DDP the pre-pass runs without gradient sync
        and g is averaged over ranks explicitly; the last micro-batch's backward synchronizes `.grad`
        as usual. Cost: the method runs twice per micro-batch (its retain part at theta + delta is
        computed and discarded, as the method computes both parts in one call).
        """
        combine = self.args.combine != "sum"
        if combine:
            self._start_combiner(model)
        if not self._sam_at_theta:
            self._sam_prepass(model, ctx)
        at_theta = self._sam_at_theta.pop(0)
        sync = self.accelerator.no_sync(model) if combine else contextlib.nullcontext()
        with self._sam.perturbed(), sync, self.compute_loss_context_manager():
            raw = self.method.fn(model, forget, retain, ctx)
            smoothed = {name: self._normalize(t) for name, t in raw.items() if is_forget_term(t)}
            self._check_finite(smoothed)
            if combine:
                self._combiner.accumulate(smoothed)
            else:
                self.accelerator.backward(sum(smoothed.values()))
        if combine:
            # Back in the method's term order (the pre-pass filled the retain buffers first).
            self._combiner.buffers = {name: self._combiner.buffers[name] for name in raw}
            self._maybe_combine(model, raw)
        else:
            self._maybe_snapshot_for_gen(model)
        if self.accelerator.sync_gradients:
            self._step_stats["sam_forget_grad_norm"] = self._sam_norm
        self._record_terms({**at_theta, **{f"sam_{n}": value.detach() for n, value in smoothed.items()}})
        weighted = {name: (raw[name].weight if combine else 1.0) * value for name, value in at_theta.items()}
        return sum(weighted.values())

    def _sam_prepass(self, model, ctx: MethodContext) -> None:
        """The window at theta: retain gradients to their usual place, forget gradient g to delta."""
        params = [p for p in model.parameters() if p.requires_grad]
        if self._sam is None:
            self._sam = SharpnessAwareStep(params, self.args.sam_rho)
        own = [p.grad for p in params]
        g: list[torch.Tensor | None] = [None] * len(params)
        combine = self.args.combine != "sum"
        with self.accelerator.no_sync(model), self.compute_loss_context_manager():
            for sample in self._window_samples:
                forget, retain = (self._prepare_inputs(sample[s]) for s in ("forget", "retain"))
                raw = self.method.fn(model, forget, retain, ctx)
                terms = {name: self._normalize(t) for name, t in raw.items()}
                self._check_finite(terms)
                # l_f: the forget terms weighted as the method's objective weights them (`_normalize`
                # already applies the weight under `sum`).
                loss_f = sum(
                    (t.weight if combine else 1.0) * terms[n] for n, t in raw.items() if is_forget_term(t)
                )
                kept = {n: terms[n] for n, t in raw.items() if not is_forget_term(t)}
                for p, buf in zip(params, g):
                    p.grad = buf
                loss_f.backward(retain_graph=bool(kept) and _graphs_overlap([loss_f, *kept.values()]))
                g = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
                for p, grad in zip(params, own):
                    p.grad = grad
                if combine and kept:
                    self._combiner.accumulate(kept)
                elif kept:
                    sum(kept.values()).backward()
                own = [p.grad for p in params]
                self._sam_at_theta.append({n: v.detach() for n, v in terms.items()})
        self._sam_norm = self._sam.set_gradient(g, world_size=self.args.world_size)

    def _record_terms(self, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            # Per-rank share of the window mean; `log` sums the shares over ranks.
            self._term_log[name] = self._term_log.get(name, 0.0) + value.item() / self.args.world_size
        # Steps counted as they happen (not from global_step), so a resumed run averages correctly.
        self._term_log_steps += int(self.accelerator.sync_gradients)

    # ------------------------------------------------------------------ GeN learning rate

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
        counts = {"forget": _counts([forget]).tolist(), "retain": _counts([retain]).tolist()}
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

    # ------------------------------------------------------------------ logging and saving

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._term_log:
            steps = max(1, self._term_log_steps)
            for name, total in self._term_log.items():
                value = torch.tensor([total / steps], device=self.args.device)
                if self.args.world_size > 1:
                    value = self.accelerator.reduce(value, reduction="sum")
                logs[f"loss_{name}"] = value.item()
            self._term_log, self._term_log_steps = {}, 0
            logs.update(self._step_stats)
            self._step_stats = {}
        if "train_loss" in logs:
            # Trainer's summary averages the steps this process ran; after a resume that is not the run.
            logs["train_loss_first_step"] = self._initial_global_step + 1
        super().log(logs, start_time)
        self._append_log({"step": self.state.global_step, "epoch": self.state.epoch, **logs})

    def _append_log(self, record: dict) -> None:
        """One JSON line in `<output_dir>/train_log.jsonl`, written by rank 0."""
        if self.is_world_process_zero() and self.args.output_dir:
            Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
            with open(Path(self.args.output_dir) / "train_log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer's checkpoint, then our mark, then rotation: a run killed at any point keeps a
        complete checkpoint to resume from.

        Trainer rotates (deletes older checkpoints) as the last part of its own save, before anything
        could tell a finished checkpoint from one cut short; so rotation is held back until the new
        checkpoint is marked complete (`runs/folder.mark_checkpoint`), and `status.json` then names it.
        """
        limit = self.args.save_total_limit
        self.args.save_total_limit = None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        out = Path(self.args.output_dir)
        step = self.state.global_step
        if self._combiner is not None and self._combiner.peak_norms and self.is_world_process_zero():
            # The vanish test's memory (optim.py), identical on every rank: resumed by `_resumed_combiner_state`.
            state = {
                "peak_norms": self._combiner.peak_norms,
                "forget_vanished_steps": self._forget_vanished_steps or 0,
            }
            write_text_atomic(out / f"checkpoint-{step}" / COMBINER_FILE, json.dumps(state))
        if self.args.world_size > 1:
            self.accelerator.wait_for_everyone()  # every rank's shards are written before the mark
        if not self.is_world_process_zero():
            return
        folder = mark_and_rotate(out, step, limit)
        if read_status(out) is not None:  # a run directory of `unlearn()`, not a bare Trainer output
            write_status(out, "running", method=self.method.name, step=step, checkpoint=folder.name)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        self._resume_from = resume_from_checkpoint
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _resumed_combiner_state(self) -> dict:
        """The combiner's peak term norms and vanished-forget count saved with the checkpoint this run resumes
        from (none on a fresh run). Checkpoints before --vanish_stop saved the peaks alone."""
        resume = getattr(self, "_resume_from", None)
        if resume is True:
            resume = get_last_checkpoint(self.args.output_dir)
        path = Path(resume) / COMBINER_FILE if resume else None
        saved = json.loads(path.read_text()) if path is not None and path.exists() else {}
        peaks = saved["peak_norms"] if "peak_norms" in saved else saved
        return {
            "peak_norms": {str(k): float(v) for k, v in peaks.items()},
            "forget_vanished_steps": int(saved.get("forget_vanished_steps", 0)),
        }

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        # training_args.bin is a pickle that may hold tokens; the resolved YAML config replaces it.
        args_file = Path(output_dir or self.args.output_dir) / "training_args.bin"
        if self.is_world_process_zero() and args_file.exists():
            os.remove(args_file)


class _GenProbe(TrainerCallback):
    """Runs GeN's probes between `optimizer.step()` and the scheduler's step (Trainer's hook there)."""

    def __init__(self, trainer: UnlearnTrainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._gen_probe()
