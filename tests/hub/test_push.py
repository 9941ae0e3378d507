"""`llm-unlearn push` and `unlearn --push_to_hub` with the real huggingface_hub client against a local Hub.

Run: .venv/bin/python -m pytest -q tests/test_push.py   (tests/_hub_server.py is the Hub stand-in)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard, constants
from huggingface_hub.repocard_data import model_index_to_eval_results
from safetensors.torch import load_file

from llm_unlearn.cli import main
from llm_unlearn.runs.folder import write_status
from llm_unlearn.runs.redact import LOCAL_PATH, local_name, redact_paths, redacted_argv
from tests._hub_server import FakeHub  # noqa: E402
from tests.cli.test_cli import _unlearn_argv  # noqa: E402  (the same short unlearn run)

TOKEN = f"hf_test_{secrets.token_hex(16)}"  # unique, so finding it anywhere means it leaked
RECORDS = {"eval.json", "train_log.jsonl", "unlearn_config.yaml", "run_info.json"}
TOKENIZER = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
FULL_MODEL = {"model.safetensors", "config.json", "generation_config.json"}
ADAPTER = {"adapter_model.safetensors", "adapter_config.json"}
CARDS = {"README.md", "data_card.md"}


@pytest.fixture(scope="module")
def runs(micro_world, micro_models, tmp_path_factory) -> dict[str, Path]:
    """Two complete, evaluated runs on the micro world: full fine-tuning and LoRA."""
    root = tmp_path_factory.mktemp("runs")
    for name, extra in (("full", ()), ("lora", ("--use_lora", "true"))):
        assert main(_unlearn_argv(micro_world, micro_models, root / name, *extra)) == 0
    return {"full": root / "full", "lora": root / "lora"}


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """Starts local Hubs and points huggingface_hub at them; a token in HF_TOKEN and no saved login."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the suite runs offline; this Hub is local
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hubs = []

    def start(**kwargs) -> FakeHub:
        hub = FakeHub(token=TOKEN, timeout=120, **kwargs).__enter__()
        hubs.append(hub)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        return hub

    yield start
    for hub in hubs:
        hub.stop()


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and TOKEN not in captured.err + captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, captured.err
    return errors[0]


def _assert_card_matches_eval(readme: str, eval_json: dict) -> None:
    path = Path(readme)
    card = ModelCard.load(path)
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values == {name: m["value"] for name, m in eval_json["metrics"].items()}
    _, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert {r.metric_type: r.metric_value for r in results} == values
    assert {"llm-unlearn", "unlearning", "graddiff"} <= set(card.data.tags)
    assert "arXiv:2203.12817" in card.text and "eprint        = {2203.12817}" in card.text
    fq = eval_json["metrics"]["forget_quality"]["value"]
    assert f"| {fq:.4g} | higher is better |" in card.text
    reference = eval_json["meta"]["forget_quality_reference"]["model"]
    assert local_name(reference) in card.text and reference not in card.text


@pytest.mark.parametrize("xet", [False, True], ids=["lfs", "xet-client"])
def test_push_uploads_the_allow_listed_files_once_with_a_card_matching_eval_json(
    runs, hub_env, monkeypatch, capsys, tmp_path, xet
):
    # With hf_xet active the client sends "lfs" files through Xet, which this Hub does not offer, so
    # that variant gets every file inline: it checks that push works with the client's default path.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", not xet)
    hub = hub_env(lfs_suffixes=() if xet else (".safetensors",))
    run = runs["full"]
    before = _digest(run)
    assert main(["push", str(run), "--repo_id", "org/world-graddiff"]) == 0
    assert _digest(run) == before
    out = capsys.readouterr()
    assert f"{hub.url}/org/world-graddiff" in out.out and TOKEN not in out.out + out.err

    files = hub.files("org/world-graddiff")
    assert set(files) == FULL_MODEL | TOKENIZER | RECORDS | CARDS
    assert files["model.safetensors"] == (run / "model.safetensors").read_bytes()
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert not any(TOKEN.encode() in data for data in files.values())
    commits = [path for method, path in hub.requests if path.endswith("/commit/main")]
    assert len(commits) == 1
    lfs = [path for method, path in hub.requests if path.endswith("/lfs/objects/batch")]
    assert len(lfs) == (0 if xet else 1)
    (tmp_path / "README.md").write_bytes(files["README.md"])
    _assert_card_matches_eval(tmp_path / "README.md", json.loads((run / "eval.json").read_text()))


