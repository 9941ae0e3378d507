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
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import Trainer

from ..methods import Method, MethodContext, Term
from ..runs.folder import append_jsonl, mark_and_rotate, read_status, write_status
from .optim import NormalizedCombiner, _graphs_overlap
from .sam import SharpnessAwareStep, is_forget_term
from .streams import PROBE_SALT, ProbeStream, RetainStream, batch_counts, example_keys
from .trainer_combine import CombinedStepMixin
from .trainer_gen import GenProbeCallback, GenStepMixin

__all__ = ["NonFiniteLossError", "RetainStream", "UnlearnTrainer"]

logger = logging.getLogger("llm_unlearn")


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite: training stops on every rank."""


def _check_use(args, method: Method | str, reference_model) -> Method:
    """Refuse, in one line each, what would otherwise fail deep in the first step: the trainer used with
    plain `TrainingArguments`, with a method other than the config's (whose combination and options were
    resolved for that one), or without the frozen reference the method needs."""
    from ..methods import get_method
    from .config import UnlearnConfig

    if not isinstance(args, UnlearnConfig):
        raise TypeError(
            f"UnlearnTrainer needs args=UnlearnConfig(...) (llm_unlearn.core.config), not {type(args).__name__}: "
            "it carries the method's options, the retain batch and the combination"
        )
    if isinstance(method, str):
        method = get_method(method)
    configured = get_method(args.method)
    if configured.fn is not method.fn or configured.combine != method.combine:
        raise ValueError(
            f"method {method.name!r} is not the config's method {args.method!r}, for which its options and "
            f"combination ({args.combine}) were resolved: pass UnlearnConfig(method={method.name!r}, ...)"
        )
    if reference_model is None and method.needs_reference(args):
        raise ValueError(
            f"{method.name} (with these options) scores against the frozen original model: pass "
            "reference_model=<a frozen copy of the model> to UnlearnTrainer"
        )
    return method


class UnlearnTrainer(CombinedStepMixin, GenStepMixin, Trainer):
    """Trainer for unlearning: `train_dataset` is the forget set, `retain_dataset` the retain set.

    `method` is a registry entry (`llm_unlearn.methods.get_method`); `reference_model` is the frozen
    original model for methods that declare they need one. Per-step values are appended to
    `<output_dir>/train_log.jsonl` on rank 0.
    """

    train_clock = None  # runs/folder.TrainClock: the training seconds each checkpoint's mark records

    def __init__(self, *args, retain_dataset, method: Method | str, reference_model=None, **kwargs):
        method = _check_use(args[1] if len(args) > 1 else kwargs.get("args"), method, reference_model)
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
        self._resumed_state: dict | None = None  # the resumed checkpoint's combiner.json, read once
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
            self.add_callback(GenProbeCallback(self))

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
        counts = torch.stack([batch_counts(forget), batch_counts(retain)]).to(device)
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
        if 0 < self.state.max_steps <= self.state.global_step:
            # Resumed from the checkpoint of the last step (killed after training, before the run's end).
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

    def _method_terms(self, model, forget, retain, ctx: MethodContext) -> dict[str, Term]:
        """The method's loss terms on one micro-batch; refused if every one has weight 0, since the run would
        then train nothing and end "complete" with the weights it started from."""
        raw = self.method.fn(model, forget, retain, ctx)
        if raw and all(t.weight == 0 for t in raw.values()):
            raise ValueError(
                f"every loss term of {self.method.name} ({', '.join(raw)}) has weight 0, so training would "
                "change nothing; set --forget_weight (or --retain_weight) above 0"
            )
        return raw

    def _check_finite(self, terms: dict[str, torch.Tensor]) -> None:
        values = torch.stack([t.detach().float() for t in terms.values()])
        bad = (~torch.isfinite(values)).float().max().reshape(1)
        if self.args.world_size > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item() > 0:
            names = [n for n, t in terms.items() if not torch.isfinite(t.detach()).all()]
            step = self.state.global_step
            how = (
                "lower --learning_rate or check the data (see train_log.jsonl)"
                if step
                else "at the first step, before any update: check the data and the model"
            )
            raise NonFiniteLossError(
                f"loss term(s) {', '.join(names) or 'on another rank'} became non-finite at step {step}; {how}"
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
                name: self._normalize(t) for name, t in self._method_terms(model, forget, retain, ctx).items()
            }
        self._check_finite(terms)
        loss = sum(terms.values())
        self.accelerator.backward(loss)
        self._maybe_snapshot_for_gen(model)
        self._record_terms(terms)
        # Trainer logs the mean over ranks of this value: with the world-size factor that is the window mean.
        return loss.detach()

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
            raw = self._method_terms(model, forget, retain, ctx)
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
                raw = self._method_terms(model, forget, retain, ctx)
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
            append_jsonl(Path(self.args.output_dir) / "train_log.jsonl", record)

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
        self._save_combiner_state(out / f"checkpoint-{step}")
        if self.args.world_size > 1:
            self.accelerator.wait_for_everyone()  # every rank's shards are written before the mark
        if not self.is_world_process_zero():
            return
        folder = mark_and_rotate(out, step, limit, self.train_clock)
        if read_status(out) is not None:  # a run directory of `unlearn()`, not a bare Trainer output
            write_status(out, "running", method=self.method.name, step=step, checkpoint=folder.name)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        self._resume_from = resume_from_checkpoint
        self._resumed_state = None  # read from this call's checkpoint (trainer_combine.py)
        self._check_weights_finite(None)
        result = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        # The loss check sees a step's inputs, not its update: the last steps can turn the weights into NaN
        # (a divergent learning rate) with every logged loss finite. Such weights are never saved.
        self._check_weights_finite(self.state.global_step)
        return result

    def _check_weights_finite(self, step: int | None) -> None:
        bad = next(
            (n for n, p in self.model.named_parameters() if not torch.isfinite(p.detach()).all()), None
        )
        flag = torch.tensor([float(bad is not None)], device=self.args.device)
        if self.args.world_size > 1:  # each rank checks its own shards (FSDP)
            flag = self.accelerator.reduce(flag, reduction="sum")
        if flag.item() == 0:
            return
        where = bad or "on another rank"
        if step is None:
            raise NonFiniteLossError(
                f"the model's weights hold NaN or inf before training ({where}); check --model_name_or_path"
            )
        raise NonFiniteLossError(
            f"the weights became NaN or inf by step {step} ({where}), so the model was not saved; lower "
            "--learning_rate (or --max_grad_norm) and start again in a new --output_dir"
        )

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        # training_args.bin is a pickle that may hold tokens; the resolved YAML config replaces it.
        args_file = Path(output_dir or self.args.output_dir) / "training_args.bin"
        if self.is_world_process_zero() and args_file.exists():
            os.remove(args_file)
