"""`--stop_repair_anchors` (`llm_unlearn/core/repair.py`): the repair also trains on text the target wrote."""

from __future__ import annotations

import itertools
import json
import logging
from types import SimpleNamespace

import pytest
import torch

from llm_unlearn.cli import main
from llm_unlearn.cli.parse import parse_config
from llm_unlearn.core.repair import ANCHOR_FILE, RetainRepair, anchor_loss, sample_anchors
from llm_unlearn.data.qa import QACollator, QADataset, load_split, pad_id
from llm_unlearn.models.loading import load_model, load_tokenizer
from llm_unlearn.runs.options import ConfigError


def test_anchors_need_the_repair_and_a_valid_count():
    with pytest.raises(
        ConfigError, match="--stop_repair_anchors are trained on by --stop_repair: pass --stop_repair"
    ):
        parse_config(["--auto", "--output_dir", "x", "--stop_repair", "false", "--stop_repair_anchors", "8"])
    assert parse_config(["--auto", "--output_dir", "x", "--stop_repair_anchors", "8"])[
        2
    ].stop_repair  # --auto repairs
    for option, value in (("stop_repair_anchors", "-1"), ("stop_repair_anchor_length", "0")):
        with pytest.raises(ConfigError, match=option):
            parse_config(["--auto", "--output_dir", "x", "--stop_repair", "true", f"--{option}", value])
    config = parse_config(["--auto", "--output_dir", "x", "--stop_repair", "true"])[2]
    assert config.stop_repair_anchors == 0 and config.stop_repair_anchor_length == 64


def test_sampled_anchors_are_seeded_masked_after_their_end_and_leave_the_global_rng_alone(micro_models):
    model, tokenizer = load_model(str(micro_models["target"])), load_tokenizer(str(micro_models["target"]))
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    anchors = sample_anchors(model, tokenizer, 40, 12, seed=0)
    assert torch.equal(torch.rand(3), expected_next), "sampling must not move the trainer's RNG"
    ids, labels = anchors["input_ids"], anchors["labels"]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    assert ids.shape == labels.shape == (40, 13) and (ids[:, 0] == start).all()
    end = tokenizer.eos_token_id
    for row, lab in zip(ids.tolist(), labels.tolist()):
        ends = [j for j in range(1, len(row)) if row[j] == end]
        cut = ends[0] + 1 if ends else len(row)
        assert lab[:cut] == row[:cut] and all(v == -100 for v in lab[cut:])  # the first EOS is kept
    assert len({tuple(r) for r in ids.tolist()}) > 1, "sampled, not greedy"
    again = sample_anchors(model, tokenizer, 40, 12, seed=0)
    assert torch.equal(again["input_ids"], ids)
    # Batches of 32 are seeded on their own: the first 32 texts do not depend on how many are asked for.
    assert torch.equal(sample_anchors(model, tokenizer, 32, 12, seed=0)["input_ids"], ids[:32])
    assert not torch.equal(sample_anchors(model, tokenizer, 40, 12, seed=1)["input_ids"], ids)


def test_anchor_loss_is_the_token_weighted_mean_nll(micro_models):
    model, tokenizer = load_model(str(micro_models["target"])), load_tokenizer(str(micro_models["target"]))
    anchors = sample_anchors(model, tokenizer, 5, 10, seed=3)
    anchors["labels"][0, 4:] = -100  # texts of different lengths weigh by their tokens
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in zip(anchors["input_ids"], anchors["labels"]):
            logp = torch.log_softmax(model(input_ids=ids[None]).logits[0, :-1].double(), -1)
            for j, y in enumerate(labels[1:].tolist()):
                if y != -100:
                    total -= float(logp[j, y])
                    count += 1
    assert anchor_loss(model, anchors, batch_size=2) == pytest.approx(total / count, rel=1e-4)