def test_push_to_a_revision_creates_a_private_repo_and_the_branch(runs, hub_env):
    hub = hub_env()
    argv = ["push", str(runs["full"]), "--repo_id", "org/rev", "--private", "--revision", "v1"]
    assert main(argv) == 0
    assert hub.repos["org/rev"]["private"] is True
    assert hub.files("org/rev", "main") == {}
    assert "model.safetensors" in hub.files("org/rev", "v1")


def test_a_failed_commit_is_one_error_line_and_leaves_the_run_unchanged(runs, hub_env, capsys):
    hub = hub_env(fail_on=("commit",))
    run = runs["full"]
    before = _digest(run)
    assert main(["push", str(run), "--repo_id", "org/broken"]) == 2
    line = _error_line(capsys)
    assert re.fullmatch(
        rf"error: upload of {re.escape(str(run))} to org/broken failed \(HTTP 500 on /api/models/org/broken/commit/main"
        rf": simulated server failure on commit\); nothing in {re.escape(str(run))} was changed; retry with "
        rf"`llm-unlearn push {re.escape(str(run))} --repo_id org/broken` \(it sends the same files\)",
        line,
    ), line
    # The upload got as far as the LFS transfer before the commit failed.
    assert ("POST", "/org/broken.git/info/lfs/objects/verify") in hub.requests
    assert hub.files("org/broken") == {}
    assert _digest(run) == before


def test_an_unreachable_endpoint_is_one_error_line(runs, hub_env, capsys, monkeypatch):
    hub = hub_env()
    hub.stop()  # nothing listens on that port any more
    assert main(["push", str(runs["full"]), "--repo_id", "org/x"]) == 2
    line = _error_line(capsys)
    assert "failed (" in line and f"check the network and the endpoint ({hub.url}, from HF_ENDPOINT)" in line


def test_a_rejected_token_names_the_fix(runs, hub_env, capsys, monkeypatch):
    hub_env()
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    assert main(["push", str(runs["full"]), "--repo_id", "org/x"]) == 2
    line = _error_line(capsys)
    assert "HTTP 401 on /api/repos/create" in line and "check the token (HF_TOKEN or `hf auth login`)" in line


