"""Bad input on the CLI, as one matrix: one line naming the problem and the fix, a non-zero exit, no
traceback (unless `--debug`), no partial output, nothing saved before lost. `pytest tests/test_bad_input.py`

Each case builds its own broken input in a fresh folder (a copy of the micro world, micro models),
runs `llm-unlearn` in-process and checks:
- exit code 2 (130 for an interrupt) and exactly one `error: ` line, the last on stderr, matching the case;
- no `Traceback` anywhere on stderr;
- every file that existed before the command is still there, byte for byte (cases that resume or fail
  a run of their own list the files they may change);
- the run directory gets no weights (`model.safetensors`), and is not created at all when the input
  could be checked before any work.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from llm_unlearn.cli import main


@dataclass
class Env:
    tmp: Path
    world: Path
    models: dict
    out: Path

    @property
    def target(self) -> Path:
        return Path(self.models["target"])

    @property
    def retain_model(self) -> Path:
        return Path(self.models["retain"]["forget10"])

    def unlearn(self, *extra: str, **replace: str) -> list[str]:
        options = {
            "model_name_or_path": str(self.target), "data_dir": str(self.world), "forget_split": "forget10",
            "output_dir": str(self.out), "max_steps": "1", "per_device_train_batch_size": "4",
            "learning_rate": "1e-2", "use_cpu": "true", "reference_model": str(self.retain_model),
            "eval_batch_size": "64", "max_new_tokens": "4", "disable_tqdm": "true",
        } | replace  # fmt: skip
        return ["unlearn", *[x for k, v in options.items() for x in (f"--{k}", v)], *extra]

    def recipe(self, text: str) -> list[str]:
        path = self.tmp / "recipe.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")  # "\udce9": the byte 0xe9
        return ["unlearn", "--config", str(path), "--output_dir", str(self.out)]

    def rows(self, split: str) -> list[dict]:
        return [json.loads(line) for line in (self.world / f"{split}.json").read_text().splitlines() if line]

    def write_rows(self, split: str, rows: list) -> None:
        (self.world / f"{split}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def model_copy(self, name: str) -> Path:
        dst = self.tmp / name
        shutil.copytree(self.target, dst)
        return dst

    def status(self, run: Path, **record) -> Path:
        run.mkdir(parents=True, exist_ok=True)
        (run / "status.json").write_text(json.dumps(record))
        return run


@dataclass
class Case:
    id: str
    argv: Callable[[Env], list[str]]
    pattern: str
    setup: Callable[[Env], None] = lambda env: None
    code: int = 2
    creates_run: bool = False  # fails during the run: the run directory exists, marked failed
    may_change: tuple[str, ...] = ()  # files (relative to tmp) the failure may legitimately rewrite
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    after: Callable[[Env], None] | None = None
    extra: dict = field(default_factory=dict)


def _drop(env: Env, name: str) -> None:
    (env.world / name).unlink()


def _nan_method(env: Env) -> None:
    (env.tmp / "nan_method_pkg.py").write_text(
        "from llm_unlearn.methods import Term\n"
        "def nan_method(model, forget, retain, ctx):\n"
        "    loss = model(input_ids=forget['input_ids']).logits.mean() * float('nan')\n"
        "    return {'forget': Term(loss, stream='forget')}\n"
    )


def _nan_model(env: Env) -> None:
    from safetensors.torch import load_file, save_file

    folder = env.model_copy("nan_model")
    weights = load_file(folder / "model.safetensors")
    weights["model.embed_tokens.weight"][0, 0] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def _after_diverged(env: Env) -> None:
    from llm_unlearn.runs.folder import RunError, require_complete

    # Resuming would diverge again: the refusal of a later command says to start anew, not to resume.
    with pytest.raises(
        RunError, match=r"is failed: NonFiniteLossError: .*start a new run with a lower --learning_rate"
    ):
        require_complete(env.out, "push")
    # Its log is strict JSON (jq, JavaScript read it): a diverged value is null, not a bare NaN or Infinity.
    rows = [
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in train_log.jsonl"))
        for line in (env.out / "train_log.jsonl").read_text().splitlines()
    ]
    assert any(v is None for r in rows for v in r.values())


def _without(argv: list[str], option: str) -> list[str]:
    i = argv.index(option)
    return argv[:i] + argv[i + 2 :]


def _custom_code_model(env: Env) -> None:
    folder = env.model_copy("custom")
    config = json.loads((folder / "config.json").read_text())
    config |= {
        "model_type": "customnet",
        "auto_map": {"AutoConfig": "custom.Config", "AutoModelForCausalLM": "custom.Model"},
    }
    (folder / "config.json").write_text(json.dumps(config))


def _no_bitsandbytes(monkeypatch) -> None:
    from transformers import Trainer

    def create_optimizer(self, *args, **kwargs):  # as transformers words it where the package is missing
        raise ImportError(
            "You need to install `bitsandbytes` in order to use bitsandbytes optimizers: `pip install -U bitsandbytes`"
        )

    monkeypatch.setattr(Trainer, "create_optimizer", create_optimizer)


def _pickle_only(env: Env) -> None:
    import torch
    from safetensors.torch import load_file

    model = env.model_copy("pickled")
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()


def _weights_cut_short(env: Env) -> None:
    weights = env.model_copy("cut") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a full disk or a killed copy


def _no_eos_tokenizer(env: Env) -> None:
    model = env.model_copy("no_eos")
    config = json.loads((model / "tokenizer_config.json").read_text())
    for key in ("eos_token", "pad_token"):
        config[key] = None
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    special = model / "special_tokens_map.json"
    if special.is_file():
        special.write_text(json.dumps({k: v for k, v in json.loads(special.read_text()).items()
                                       if k not in ("eos_token", "pad_token")}))  # fmt: skip


def _disk_full_at_checkpoint_4(monkeypatch) -> None:
    from transformers import Trainer

    save_rng_state = Trainer._save_rng_state

    def full(self, output_dir):
        if self.state.global_step == 4:
            raise OSError(errno.ENOSPC, "No space left on device", os.path.join(output_dir, "rng_state.pth"))
        return save_rng_state(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", full)


def _after_disk_full(env: Env) -> None:
    # The complete checkpoint before the failed save is kept (never rotated away), and the same
    # command, with space again, resumes from it and finishes.
    assert json.loads((env.out / "status.json").read_text())["state"] == "failed"
    assert (env.out / "checkpoint-2" / "llm_unlearn_checkpoint.json").is_file()
    assert main(_checkpointed(env)) == 0
    assert json.loads((env.out / "status.json").read_text())["state"] == "complete"


def _checkpointed(env: Env) -> list[str]:
    return env.unlearn("--do_final_eval", "false", max_steps="6", save_strategy="steps", save_steps="2",
                       per_device_train_batch_size="2")  # fmt: skip


def _raise(error: type[BaseException]):
    def raising(*args, **kwargs):
        raise error

    return raising


def _interrupt_at_step_2(monkeypatch) -> None:
    from llm_unlearn.core.trainer import UnlearnTrainer

    training_step = UnlearnTrainer.training_step

    def interrupted(self, *args, **kwargs):
        if self.state.global_step == 2:
            raise KeyboardInterrupt
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(UnlearnTrainer, "training_step", interrupted)


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has it (pids are not reused this soon)


RANGES = [
    ("per_device_train_batch_size", "0", "at least 1"),
    ("retain_batch_size", "0", "at least 1"),
    ("gradient_accumulation_steps", "0", "at least 1"),
    ("num_train_epochs", "-2", "a positive number"),
    ("learning_rate", "-1", "a positive number"),
    ("learning_rate", "nan", "a positive number"),
    ("forget_weight", "-0.5", "a finite number >= 0"),
    ("retain_weight", "inf", "a finite number >= 0"),
    ("weight_decay", "-0.1", "a finite number >= 0"),
    ("max_grad_norm", "-1", ">= 0"),
    ("gen_interval", "0", "at least 1"),
    ("gen_gamma", "1.0", r"in \[0, 1\)"),
    ("warmup_steps", "-3", ">= 0"),
    ("eval_batch_size", "0", "at least 1"),
    ("max_new_tokens", "0", "at least 1"),
    ("max_length", "1", "at least 2"),
    ("max_steps", "0", "-1 .* or at least 1"),
    ("logging_steps", "0", "> 0"),
    ("adam_beta2", "1.0", r"in \[0, 1\)"),
    ("adam_epsilon", "0", "> 0"),
    ("seed", "-1", r"in \[0, 2\*\*32\)"),
    ("save_total_limit", "0", "at least 1"),
    ("lora_r", "0", "at least 1"),
    ("lora_dropout", "1.0", r"in \[0, 1\)"),
    ("stop_patience", "0", "at least 1 check"),
    ("stop_retain_tolerance", "0", "a positive fraction"),
    ("stop_heldout_fraction", "1.0", r"in \[0, 1\)"),
    ("forget_token_max_df", "1.5", r"in \[0, 1\]"),
    ("stop_check_interval", "-1", ">= 0"),
    ("npo_beta", "0", "a positive number"),
    ("simnpo_beta", "-1", "a positive number"),
    ("simnpo_gamma", "-0.5", "a finite number >= 0"),
    ("dpo_beta", "inf", "a positive number"),
    ("rmu_layer", "-1", ">= 0"),
    ("rmu_coefficient", "0", "a positive number"),
    ("undial_strength", "nan", "a positive number"),
    ("gc_chunks", "1", "at least 2"),
    ("gc_weight", "-1", "a finite number >= 0"),
]

CASES = [
    # ---- files: missing, empty, corrupt, wrong fields, wrong types
    Case("data_dir_missing", lambda e: e.unlearn(data_dir=str(e.tmp / "nope")), r"data dir .*nope does not exist; create one"),
    Case("split_file_missing", lambda e: e.unlearn(), r"retain90\.json not found; splits in", setup=lambda e: _drop(e, "retain90.json")),
    Case("split_file_empty", lambda e: e.unlearn(), r"forget10\.json is empty; pick a split", setup=lambda e: (e.world / "forget10.json").write_text("")),
    Case("split_file_corrupt", lambda e: e.unlearn(), r"forget10\.json:1 is not valid JSON .*fix or regenerate",
         setup=lambda e: (e.world / "forget10.json").write_text('{"question": "Who', encoding="utf-8")),
    Case("split_row_missing_field", lambda e: e.unlearn(), r"row 4 lacks field\(s\) answer; every row needs question, answer",
         setup=lambda e: e.write_rows("forget10", [r if i != 3 else {"question": r["question"]} for i, r in enumerate(e.rows("forget10"))])),
    Case("split_row_wrong_type", lambda e: e.unlearn(), r"row 1 field answer is an int, not a string",
         setup=lambda e: e.write_rows("forget10", [{**r, "answer": 42} if i == 0 else r for i, r in enumerate(e.rows("forget10"))])),
    Case("split_row_not_an_object", lambda e: e.unlearn(), r"row 2 is a list, not an object",
         setup=lambda e: (e.world / "forget10.json").write_text(json.dumps(e.rows("forget10")[0]) + "\n" + json.dumps([[1, 2]]) + "\n")),
    Case("forget_retain_overlap", lambda e: e.unlearn(), r"share 1 question\(s\) .*use a retain split disjoint",
         setup=lambda e: e.write_rows("retain90", e.rows("retain90") + e.rows("forget10")[:1])),
    Case("recipe_missing", lambda e: ["unlearn", "--config", str(e.tmp / "none.yaml")], r"config file .*none\.yaml not found; pass an existing YAML recipe"),
    Case("recipe_broken_yaml", lambda e: e.recipe("method: graddiff\nlearning_rate: [1e-5\n"), r"not valid YAML .*line \d+.*fix its syntax"),
    Case("recipe_not_a_mapping", lambda e: e.recipe("- graddiff\n- 1e-5\n"), r"must be a flat mapping of key: value"),
    Case("reference_eval_missing", lambda e: e.unlearn(reference_eval=str(e.tmp / "ref.json")), r"reference eval file .*ref\.json does not exist; evaluate the reference first"),
    Case("reference_eval_corrupt", lambda e: e.unlearn(reference_eval=str(e.tmp / "ref.json")), r"ref\.json is not valid JSON .*pass the eval\.json of `llm-unlearn eval`",
         setup=lambda e: (e.tmp / "ref.json").write_text('{"metrics": ')),
    Case("reference_eval_wrong_fields", lambda e: e.unlearn(reference_eval=str(e.tmp / "ref.json")), r"ref\.json has no per-sample forget truth ratios",
         setup=lambda e: (e.tmp / "ref.json").write_text('{"metrics": {"forget_quality": {"value": 1}}, "meta": {}}')),
    # ---- configs: unknown keys, wrong types, out-of-range values (RANGES below), conflicting options
    Case("recipe_unknown_key", lambda e: e.recipe("learnig_rate: 1e-5\n"), r"unknown config key 'learnig_rate' .*did you mean 'learning_rate'"),
    Case("recipe_list_for_a_number", lambda e: e.recipe("per_device_train_batch_size: [1, 2]\n"), r"'per_device_train_batch_size' .* must be a single int, not a list"),
    Case("recipe_text_for_a_number", lambda e: e.recipe("learning_rate: fast\n"), r"--learning_rate.*invalid float value: 'fast'"),
    # A null would reach the code as None (argparse never converts a default); mappings are checked as mappings.
    Case("recipe_null_for_a_number", lambda e: e.recipe("learning_rate: null\n"), r"config key 'learning_rate' .* is empty \(null\); give a number or remove the line"),
    Case("recipe_null_for_a_name", lambda e: e.recipe("method:\n"), r"config key 'method' .* is empty \(null\)"),
    Case("recipe_not_utf8", lambda e: e.recipe("method: graddiff\n# caf\udce9\n"), r"config file .*recipe\.yaml is not UTF-8 text; save the recipe as UTF-8"),
    Case("recipe_mapping_an_int", lambda e: e.recipe("lr_scheduler_kwargs: 5\n"), r"'lr_scheduler_kwargs' .* must be a mapping of name: value, not a int"),
    Case("recipe_mapping_not_json", lambda e: e.recipe("lr_scheduler_kwargs: '{bad'\n"), r"'lr_scheduler_kwargs' .* is not a JSON object"),
    Case("option_mapping_not_json", lambda e: e.unlearn(lr_scheduler_kwargs="{bad"), r"--lr_scheduler_kwargs is not a JSON object"),
    Case("scheduler_option_not_taken", lambda e: e.recipe("lr_scheduler_kwargs: {min_lr: 0.0}\n"), r"--lr_scheduler_type linear with --lr_scheduler_kwargs .*unexpected keyword argument 'min_lr'; fix the scheduler options"),
    Case("optim_args_not_pairs", lambda e: e.unlearn(optim_args="5"), r"--optim_args 5 is out of range; it must be comma-separated name=value pairs"),
    Case("recipe_float_for_an_int", lambda e: e.recipe("gradient_accumulation_steps: 2.5\n"), r"config key 'gradient_accumulation_steps' in .*recipe\.yaml: .*--gradient_accumulation_steps.*invalid int value: '2\.5'"),
    Case("option_unknown", lambda e: e.unlearn("--lerning_rate", "1"), r"unknown option --lerning_rate \(did you mean 'learning_rate'\?\); see `llm-unlearn unlearn --help`"),
    Case("option_text_for_a_number", lambda e: e.unlearn(num_train_epochs="many"), r"--num_train_epochs.*invalid float value: 'many'"),
    Case("option_not_a_bool", lambda e: e.unlearn(use_lora="maybe"), r"--use_lora.*maybe"),
    Case("option_missing_value", lambda e: ["unlearn", "--config"], r"--config needs a YAML file path"),
    Case("method_unknown", lambda e: e.unlearn(method="gradif"), r"unknown method 'gradif'; did you mean 'graddiff'\?"),
    Case("seed_beyond_32_bits", lambda e: e.unlearn(seed=str(2**64)), r"--seed 18446744073709551616 is out of range; it must be in \[0, 2\*\*32\)"),
    Case("dataset_id_offline", lambda e: _without(e.unlearn("--dataset_name", "nobody/no-such-dataset"), "--data_dir"),
         r"Couldn't reach 'nobody/no-such-dataset' on the Hub .*check the id and the network \(HF_HUB_OFFLINE=1 forbids fetching\)",
         patch=lambda mp: mp.setenv("HF_HUB_OFFLINE", "1")),
    Case("probe_under_two_processes", lambda e: ["probe", str(e.target), "--out", str(e.tmp / "p.json")],
         r"llm-unlearn probe runs in one process; start it without torchrun", patch=lambda mp: mp.setenv("WORLD_SIZE", "2")),
    Case("distill_under_two_processes", lambda e: ["distill", str(e.target), "--alpha", "0.3", "--output_dir", str(e.tmp / "d")],
         r"llm-unlearn distill runs in one process; start it without torchrun", patch=lambda mp: mp.setenv("WORLD_SIZE", "2")),
    # Each of these ran on every rank, into the same files (report, world), or pushed once per rank.
    *[Case(f"{name}_under_two_processes", argv, rf"llm-unlearn {name} runs in one process; start it without torchrun",
           patch=lambda mp: mp.setenv("WORLD_SIZE", "2"))
      for name, argv in (("report", lambda e: ["report", str(e.tmp), "--out", str(e.tmp / "rep")]),
                         ("push", lambda e: ["push", str(e.tmp), "--repo_id", "a/b", "--dry_run", "--output_dir", str(e.tmp / "s")]),
                         ("world", lambda e: ["world", "--size", "micro", "--out", str(e.tmp / "w")]),
                         ("demo", lambda e: ["demo", "--size", "micro", "--output_dir", str(e.tmp / "d")]),
                         ("bench", lambda e: ["bench", "--out", str(e.tmp / "b.json")]))],
    Case("method_in_capitals", lambda e: e.unlearn(method="NPO"), r"unknown method 'NPO'; did you mean 'npo'\?"),
    Case("combine_unknown", lambda e: e.unlearn(combine="average"), r"unknown combine 'average'"),
    Case("prompt_format_unknown", lambda e: e.unlearn(prompt_format="chat_templat"), r"unknown prompt_format 'chat_templat' \(did you mean 'chat_template'\?\)"),
    Case("torch_dtype_unknown", lambda e: e.unlearn(torch_dtype="fp8"), r"unknown torch_dtype 'fp8'; choose float32, bfloat16, float16"),
    Case("conflict_fp16_with_normalized", lambda e: e.unlearn(method="ngdiff", fp16="true"), r"normalized combination does not work with fp16"),
    Case("conflict_gen_with_plateau_schedule", lambda e: e.unlearn(gen="true", lr_scheduler_type="reduce_lr_on_plateau", eval_strategy="epoch"), r"--gen composes with multiplier schedules"),
    Case("method_knob_beyond_the_model", lambda e: e.unlearn(method="rmu", rmu_layer="99"), r"--rmu_layer 99 is out of range for a model of \d+ decoder layer"),
    Case("stop_rule_unknown", lambda e: e.unlearn(stop_rule="indistinguishible"), r"unknown stop_rule 'indistinguishible' \(did you mean 'indistinguishable'\?\)"),
    Case("stop_rule_without_holdout", lambda e: e.unlearn("--auto"), r"the stop rule \(--auto, --stop_rule\) needs a holdout split: .*holdout10\.json not found.*--stop_holdout_split",
         setup=lambda e: _drop(e, "holdout10.json")),
    Case("stop_rule_holdout_size_mismatch", lambda e: e.unlearn("--auto"), r"holdout split holdout10 has \d+ examples but forget split forget10 has \d+",
         setup=lambda e: e.write_rows("holdout10", e.rows("holdout10")[:-1])),
    Case("stop_rule_holdout_overlaps_forget", lambda e: e.unlearn("--auto"), r"holdout split holdout10 shares 1 question\(s\) with forget10",
         setup=lambda e: e.write_rows("holdout10", e.rows("holdout10")[:-1] + e.rows("forget10")[:1])),
    Case("stop_rule_holdout_overlaps_retain", lambda e: e.unlearn("--auto"), r"holdout split holdout10 shares 1 question\(s\) with the retain split",
         setup=lambda e: e.write_rows("holdout10", e.rows("holdout10")[:-1] + e.rows("retain90")[:1])),
    Case("stop_lr_damping_without_the_rule", lambda e: e.unlearn("--stop_lr_damping", "true"),
         r"--stop_lr_damping scales the lr by the stop rule's gap: pass --stop_rule indistinguishable"),
    Case("stop_utility_tolerance_without_the_rule", lambda e: e.unlearn("--stop_utility_tolerance", "0.2"),
         r"--stop_utility_tolerance guards the stop rule's checks: pass --stop_rule indistinguishable"),
    Case("stop_repair_without_the_guard", lambda e: e.unlearn("--stop_repair", "true"),
         r"--stop_repair repairs until the retain-recall guard is met: pass --auto"),
    Case("stop_repair_guard_off", lambda e: e.unlearn("--auto", "--stop_repair", "true", "--stop_retain_recall_tolerance", "0"),
         r"--stop_repair repairs until the retain-recall guard is met"),
    Case("stop_repair_lr_zero", lambda e: e.unlearn("--auto", "--stop_repair", "true", "--stop_repair_lr", "0"),
         r"stop_repair_lr.*a positive learning rate"),
    Case("forget_token_df_split_without_max_df", lambda e: e.unlearn("--forget_token_df_split", "retain90"),
         r"--forget_token_df_split sets where --forget_token_max_df counts token frequency: pass --forget_token_max_df"),
    Case("forget_token_df_split_shares_forget_questions",
         lambda e: e.unlearn("--forget_token_max_df", "0", "--forget_token_df_split", "full"),
         r"--forget_token_df_split full shares \d+ question\(s\) with forget split forget10 .*name a split without the forget set"),
    Case("forget_token_df_split_empty", lambda e: e.unlearn("--forget_token_max_df", "0", "--forget_token_df_split", "holdout10"),
         r"holdout10\.json is empty; pick a split with at least one example",
         setup=lambda e: (e.world / "holdout10.json").write_text("[]")),
    Case("forget_token_df_split_missing", lambda e: e.unlearn("--forget_token_max_df", "0", "--forget_token_df_split", "nope"),
         r"nope\.json not found; splits in"),
    Case("stop_utility_tolerance_out_of_range", lambda e: e.unlearn("--auto", "--stop_utility_tolerance", "1.5"),
         r"stop_utility_tolerance.*in \[0, 1\)"),
    Case("stop_utility_guard_without_world_facts", lambda e: e.unlearn("--stop_rule", "indistinguishable", "--stop_utility_tolerance", "0.2"),
         r"--stop_utility_tolerance estimates model utility .*world_facts_perturbed\.json not found.*pass --stop_utility_tolerance 0",
         setup=lambda e: _drop(e, "world_facts_perturbed.json")),
    Case("stop_truth_ratio_without_holdout_perturbed", lambda e: e.unlearn("--auto", "--stop_statistic", "truth_ratio"),
         r"the truth_ratio stop statistic needs .*holdout10_perturbed\.json not found.*pass --stop_statistic truth_ratio_constructed",
         setup=lambda e: _drop(e, "holdout10_perturbed.json")),
    Case("stop_truth_ratio_holdout_perturbed_of_other_questions", lambda e: e.unlearn("--auto"),
         r"holdout10_perturbed\.json row \d+ asks .* \(that question is not in .*holdout10\.json\); regenerate .*or pass --stop_statistic truth_ratio_constructed",
         setup=lambda e: e.write_rows("holdout10_perturbed", e.rows("holdout10_perturbed")[:-1] + e.rows("forget10_perturbed")[:1])),
    Case("stop_truth_ratio_forget_perturbed_lacks_a_question", lambda e: e.unlearn("--auto"),
         r"forget10_perturbed\.json row 1 asks .* \(that question is elsewhere in .*forget10\.json\); regenerate .*\(same questions, same order\)$",
         setup=lambda e: e.write_rows("forget10_perturbed", e.rows("forget10_perturbed")[1:])),
    Case("holdout_answer_longer_than_max_length", lambda e: e.unlearn(max_length="64"),
         r"holdout10\.json: example of \d+ tokens exceeds max_length=64 .*or train with --do_final_eval false",
         setup=lambda e: [e.write_rows(n, [{**r, "answer": " ".join(["word"] * 80)} if i == 0 else r
                                           for i, r in enumerate(e.rows(n))]) for n in ("holdout10", "holdout10_perturbed")]),
    Case("eval_split_missing_for_a_training_run", lambda e: e.unlearn(),
         r"world_facts_perturbed\.json not found; .*the final evaluation reads it: add it, or train with --do_final_eval false",
         setup=lambda e: _drop(e, "world_facts_perturbed.json")),
    # Found before training: after it, the run was trained and its evaluation refused the --max_length fix.
    Case("eval_split_answer_longer_than_max_length", lambda e: e.unlearn(max_length="64"),
         r"retain_perturbed\.json: example of \d+ tokens exceeds max_length=64 .*raise --max_length to at least \d+, or train with --do_final_eval false",
         setup=lambda e: e.write_rows("retain_perturbed", [{**r, "perturbed_answer": [" ".join(["word"] * 80)]} if i == 3 else r
                                                           for i, r in enumerate(e.rows("retain_perturbed"))])),
    # Scored as the holdout's rows, even without the final evaluation (which checks its own companions).
    Case("stop_truth_ratio_holdout_perturbed_rows_twice", lambda e: e.unlearn("--auto", do_final_eval="false"),
         r"holdout10_perturbed\.json row 2 asks .* where .*holdout10\.json asks",
         setup=lambda e: e.write_rows("holdout10_perturbed", [r for r in e.rows("holdout10_perturbed") for _ in (0, 1)])),
    Case("stop_truth_ratio_holdout_perturbed_other_answers", lambda e: e.unlearn("--auto", do_final_eval="false"),
         r"holdout10_perturbed\.json row 1 answers 'Totally unrelated\.' where .*holdout10\.json answers",
         setup=lambda e: e.write_rows("holdout10_perturbed", [{**r, "answer": "Totally unrelated."} for r in e.rows("holdout10_perturbed")])),
    Case("conflict_bf16_and_fp16", lambda e: e.unlearn(bf16="true", fp16="true"), r"fp16.*bf16|bf16.*fp16"),
    # ---- models: missing, not a model, pickle-only, tokenizer without eos or pad
    Case("model_path_missing", lambda e: e.unlearn(model_name_or_path=str(e.tmp / "no-model")), r"model path .*no-model does not exist"),
    Case("model_bare_name_offline", lambda e: e.unlearn(model_name_or_path="nope"), r"no folder 'nope' here, and fetching it as a Hub id failed"),
    Case("model_folder_without_config", lambda e: e.unlearn(model_name_or_path=str(e.tmp)), r"is not a model folder \(no config\.json\)"),
    Case("model_weights_cut_short", lambda e: e.unlearn(model_name_or_path=str(e.tmp / "cut")), r"cut/model\.safetensors is damaged \(.*\): it is cut short or not a safetensors file", setup=_weights_cut_short),
    Case("model_pickle_only", lambda e: e.unlearn(model_name_or_path=str(e.tmp / "pickled")), r"has no safetensors weights; convert them, or pass --allow_pickle", setup=_pickle_only),
    Case("tokenizer_without_eos_or_pad", lambda e: e.unlearn(model_name_or_path=str(e.tmp / "no_eos")), r"has no eos token \(nor a pad token .*set eos_token", setup=_no_eos_tokenizer),
    Case("reference_model_missing", lambda e: e.unlearn(reference_model=str(e.tmp / "no-ref")), r"reference model .*no-ref does not exist"),
    # ---- runs: the output dir, a full disk, a non-finite loss, an interrupt, runs that did not finish
    Case("output_dir_not_ours", lambda e: e.unlearn(), r"exists and is not an llm-unlearn run; choose a new --output_dir",
         setup=lambda e: (e.out.mkdir(), (e.out / "notes.txt").write_text("mine"))),
    Case("output_dir_is_a_file", lambda e: e.unlearn(), r"output dir .* is a file; choose a new --output_dir", setup=lambda e: e.out.write_text("x")),
    Case("output_dir_holds_a_complete_run", lambda e: e.unlearn(), r"holds a complete run; choose a new --output_dir",
         setup=lambda e: e.status(e.out, state="complete")),
    Case("output_dir_in_use", lambda e: e.unlearn(), r"in use by a running process \(\d+\); wait for it",
         setup=lambda e: e.status(e.out, state="running", pid=os.getpid(), host=socket.gethostname())),
    Case("output_dir_status_corrupt", lambda e: e.unlearn(), r"status\.json is not a status file of llm-unlearn",
         setup=lambda e: (e.out.mkdir(), (e.out / "status.json").write_text("[1, 2"))),
    Case("non_finite_loss", lambda e: e.unlearn(method="nan_method_pkg.nan_method"), r"non-finite at step 0; at the first step, before any update: check the data",
         setup=_nan_method, creates_run=True),
    # Every logged loss finite, the last update divergent: the weights are checked before they are saved.
    Case("weights_diverge", lambda e: e.unlearn(optim="sgd", learning_rate="1e30", max_steps="2"),
         r"the weights became NaN or inf by step 2 \(.*\), so the model was not saved; lower --learning_rate", creates_run=True,
         after=_after_diverged),
    Case("model_weights_not_finite", lambda e: e.unlearn(model_name_or_path=str(e.tmp / "nan_model")),
         r"the model's weights hold NaN or inf before training \(model\.embed_tokens\.weight\); check --model_name_or_path",
         setup=_nan_model, creates_run=True),
    # The same question, spaced or cased otherwise, is still the forget set's.
    Case("retain_asks_a_forget_question_respelled", lambda e: e.unlearn(),
         r"forget split forget10 and retain split retain90 share 1 question\(s\)",
         setup=lambda e: e.write_rows("retain90", e.rows("retain90") + [
             e.rows("forget10")[0] | {"question": e.rows("forget10")[0]["question"].upper() + "  "}])),
    # An empty path is the current folder to pathlib: named as empty, not searched.
    Case("data_dir_empty", lambda e: e.unlearn(data_dir=""), r"--data_dir is empty; pass the folder of TOFU-format split files"),
    Case("forget_split_empty", lambda e: e.unlearn(forget_split=" "), r"--forget_split is empty; name the split to forget"),
    Case("config_empty", lambda e: ["unlearn", "--config", "", "--output_dir", str(e.out)], r"--config is empty; pass a YAML recipe"),
    # A file where a folder goes (and the reverse): named as such, before any work.
    Case("data_dir_is_a_file", lambda e: e.unlearn(data_dir=str(e.world / "forget10.json")), r"data dir .*forget10\.json is a file; pass the folder that holds the split files"),
    Case("model_is_a_file", lambda e: e.unlearn(model_name_or_path=str(e.world / "forget10.json")), r"forget10\.json is a file; pass the folder"),
    Case("reference_model_is_a_file", lambda e: e.unlearn(reference_model=str(e.world / "forget10.json")), r"reference model .* is a file; pass the model folder \(an evaluated reference's eval\.json goes to --reference_eval\)"),
    Case("eval_output_dir_is_a_file", lambda e: ["eval", "--model_name_or_path", str(e.target), "--data_dir", str(e.world), "--reference_model", str(e.retain_model), "--output_dir", str(e.tmp / "afile")],
         r"--output_dir .*afile is a file; pass a folder for the eval\.json", setup=lambda e: (e.tmp / "afile").write_text("x")),
    Case("report_out_is_a_file", lambda e: ["report", str(e.world), "--out", str(e.tmp / "afile")], r"--out .*afile is a file; pass a folder for report\.md",
         setup=lambda e: (e.tmp / "afile").write_text("x")),
    Case("bench_out_is_a_folder", lambda e: ["bench", "--out", str(e.world)], r"--out .* is a folder; pass the JSON file to write"),
    Case("bench_eval_option_without_eval", lambda e: ["bench", "--size", "micro", "--out", str(e.tmp / "b.json")], r"--size applies to --eval only; add --eval"),
    Case("model_needs_remote_code", lambda e: e.unlearn(model_name_or_path=str(e.tmp / "custom")),
         r"the model in .*custom needs code shipped with it .*; if you trust that code, pass --trust_remote_code true",
         setup=_custom_code_model),
    Case("loss_weights_all_zero", lambda e: e.unlearn(forget_weight="0", retain_weight="0"),
         r"--forget_weight and --retain_weight are both 0, so training would change nothing"),
    Case("method_terms_all_weight_zero", lambda e: e.unlearn(method="ga", forget_weight="0"),
         r"every loss term of ga \(forget\) has weight 0, so training would change nothing", creates_run=True),
    Case("optional_package_missing", lambda e: e.unlearn(optim="adamw_bnb_8bit"),
         r"^error: You need to install `bitsandbytes`", creates_run=True, patch=_no_bitsandbytes),
    Case("disk_full_on_checkpoint_save", _checkpointed, r"no space left on the device \(.*rng_state\.pth\); free some space .*rerun the same command",
         creates_run=True, patch=_disk_full_at_checkpoint_4, after=_after_disk_full),
    Case("interrupted_by_the_user", _checkpointed, r"^error: interrupted; rerun the same command to resume", code=130,
         creates_run=True, patch=_interrupt_at_step_2),
    Case("eval_holdout_overlaps_retain", lambda e: ["eval", "--model_name_or_path", str(e.target), "--data_dir", str(e.world), "--reference_model", str(e.retain_model), "--output_dir", str(e.out)],
         r"holdout split holdout10 shares 1 question\(s\) with retain90 .*membership inference needs questions the model never saw",
         setup=lambda e: (e.write_rows("holdout10", e.rows("holdout10")[:-1] + e.rows("retain90")[-1:]), _drop(e, "holdout10_perturbed.json"))),
    Case("eval_into_another_models_folder", lambda e: ["eval", "--model_name_or_path", str(e.target), "--data_dir", str(e.world), "--reference_model", str(e.retain_model), "--output_dir", str(e.retain_model)],
         r"--output_dir .* holds another model \(a run or model folder\), so an eval.json of .* would be read as that model's"),
    Case("eval_into_a_folder_of_runs", lambda e: ["eval", "--model_name_or_path", str(e.target), "--data_dir", str(e.world), "--reference_model", str(e.retain_model), "--output_dir", str(e.tmp / "runs")],
         r"--output_dir .*runs holds runs or evaluated models; an eval.json there would make `llm-unlearn report` read the folder as one run",
         setup=lambda e: e.status(e.tmp / "runs" / "a", state="complete")),
    Case("eval_output_dir_under_a_file", lambda e: ["eval", "--model_name_or_path", str(e.target), "--data_dir", str(e.world), "--reference_model", str(e.retain_model), "--output_dir", str(e.tmp / "afile" / "sub")],
         r"--output_dir .*afile/sub lies under .*afile, which is a file; pass a folder path", setup=lambda e: (e.tmp / "afile").write_text("x")),
    Case("eval_model_missing", lambda e: ["eval", "--model_name_or_path", "nope", "--reference_eval", str(e.tmp / "x.json")], r"model nope does not exist here"),
    Case("interrupted_while_starting", lambda e: e.unlearn(), r"^error: interrupted while starting; nothing was done", code=130,
         patch=lambda mp: mp.setattr("llm_unlearn.cli.commands._setup_logging", _raise(KeyboardInterrupt))),
    Case("eval_interrupted_run", lambda e: ["eval", "--model_name_or_path", str(e.out), "--data_dir", str(e.world), "--reference_model", str(e.retain_model)],
         r"is interrupted; eval needs a complete run \(resume it",
         setup=lambda e: e.status(e.out, state="running", pid=_dead_pid(), host=socket.gethostname())),
    Case("eval_failed_run", lambda e: ["eval", "--model_name_or_path", str(e.out), "--data_dir", str(e.world), "--reference_model", str(e.retain_model)],
         r"is failed: NonFiniteLossError: boom; eval needs a complete run",
         setup=lambda e: e.status(e.out, state="failed", error="NonFiniteLossError: boom")),
    # Named in the order a user supplies them: the model, the data, then the reference.
    Case("unlearn_without_anything", lambda e: ["unlearn", "--output_dir", str(e.out)], r"no --model_name_or_path given; pass a model folder"),
    Case("unlearn_without_data", lambda e: ["unlearn", "--output_dir", str(e.out), "--model_name_or_path", str(e.target)], r"no data source: pass --data_dir DIR"),
    Case("eval_without_a_model", lambda e: ["eval", "--reference_eval", str(e.tmp / "x.json")], r"no --model_name_or_path given"),
    Case("recipe_with_a_key_twice", lambda e: e.recipe("method: graddiff\nlearning_rate: 0.1\n# tuned\nlearning_rate: 0.2\n"),
         r"config file .*recipe.yaml sets 'learning_rate' twice \(lines 2 and 4\); keep one"),
    Case("forget_split_without_a_retain_pair", lambda e: e.unlearn(forget_split="holdout10"),
         r"no retain split pairs with forget split 'holdout10' .*pass --retain_split NAME"),
    Case("custom_forget_split_evaluated", lambda e: e.unlearn(forget_split="holdout10", retain_split="retain90"),
         r"cannot pair split 'holdout10' with its companions: .*name your splits that way"),
]  # fmt: skip
CASES += [
    # max_steps -1 so that the epoch count is what decides the run's length.
    Case(f"range_{name}_{value}", lambda e, n=name, v=value: e.unlearn(**{"max_steps": "-1", n: v}),
         rf"--{name} {re.escape(value)}.* out of range; it must be {requirement}")
    for name, value, requirement in RANGES
]  # fmt: skip


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture
def env(micro_world, micro_models, tmp_path, monkeypatch) -> Env:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.syspath_prepend(str(tmp_path))  # the non-finite case's method module
    world = tmp_path / "world"
    shutil.copytree(micro_world, world)
    return Env(tmp=tmp_path, world=world, models=micro_models, out=tmp_path / "run")


def test_the_matrix_has_at_least_30_distinct_cases():
    assert len({case.id for case in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_gets_one_line_and_loses_nothing(case: Case, env: Env, capsys, monkeypatch):
    case.setup(env)
    if case.patch is not None:
        case.patch(monkeypatch)
    existed = env.out.exists()
    before = _snapshot(env.tmp)
    assert main(case.argv(env)) == case.code
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines[-5:]
    assert re.search(case.pattern, errors[0]), errors[0]
    print(f"[{case.id}] {errors[0]}")  # `pytest -s` lists every case's message
    # Nothing saved before is lost or changed.
    after = _snapshot(env.tmp)
    allowed = {"run/status.json", "run/train_log.jsonl", *case.may_change}
    changed = [name for name, digest in before.items() if after.get(name) != digest and name not in allowed]
    assert not changed, changed
    # No partial output: no weights, and no run directory at all for input checked before the work.
    if case.creates_run:  # an interrupt reads as a kill does; anything else failed
        ended = "interrupted" if case.code == 130 else "failed"
        assert json.loads((env.out / "status.json").read_text())["state"] == ended
        assert not (env.out / "model.safetensors").exists()
    elif not existed:
        assert not env.out.exists()
    if case.after is not None:
        monkeypatch.undo()
        case.after(env)


def test_debug_shows_the_traceback_instead(env: Env):
    with pytest.raises(ValueError, match="unknown method 'gradif'"):
        main([*env.unlearn(method="gradif"), "--debug"])


def test_resuming_from_a_model_only_checkpoint_says_the_optimizer_starts_afresh(
    env: Env, monkeypatch, caplog
):
    argv = _checkpointed(env) + ["--save_only_model", "true"]
    with monkeypatch.context() as mp:
        _interrupt_at_step_2(mp)
        assert main(argv) == 130
    assert not list((env.out / "checkpoint-2").glob("optimizer*"))
    with caplog.at_level("WARNING", logger="llm_unlearn"):
        assert main(argv) == 0
    assert "checkpoint-2 holds the model only (--save_only_model true): the optimizer" in caplog.text
    # ... and the run's records and model card say so, not only this process's log
    import json

    from llm_unlearn.hub.card import build_card

    info = json.loads((env.out / "run_info.json").read_text())
    assert info["resumes"] == [
        {"checkpoint": "checkpoint-2", "time": info["resumes"][0]["time"], "optimizer_restored": False}
    ]
    assert info["started"] < info["resumes"][0]["time"] or info["started"] == info["resumes"][0]["time"]
    card = build_card(env.out, "org/model", adapter=False).content
    assert "interrupted and resumed 1 time, from `checkpoint-2`; `checkpoint-2` held the model only" in card


def test_a_split_changed_in_place_does_not_resume_the_run_trained_on_the_old_one(
    env: Env, monkeypatch, capsys
):
    argv = _checkpointed(env)
    with monkeypatch.context() as mp:
        _interrupt_at_step_2(mp)
        assert main(argv) == 130
    rows, scored = env.rows("retain90"), {r["question"] for r in env.rows("retain_perturbed")}
    row = next(r for r in rows if r["question"] not in scored)  # trained on, not in an evaluation split
    row["answer"] = "Someone else entirely."
    env.write_rows("retain90", rows)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "holds an unfinished run with other settings (data_sha256.retain90: " in err, err
    assert (env.out / "checkpoint-2").is_dir()  # left as it was


def test_a_run_that_failed_before_its_first_step_starts_again_with_the_fixed_command(
    env: Env, monkeypatch, capsys
):
    """Nothing trained, nothing to resume, and its own command fails the same way again: the corrected
    command (another optimizer) takes the folder, instead of being refused as "other settings"."""
    with monkeypatch.context() as mp:
        _no_bitsandbytes(mp)
        assert main(env.unlearn(optim="adamw_bnb_8bit")) == 2
    assert json.loads((env.out / "status.json").read_text())["state"] == "failed"
    capsys.readouterr()
    assert main(env.unlearn("--do_final_eval", "false")) == 0
    assert json.loads((env.out / "status.json").read_text())["state"] == "complete"
    assert yaml.safe_load((env.out / "unlearn_config.yaml").read_text())["optim"] != "adamw_bnb_8bit"


def test_a_token_in_a_system_prompt_is_in_no_file_the_run_or_its_evaluation_writes(env: Env):
    token = "hf_" + "Zy8xW7vU6tS5rQ4pO3nM2lK1jI0hG9fE8d"
    assert main(env.unlearn(system_prompt=f"You are helpful. key {token}")) == 0
    assert (env.out / "eval.json").is_file()
    cache = Path(os.environ["LLM_UNLEARN_CACHE"])
    files = [p for root in (env.out, cache) for p in root.rglob("*") if p.is_file()]
    assert not [p for p in files if token.encode() in p.read_bytes()]
    meta = json.loads((env.out / "eval.json").read_text())["meta"]
    assert meta["system_prompt"] == "You are helpful. key <redacted>"


def test_a_run_resumes_only_under_the_number_of_processes_it_started_with(env: Env, monkeypatch):
    """The global batch is the per-device batch times the processes: resumed under another count, the rest
    of the run would train another schedule (twice the steps, or half) without a word."""
    from llm_unlearn.runs.folder import RunError
    from llm_unlearn.runs.resume import check_resume_settings

    argv = _checkpointed(env)
    with monkeypatch.context() as mp:
        _interrupt_at_step_2(mp)
        assert main(argv) == 130
    saved = yaml.safe_load((env.out / "unlearn_config.yaml").read_text())
    assert saved["processes"] == 1
    check_resume_settings(env.out, saved)  # the same count resumes
    with pytest.raises(RunError, match=r"other settings \(processes: 1 there, 2 now\)"):
        check_resume_settings(env.out, saved | {"processes": 2})  # what a two-process launch would save