def _repairer(micro_models, micro_world, **overrides):
    tokenizer = load_tokenizer(str(micro_models["target"]))
    rows = load_split("retain90", data_dir=micro_world)
    dataset = QADataset(rows, tokenizer, prompt_format="chat_template", max_length=256)
    config = dict(stop_repair_lr=1e-3, stop_repair_interval=2, stop_repair_max_steps=6, stop_repair_tolerance=0.1,
                  retain_batch_size=None, per_device_train_batch_size=4, seed=0, stop_repair_anchors=8,
                  stop_repair_anchor_length=8) | overrides  # fmt: skip
    return RetainRepair(dataset, QACollator(pad_id(tokenizer)), SimpleNamespace(**config)), tokenizer


def test_the_anchors_are_written_once_and_a_resumed_run_reads_them_back(
    micro_models, micro_world, tmp_path, caplog
):
    model = load_model(str(micro_models["target"]))
    repair, tokenizer = _repairer(micro_models, micro_world)
    repair.begin(model, tokenizer, tmp_path, resumed=False)
    assert (tmp_path / ANCHOR_FILE).is_file() and repair.anchors["input_ids"].shape == (8, 9)
    assert repair.anchor_target == pytest.approx(1.1 * anchor_loss(model, repair.anchors))
    # Resumed: the model has changed, the anchors and their target must not.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    resumed, _ = _repairer(micro_models, micro_world)
    resumed.begin(model, tokenizer, tmp_path, resumed=True)
    assert torch.equal(resumed.anchors["labels"], repair.anchors["labels"])
    assert resumed.anchor_target == pytest.approx(repair.anchor_target)
    # Resumed from a folder without them (written before the option was on): a warning, retain-only repair.
    lost, _ = _repairer(micro_models, micro_world)
    with caplog.at_level(logging.WARNING, logger="llm_unlearn"):
        lost.begin(model, tokenizer, tmp_path / "elsewhere", resumed=True)
    assert lost.anchors is None and "has no repair_anchors.safetensors" in caplog.text
    off, _ = _repairer(micro_models, micro_world, stop_repair_anchors=0)
    off.begin(model, tokenizer, tmp_path / "off", resumed=False)
    assert off.anchors is None and not (tmp_path / "off").exists()


def test_the_repair_goes_on_until_the_anchor_loss_is_back_too(micro_models, micro_world, tmp_path):
    model = load_model(str(micro_models["target"]))
    repair, tokenizer = _repairer(micro_models, micro_world)
    repair.begin(model, tokenizer, tmp_path, resumed=False)
    seen = []
    # The recall is met at once; an anchor target no loss reaches keeps it training to max_steps ...
    repair.anchor_target = 0.0
    assert repair.run(model, lambda: (1.0, 0.0), 0.5, lambda *a, **k: seen.append(a)) == 6
    assert [a[0] for a in seen] == [2, 4, 6] and all(a[4] > 0 for a in seen), "the anchor loss is reported"
    # ... and one already met stops it at the first check.
    repair.anchor_target = float("inf")
    assert repair.run(model, lambda: (1.0, 0.0), 0.5, lambda *a, **k: None) == 2
    # Training on the anchors lowers their loss (the retain batches alone would not be asked to).
    before = anchor_loss(model, repair.anchors)
    repair.anchor_target = 0.0
    repair.run(model, lambda: (1.0, 0.0), 0.5, lambda *a, **k: None)
    assert anchor_loss(model, repair.anchors) < before