def test_dry_run_writes_the_exact_folder_and_card_and_sends_no_request(runs, hub_env, tmp_path, capsys):
    hub = hub_env()
    run, out = runs["full"], tmp_path / "staged"
    before = _digest(run)
    assert main(["push", str(run), "--repo_id", "org/dry", "--dry_run", "--output_dir", str(out)]) == 0
    assert hub.requests == []
    assert set(_digest(out)) == FULL_MODEL | TOKENIZER | RECORDS | CARDS
    for name in FULL_MODEL | TOKENIZER:
        assert (out / name).read_bytes() == (run / name).read_bytes()
    for name in RECORDS:  # the same records, local paths written without the machine's folders
        assert (out / name).read_text() == redact_paths((run / name).read_text())
    _assert_card_matches_eval(out / "README.md", json.loads((run / "eval.json").read_text()))
    for folder in (out, run):
        assert not [p for p in folder.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert _digest(run) == before
    # A second dry run into the same, now full, folder is refused rather than mixing two folders.
    assert main(["push", str(run), "--repo_id", "org/dry", "--dry_run", "--output_dir", str(out)]) == 2
    assert "exists and is not empty" in _error_line(capsys)


def test_lora_run_uploads_its_adapter_by_default_and_the_merged_model_on_request(runs, hub_env, tmp_path):
    hub_env()
    run = runs["lora"]
    argv = ["push", str(run), "--repo_id", "org/lora", "--dry_run", "--output_dir"]
    assert main([*argv, str(tmp_path / "adapter")]) == 0
    assert set(_digest(tmp_path / "adapter")) == ADAPTER | TOKENIZER | RECORDS | CARDS
    card = ModelCard.load(tmp_path / "adapter" / "README.md")
    assert card.data.library_name == "peft" and "PeftModel.from_pretrained" in card.text
    assert main([*argv, str(tmp_path / "merged"), "--merged"]) == 0
    merged = set(_digest(tmp_path / "merged"))
    assert merged == FULL_MODEL | TOKENIZER | RECORDS | CARDS | {f"adapter/{n}" for n in ADAPTER}
    assert ModelCard.load(tmp_path / "merged" / "README.md").data.library_name == "transformers"


def test_missing_token_is_one_clear_line_before_anything_is_staged(runs, hub_env, monkeypatch, capsys):
    hub = hub_env()
    monkeypatch.delenv("HF_TOKEN")
    assert main(["push", str(runs["full"]), "--repo_id", "org/x"]) == 2
    assert "no Hugging Face token: set HF_TOKEN" in _error_line(capsys)
    assert hub.requests == []


@pytest.mark.parametrize("state", ["running", "failed"])
def test_an_unfinished_run_is_refused(runs, hub_env, tmp_path, capsys, state):
    hub = hub_env()
    run = tmp_path / "run"
    shutil.copytree(runs["full"], run)
    write_status(run, state, error="RuntimeError: boom" if state == "failed" else None)
    assert main(["push", str(run), "--repo_id", "org/x"]) == 2
    assert f"is {state}" in (line := _error_line(capsys)) and "push needs a complete run" in line
    assert hub.requests == []


def test_pickled_weights_are_refused(runs, hub_env, tmp_path, capsys):
    hub_env()
    run = tmp_path / "run"
    shutil.copytree(runs["full"], run)
    (run / "model.safetensors").rename(run / "pytorch_model.bin")
    assert main(["push", str(run), "--repo_id", "org/x"]) == 2
    line = _error_line(capsys)
    assert "pickled weights only (pytorch_model.bin)" in line and "safetensors" in line


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--push_to_hub", "true"], "--push_to_hub needs --hub_model_id ORG/NAME"),
        (["--push_to_hub", "true", "--hub_model_id", "no-org"], "--hub_model_id must be ORG/NAME"),
        (["--hub_token", "hf_given_on_the_command_line"], "--hub_token is refused"),
    ],
)
def test_unlearn_hub_options_are_checked_before_any_work(
    micro_world, micro_models, hub_env, tmp_path, capsys, extra, message
):
    hub = hub_env()
    out = tmp_path / "run"
    assert main(_unlearn_argv(micro_world, micro_models, out, *extra)) == 2
    assert message in _error_line(capsys)
    assert not out.exists() and hub.requests == []


def test_unlearn_push_to_hub_pushes_once_after_the_final_evaluation(
    micro_world, micro_models, hub_env, tmp_path
):
    hub = hub_env()
    out = tmp_path / "run"
    extra = [
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "org/e2e",
        "--save_strategy",
        "steps",
        "--save_steps",
        "1",
    ]
    assert main(_unlearn_argv(micro_world, micro_models, out, *extra)) == 0
    commits = [path for method, path in hub.requests if "/commit/" in path]
    assert commits == ["/api/models/org/e2e/commit/main"]  # no checkpoint pushes, one final upload
    files = hub.files("org/e2e")
    assert files["eval.json"].decode() == redact_paths((out / "eval.json").read_text())
    (tmp_path / "README.md").write_bytes(files["README.md"])
    _assert_card_matches_eval(tmp_path / "README.md", json.loads((out / "eval.json").read_text()))


