"""The stop rule's state on disk, so that a killed run resumes with the checks it had made.

Two files in the run directory, both rewritten whole (under a temporary name, then renamed) by rank 0:
`stop_rule.json` holds every check so far and the step of the kept one, after each check;
`stop_rule_best.safetensors` holds the kept check's trainable weights, whenever the kept check changes.
A resumed run reads them back (`read_saved`) before its first step: the checks up to its checkpoint,
and the kept weights even if their check came after the checkpoint (they are on disk).

This module imports only runs/ and eval/shard.py from llm_unlearn.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..eval.shard import process_shard

HISTORY_FILE = "stop_rule.json"
BEST_FILE = "stop_rule_best.safetensors"
# Records that are not unlearning checks: a resumed run redoes them at its end (repair.py, stop.py's
# kept-weights estimate), so they are never read back as a decision.
REDONE_PHASES = ("repair", "kept")


def trainable(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def snapshot(model) -> dict[str, torch.Tensor]:
    """A CPU copy of the trainable weights."""
    return {n: p.detach().to("cpu", copy=True) for n, p in trainable(model)}


def load(model, weights: dict[str, torch.Tensor]) -> None:
    """Copy `weights` (a `snapshot`) back into the model's trainable parameters."""
    with torch.no_grad():
        for name, param in trainable(model):
            param.copy_(weights[name].to(param.device, param.dtype))


def _writes(output_dir: Path) -> bool:
    return process_shard().rank == 0 and output_dir.is_dir()


def save_best_weights(output_dir: Path, weights: dict[str, torch.Tensor]) -> None:
    """The kept weights on disk too, so a resumed run keeps them (rank 0, unsharded models)."""
    if not _writes(output_dir):
        return
    from safetensors.torch import save_file

    tmp = output_dir / f".{BEST_FILE}.tmp"
    save_file({n: t.contiguous() for n, t in weights.items()}, str(tmp))
    tmp.replace(output_dir / BEST_FILE)


def save_history(output_dir: Path, best_step: int, history: list[dict]) -> None:
    """Every check so far and which one is kept, rewritten after each check."""
    if not _writes(output_dir):
        return
    from ..runs.folder import write_json_atomic

    write_json_atomic(output_dir / HISTORY_FILE, {"best_step": best_step, "history": history})


def read_saved(output_dir: Path, global_step: int) -> tuple[list[dict], dict, dict[str, torch.Tensor]] | None:
    """For a run resumed at `global_step`: its unlearning checks up to that step, the kept check's record
    and weights; None where the run saved no state (it starts its checks afresh)."""
    saved, weights = output_dir / HISTORY_FILE, output_dir / BEST_FILE
    if global_step <= 0 or not (saved.is_file() and weights.is_file()):
        return None
    from safetensors.torch import load_file

    record = json.loads(saved.read_text(encoding="utf-8"))
    # Checks after the checkpoint are dropped (the resumed run repeats them); the kept one stays kept even
    # if it came after the checkpoint: its weights are on disk.
    unlearning = [r for r in record["history"] if r.get("stop_phase") not in REDONE_PHASES]
    best = next(
        (r for r in unlearning if r["step"] == record.get("best_step")), record.get("best")
    )  # "best": the record itself, as runs before 2026-12-02's screening wrote it
    history = [r for r in unlearning if r["step"] <= global_step]
    return history, best, load_file(str(weights))