def test_auto_with_anchors_end_to_end_records_them(micro_models, micro_world, tmp_path, monkeypatch):
    # The first check's recall, the kept weights', then met: the anchors decide when the repair ends.
    recalls = itertools.chain([0.9, 0.5], itertools.repeat(0.95))
    monkeypatch.setattr("llm_unlearn.core.stop_checks.CheckScorer.recall", lambda self, model: next(recalls))
    out = tmp_path / "anchored"
    argv = ["unlearn", "--auto", "--stop_repair", "true", "--stop_repair_anchors", "8", "--stop_repair_anchor_length",
            "8", "--model_name_or_path", str(micro_models["target"]), "--data_dir", str(micro_world),
            "--forget_split", "forget10", "--output_dir", str(out), "--eval_batch_size", "64", "--max_new_tokens", "8",
            "--disable_tqdm", "true", "--do_final_eval", "false", "--stop_repair_lr", "1e-3", "--stop_repair_max_steps", "20"]  # fmt: skip
    from llm_unlearn.pipeline import unlearn as pipeline

    drop, seen = pipeline.drop_training_state, []
    monkeypatch.setattr(pipeline, "drop_training_state",
                        lambda o: (seen.append((o / ANCHOR_FILE).is_file()), drop(o)))  # fmt: skip
    assert main(argv) == 0
    assert (
        seen == [True] and not (out / ANCHOR_FILE).exists()
    )  # sampled and kept while training, then dropped
    history = json.loads((out / "stop_rule.json").read_text())["history"]
    repair = [r for r in history if r.get("stop_phase") == "repair" and "stop_repair_anchor_loss" in r]
    assert repair, "every repair check records the anchors' loss and its target"
    assert all(r["stop_repair_anchor_target"] == repair[0]["stop_repair_anchor_target"] for r in repair)
    last = repair[-1]
    met = last["stop_retain_recall"] >= last["stop_repair_target"] and (
        last["stop_repair_anchor_loss"] <= last["stop_repair_anchor_target"]
    )
    assert (last["stop_decision"] == "repaired") == met


_SHARED_SCRIPT = """
import json, sys, torch
torch.distributed.init_process_group("gloo")
from llm_unlearn.core.repair import _shared
rank = torch.distributed.get_rank()
anchors = _shared({"input_ids": torch.full((3, 4), rank), "labels": torch.full((3, 4), -rank)})
open(sys.argv[1] + f"/rank{rank}.json", "w").write(json.dumps({k: v.tolist() for k, v in anchors.items()}))
# Both ranks done before gloo is torn down: a rank that exits while the other is still in the group aborts.
torch.distributed.barrier()
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_every_rank_repairs_on_rank_zeros_anchors(tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "shared.py"
    script.write_text(_SHARED_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script), str(tmp_path)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1] == {"input_ids": [[0] * 4] * 3, "labels": [[0] * 4] * 3}


def test_a_tokenizer_with_no_bos_or_eos_is_one_clear_error(micro_models):
    # The package refuses a tokenizer without EOS before training (data/qa.py); this guards direct use.
    model = load_model(str(micro_models["target"]))
    bare = SimpleNamespace(bos_token_id=None, eos_token_id=None, pad_token_id=0)
    with pytest.raises(
        ValueError, match="samples from the tokenizer's BOS \\(or EOS\\) token.*--stop_repair_anchors 0"
    ):
        sample_anchors(model, bare, 4, 4, seed=0)


def test_a_repair_that_runs_out_of_steps_before_the_anchors_are_back_says_so(caplog):
    from .test_repair import _repair_rule, _ScriptedRepair, _train

    class _Anchored(_ScriptedRepair):
        """Scripted recall met at once; the anchors' NLL stays at 5 against a target of 1."""

        anchors, anchor_target = {"input_ids": torch.zeros(1, 1)}, 1.0

        def _anchor_loss(self, model):
            return 5.0

        def run(self, model, recall, target, on_check):
            value, seconds = recall()
            on_check(self.max_steps, value, 0.5, seconds, 5.0)
            return self.max_steps

    rule, records = _repair_rule([0.8, 0.5, 0.9], max_steps=10)
    rule.repair = _Anchored(interval=5, max_steps=10)
    with caplog.at_level(logging.WARNING, logger="llm_unlearn"):
        _train(rule, torch.nn.Linear(1, 1, bias=False), steps=5)
    repair = [r for r in records if r.get("stop_phase") == "repair"]
    # Recall 0.5 then 0.9 (target 0.68): met, yet "repair" while the anchors are above their target.
    assert [(r["stop_retain_recall"], r["stop_decision"]) for r in repair[:2]] == [
        (0.5, "repair"),
        (0.9, "repair"),
    ]
    assert repair[0]["stop_repair_anchor_loss"] == 5.0 and repair[0]["stop_repair_anchor_target"] == 1.0
    assert "the anchor texts' NLL is 5.000, above its target 1.000" in caplog.text