def test_redacted_argv_hides_the_values_of_token_like_options():
    argv = ["--hub_token", "s3cret", "--lr", "1", "--hub_token=s3cret", "--api_key", "k", "--password=p"]
    assert redacted_argv(argv) == [
        "--hub_token", "<redacted>", "--lr", "1", "--hub_token=<redacted>", "--api_key", "<redacted>",
        "--password=<redacted>",
    ]  # fmt: skip


def test_card_names_a_builtin_sources_upstream_model_and_a_hub_dataset(runs, tmp_path):
    from llm_unlearn.hub.card import build_card

    run = tmp_path / "run"
    shutil.copytree(runs["full"], run)
    config = yaml.safe_load((run / "unlearn_config.yaml").read_text())
    config |= {
        "model_name_or_path": "builtin:smollm2-135m-instruct",
        "data_dir": None,
        "dataset_name": "locuslab/TOFU",
    }
    (run / "unlearn_config.yaml").write_text(yaml.safe_dump(config))
    card = build_card(run, "org/smol", adapter=False)
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and "de-quantized" in card.text
    assert card.data.datasets == ["locuslab/TOFU"]
    assert {r.dataset_type for r in card.data.eval_results} == {"locuslab/TOFU"}


def test_local_paths_lose_the_machine_folders_and_nothing_else_changes():
    text = (
        '{"a": "/home/ann/runs/x", "b": "/home/annie/y/eval.json", "c": "/home/ann", "d": "~/z", '
        '"e": "/data/hf/hub/models--org--name/snapshots/0123abcd", '
        '"f": "/home/ann/.cache/llm_unlearn/world-default-0123456789abcdef/target"}'
        " https://huggingface.co/org/name </details> forget/retain 1/2 a / b runs/demo"
    )
    assert redact_paths(text, "/home/ann") == (
        '{"a": ".../x", "b": ".../y/eval.json", "c": "...", "d": ".../z", "e": "org/name", '
        '"f": ".../world-default-0123456789abcdef/target"}'
        " https://huggingface.co/org/name </details> forget/retain 1/2 a / b runs/demo"
    )


def _machine_paths(tmp_path_factory) -> list[str]:
    """Folders of this machine that a published file must not name: the test area, the cache, home."""
    return [str(tmp_path_factory.getbasetemp()), os.environ["LLM_UNLEARN_CACHE"], os.path.expanduser("~")]


def test_a_staged_folder_names_no_local_path_and_no_home_folder(
    runs, tmp_path, tmp_path_factory, monkeypatch
):
    run, out = runs["full"], tmp_path / "staged"
    monkeypatch.setenv("HOME", str(run.parent))  # as if the runs lived in the user's home folder
    before = _digest(run)
    assert main(["push", str(run), "--repo_id", "org/home", "--dry_run", "--output_dir", str(out)]) == 0
    assert str(run.parent) in (run / "unlearn_config.yaml").read_text()
    for path in out.rglob("*"):
        data = path.read_bytes()
        assert not [m for m in _machine_paths(tmp_path_factory) if m.encode() in data], path.name
    for name in (*RECORDS, *CARDS):
        assert LOCAL_PATH.findall((out / name).read_text()) == [], name
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model is None  # a local folder is no Hub id
    assert "This model is the built-in world's target model (`.../world-micro-" in card.text
    assert f"output_dir: .../{run.name}" in (out / "unlearn_config.yaml").read_text()
    for name in FULL_MODEL | TOKENIZER:
        assert (out / name).read_bytes() == (run / name).read_bytes()
    assert _digest(run) == before


def test_card_ties_membership_rows_to_the_forget_and_holdout_splits(runs, tmp_path):
    run, out = runs["full"], tmp_path / "staged"
    assert main(["push", str(run), "--repo_id", "org/mia", "--dry_run", "--output_dir", str(out)]) == 0
    splits = json.loads((run / "eval.json").read_text())["meta"]["splits"]
    forget, holdout = splits["forget"]["name"], splits["holdout"]["name"]
    card = ModelCard.load(out / "README.md")
    rows = {re.search(r"\(`(\w+)`\) \|", line)[1]: line.split(" | ")[1]
            for line in card.text.splitlines() if line.startswith("| ") and "(`" in line}  # fmt: skip
    membership = [name for name in rows if name.startswith("mia_auc_") or name == "privleak"]
    assert len(membership) == 6
    for name in membership:
        assert rows[name].startswith(f"forget set (`{forget}`) vs holdout set (`{holdout}`)"), rows[name]
    utility = ", ".join(f"{what} (`{splits[role]['name']}`)" for role, what in
                        (("retain", "retain set"), ("ra", "real authors"), ("wf", "world facts")))  # fmt: skip
    assert rows["model_utility"] == utility
    split_of = {r.metric_type: r.dataset_split for r in card.data.eval_results}
    assert {split_of[name] for name in membership} == {f"{forget} vs {holdout}"}
    assert split_of["forget_prob"] == forget and split_of["retain_prob"] == splits["retain"]["name"]


def test_card_says_a_model_of_the_builtin_world_is_a_toy_with_its_parameter_count(runs, tmp_path):
    from llm_unlearn.hub.card import build_card

    run, out = runs["full"], tmp_path / "staged"
    assert main(["push", str(run), "--repo_id", "org/toy", "--dry_run", "--output_dir", str(out)]) == 0
    n = sum(t.numel() for t in load_file(run / "model.safetensors").values())
    text = ModelCard.load(out / "README.md").text
    note = next(line for line in text.splitlines() if line.startswith("**This is a toy model.**"))
    assert f"`micro`-size Llama of {n:,} parameters" in note and "not a useful language model" in note
    assert "synthetic world" in note and "demonstrate the unlearning pipeline" in note

    # The cache folder moved: the weights' dimensions still say which model it is.
    copy = tmp_path / "moved"
    shutil.copytree(run, copy)
    config = yaml.safe_load((copy / "unlearn_config.yaml").read_text())
    (copy / "unlearn_config.yaml").write_text(
        yaml.safe_dump(config | {"model_name_or_path": str(tmp_path / "m")})
    )
    assert "**This is a toy model.**" in build_card(copy, "org/toy", adapter=False).text

    # A Hub model of other dimensions is no toy, and is named by its Hub id.
    model_config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(model_config | {"hidden_size": 4096}))
    (copy / "unlearn_config.yaml").write_text(
        yaml.safe_dump(config | {"model_name_or_path": "org/real-model"})
    )
    card = build_card(copy, "org/real", adapter=False)
    assert "toy model" not in card.text and card.data.base_model == "org/real-model"


def test_license_and_citation_files_exist_and_the_citation_has_the_package_version():
    root = Path(__file__).resolve().parents[2]
    pyproject = (root / "pyproject.toml").read_text()  # tomllib is Python 3.11+, and we support 3.10
    project = {key: re.search(rf'^{key} = "(.+)"$', pyproject, re.M)[1] for key in ("version", "license")}
    assert project["license"] == "Apache-2.0"
    assert (
        "Apache License" in (root / "LICENSE").read_text() and "Version 2.0" in (root / "LICENSE").read_text()
    )
    citation = yaml.safe_load((root / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["title"] == "llm_unlearn"
    assert citation["version"] == project["version"] and citation["license"] == project["license"]
    assert citation["authors"] == [{"name": "llm_unlearn developers"}] and citation["message"]


def test_card_cites_sharpness_aware_unlearning_only_when_the_run_used_it(runs, tmp_path):
    from llm_unlearn.hub.card import build_card

    plain = build_card(runs["full"], "org/plain", adapter=False)
    assert "2502.05374" not in plain.text and "sharpness-aware" not in plain.text
    run = tmp_path / "run"
    shutil.copytree(runs["full"], run)
    config = yaml.safe_load((run / "unlearn_config.yaml").read_text()) | {"sam_rho": 0.25}
    (run / "unlearn_config.yaml").write_text(yaml.safe_dump(config))
    card = build_card(run, "org/sam", adapter=False)
    assert "2502.05374" in card.text and "sharpness-aware radius `0.25`" in card.text


def test_card_says_how_training_went_as_the_run_records_it(runs, tmp_path):
    """The card's Training section states the steps and epochs run (not only those set), the optimizer, and
    why training ended: a stop rule's end and its repair steps, which train otherwise than the method."""
    from llm_unlearn.hub.card import build_card

    plain = build_card(runs["full"], "org/plain", adapter=False).text
    log = [json.loads(line) for line in (runs["full"] / "train_log.jsonl").read_text().splitlines()]
    epochs = max(r["epoch"] for r in log if "epoch" in r)
    steps = max(r["step"] for r in log if "step" in r)
    said = f"{steps} optimizer step{'s' if steps != 1 else ''} ({epochs:.3g} epochs)"
    assert f"{said}. Settings: optimizer `" in plain
    assert "epochs set `" in plain and "repair steps" not in plain and "Training ended" not in plain
    assert "GeN learning rate `off`" in plain and "LoRA `off`" in plain and "`False`" not in plain

    run = tmp_path / "run"
    shutil.copytree(runs["full"], run)
    end = {"step": steps + 2, "epoch": epochs, "stop_reason": "crossed", "stop_best_step": steps - 1,
           "stop_best_gap": 0.012, "stop_repair_steps": 2}  # fmt: skip
    with open(run / "train_log.jsonl", "a") as f:
        f.write(json.dumps(end) + "\n")
    card = build_card(run, "org/stopped", adapter=False).text
    assert f"Training ended at step {steps}: `crossed`" in card
    assert f"returned the weights of step {steps - 1} (gap +0.012), then 2 repair steps." in card
    assert "The repair steps train on retain questions alone with AdamW at learning rate `0.0001`" in card


def test_a_probe_of_the_run_is_published_and_quoted_and_one_of_other_weights_is_not(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["full"], run)

    def row(probe, budget, bits, value, recovery):
        return {"probe": probe, "budget": budget, "bits": bits, "metric": "forget_prob", "direction": "lower",
                "value": value, "retain_value": 0.2, "recovery": recovery, "recovery_note": None}  # fmt: skip

    probe = {
        "meta": {"models": {"unlearned": str(run)}, "n_attack": 3, "n_heldout": 1, "n_forget": 4},
        "rows": [
            row("relearn", 0, None, 0.25, 0.05),
            row("relearn", 10, None, 0.61, 0.72),
            row("quant", None, "32", 0.3, 0.1),
            row("quant", None, "4", 0.35, 0.2),
        ],  # fmt: skip
    }
    (run / "probe.json").write_text(json.dumps(probe))
    out = tmp_path / "staged"
    assert main(["push", str(run), "--repo_id", "org/probed", "--dry_run", "--output_dir", str(out)]) == 0
    assert (out / "probe.json").is_file() and str(run) not in (out / "probe.json").read_text()  # paths hidden
    text = ModelCard.load(out / "README.md").text
    relearn = (
        "`relearn` (10 steps on 3 forget questions; the other 1 scored): forget probability 0.250 -> 0.610"
    )
    assert relearn + ", recovery +0.05 -> +0.72" in text
    assert "`quant` (32 -> 4 bits, all 4 forget questions): forget probability 0.300 -> 0.350" in text
    assert "do not measure resistance" not in text

    probe["meta"]["models"]["unlearned"] = str(runs["full"])  # probed elsewhere: not this folder's weights
    (run / "probe.json").write_text(json.dumps(probe))
    other = tmp_path / "staged-other"
    assert main(["push", str(run), "--repo_id", "org/probed", "--dry_run", "--output_dir", str(other)]) == 0
    assert not (other / "probe.json").exists()
    assert "these results do not measure resistance to that." in ModelCard.load(other / "README.md").text
    # A copy of the probed run (moved, downloaded): the same weights by their hashes, so its probe is its own.
    from llm_unlearn.eval.cache import model_digest

    probe["meta"]["unlearned_files_sha256"] = model_digest(run)
    (run / "probe.json").write_text(json.dumps(probe))
    copied = tmp_path / "staged-copy"
    assert main(["push", str(run), "--repo_id", "org/probed", "--dry_run", "--output_dir", str(copied)]) == 0
    assert (copied / "probe.json").is_file()


CUSTOM_CODE = """from transformers import LlamaConfig, LlamaForCausalLM


class Config(LlamaConfig):
    model_type = "customnet"


class Model(LlamaForCausalLM):
    config_class = Config
"""


def test_a_model_with_its_own_code_unlearns_and_publishes_its_code(
    micro_world, micro_models, hub_env, tmp_path, capsys
):
    from transformers import AutoModelForCausalLM

    # A model whose config.json names its own code (auto_map), as many Hub models do.
    source = tmp_path / "custom"
    shutil.copytree(micro_models["target"], source)
    (source / "custom.py").write_text(CUSTOM_CODE)
    config = json.loads((source / "config.json").read_text())
    config |= {"model_type": "customnet", "auto_map": {"AutoConfig": "custom.Config",
                                                       "AutoModelForCausalLM": "custom.Model"}}  # fmt: skip
    (source / "config.json").write_text(json.dumps(config))
    argv = _unlearn_argv(micro_world, micro_models, tmp_path / "run", "--do_final_eval", "false")
    argv[argv.index("--model_name_or_path") + 1] = str(source)
    assert main(argv) == 2  # off by default: the code is not run
    assert "pass --trust_remote_code true" in _error_line(capsys)
    assert main([*argv, "--trust_remote_code", "true"]) == 0
    run = tmp_path / "run"
    assert (run / "custom.py").read_text() == CUSTOM_CODE
    hub_env()
    out = tmp_path / "staged"
    # The run's settings record trust_remote_code; a later command runs the code only when asked itself
    # (a run folder may come from elsewhere).
    later = {
        "push": ["push", str(run), "--repo_id", "org/custom", "--dry_run", "--output_dir", str(out)],
        "probe": ["probe", str(run), "--budgets", "0", "--probes", "quant", "--out", str(tmp_path / "p.json")],
        "distill": ["distill", str(run), "--alpha", "0.3", "--output_dir", str(tmp_path / "d"), "--max_steps", "1",
                    "--no_eval"],
        "eval": ["eval", "--model_name_or_path", str(run), "--output_dir", str(tmp_path / "e")],
    }  # fmt: skip
    for command, argv in later.items():
        assert main(argv) == 2, command
        assert "pass --trust_remote_code true" in _error_line(capsys), command
        assert not (tmp_path / "d").exists() and not out.exists()
    for command in ("probe", "distill"):
        assert main([*later[command], "--trust_remote_code", "true"]) == 0, command
    assert main([*later["push"], "--trust_remote_code", "true"]) == 0
    assert (out / "custom.py").read_text() == CUSTOM_CODE  # the published config names it
    assert 'from_pretrained("org/custom", trust_remote_code=True)' in (out / "README.md").read_text()
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert type(model).__name__ == "Model"
    # A run whose named code went missing is refused, not published unloadable.
    (run / "custom.py").unlink()
    x = ["push", str(run), "--repo_id", "org/custom", "--dry_run", "--output_dir", str(tmp_path / "x")]
    assert main([*x, "--trust_remote_code", "true"]) == 2
    assert "names code in custom.py, which is not there; copy the model's code files" in _error_line(capsys)


def test_offline_hub_errors_name_what_each_command_can_do_instead(
    micro_world, micro_models, runs, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    argv = _unlearn_argv(
        micro_world, micro_models, tmp_path / "run", "--push_to_hub", "true", "--hub_model_id", "o/x"
    )
    assert main(argv) == 2
    assert "run `llm-unlearn push RUN --dry_run --output_dir DIR` afterwards" in _error_line(capsys)
    assert not (tmp_path / "run").exists()
    assert main(["push", str(runs["full"]), "--repo_id", "o/x"]) == 2
    assert "pass --dry_run --output_dir DIR to build the folder" in _error_line(capsys)
