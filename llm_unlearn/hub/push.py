"""`push()`: publish a finished run directory to the Hugging Face Hub, with a model card.

What is uploaded is an explicit allow-list, so that nothing a user did not mean to publish leaves
the machine and nothing pickled does (a pickle runs code when loaded):
- the weights as safetensors: the model (`model*.safetensors`, `config.json`, `generation_config.json`),
  or for a LoRA run its adapter (`adapter_model.safetensors`, `adapter_config.json`) at the repo root,
  with the merged model instead only when asked (`merged=True`; the adapter then goes to `adapter/`);
- the tokenizer files, so the repo loads on its own;
- the run's records, so the results can be checked: `eval.json` (per-question values), `report.md`
  and its plots, `train_log.jsonl`, `unlearn_config.yaml` (the resolved recipe) and `run_info.json`
  (the command, with secrets redacted, and library versions);
- `README.md`, the model card (`card.py`), and the data card of the data the run used.
In the text records and the card, every local path is written without the machine's folders
(`local_name`): a path names the user and says nothing to anyone else. A Hugging Face cache snapshot
becomes its Hub id, a model of the built-in world `.../world-SIZE-HASH/ROLE`, anything else
`.../NAME`. Any Hugging Face token (`hf_...`) is replaced by `<redacted>`. The tokenizer's files are
uploaded as they are (a vocabulary may hold a token that looks like a path).
Never `training_args.bin`, checkpoints, optimizer states or any `.bin`/`.pt`/`.pkl` file; a run
whose weights are not safetensors is refused.

The folder is staged first (in a temporary folder, or in `output_dir` for a dry run, which uploads
nothing), then sent in one commit with `HfApi.upload_folder`. The run directory is only read. The
token comes from `HF_TOKEN` or the user's login (huggingface_hub's own lookup) and is never printed
or written; the endpoint is `HF_ENDPOINT` as set when `push` runs.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ..models.loading import check_model_folder, check_weight_files, load_tokenizer
from ..runs.folder import (
    CONFIG_FILE,
    RunError,
    make_temp_dir,
    move_into_place,
    read_run_config,
    read_status,
    require_complete,
)
from ..runs.options import CommandParser, add_trust_remote_code, require_one_process
from ..runs.redact import known_paths, redact_paths, redact_secrets
from ..runs.scratch import scratch_dir

logger = logging.getLogger("llm_unlearn")

MODEL_FILES = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
               "config.json", "generation_config.json")  # fmt: skip
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "merges.txt")  # fmt: skip
RECORD_FILES = ("eval.json", "report.md", "*.png", "train_log.jsonl", CONFIG_FILE, "run_info.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
ADAPTER_DIR = "adapter"  # as in unlearn.py


TEXT_RECORDS = (".json", ".jsonl", ".yaml", ".md")


# An absolute or home-relative path, not part of a URL, a relative path or an HTML closing tag.
def _matches(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    return sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})


def _pickles(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES)


def check_run(run_dir: str | Path, *, merged: bool = False, trust_remote_code: bool = False) -> Path:
    """A complete run directory with safetensors weights, or a one-line error naming the fix."""
    run = Path(run_dir)
    if run.is_file():
        raise FileNotFoundError(f"run directory {run} is a file; pass the --output_dir of a finished run")
    if not run.is_dir():
        raise FileNotFoundError(
            f"run directory {run} does not exist; pass the --output_dir of a finished run"
        )
    if read_status(run) is None or not (run / CONFIG_FILE).is_file():
        raise RunError(
            f"{run} is not an llm-unlearn run directory (no status.json or {CONFIG_FILE}); push publishes "
            "runs made by `llm-unlearn unlearn`"
        )
    require_complete(run, "push")
    read_run_config(run, required=True)  # the card is built from it: a damaged one stops here
    adapter = run / ADAPTER_DIR
    if merged and not adapter.is_dir():
        raise ValueError(f"--merged applies to LoRA runs, and {run} has no {ADAPTER_DIR}/; drop --merged")
    weights = run / ADAPTER_DIR if adapter.is_dir() and not merged else run
    # What is published must load: whole weights, a config that fits them, and its tokenizer.
    remote = trust_remote_code  # asked for by this command: a run folder's settings do not run its code
    if weights == run:
        check_model_folder(run, trust_remote_code=remote)
    else:
        check_weight_files(weights)
    load_tokenizer(str(run), trust_remote_code=remote)
    if not any(weights.glob("*.safetensors")):
        found = _pickles(weights)
        what = f"pickled weights only ({', '.join(found)})" if found else "no weights"
        raise RunError(
            f"{weights} has {what}; push uploads safetensors only (pickles run code when loaded): save the "
            "model with save_pretrained(..., safe_serialization=True) and push again"
        )
    return run


def plan_files(run_dir: Path, *, merged: bool = False) -> dict[str, Path]:
    """Repo path -> file in the run directory, for every file that is uploaded (the card aside)."""
    adapter = run_dir / ADAPTER_DIR
    files: dict[str, Path] = {}
    if adapter.is_dir() and not merged:
        files |= {p.name: p for p in _matches(adapter, ADAPTER_FILES)}
    else:
        files |= {p.name: p for p in _matches(run_dir, MODEL_FILES)}
        from .card import code_files

        files |= {p.name: p for p in code_files(run_dir)}
        if adapter.is_dir():
            files |= {f"{ADAPTER_DIR}/{p.name}": p for p in _matches(adapter, ADAPTER_FILES)}
    files |= {p.name: p for p in _matches(run_dir, TOKENIZER_FILES + RECORD_FILES)}
    from ..eval.runs import run_probe

    if run_probe(run_dir) is not None:  # the card quotes it; a probe of other weights is not this model's
        files["probe.json"] = run_dir / "probe.json"
    return files


def _place(src: Path, dst: Path, link: bool) -> None:
    """Hard-link (no copy of a 14 GB model) when allowed and on the same filesystem, else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:  # another filesystem, or links not supported there
            pass
    shutil.copyfile(src, dst)


def stage(
    run_dir: str | Path, dest: str | Path, repo_id: str, *, merged: bool = False, link: bool = False
) -> list[str]:
    """Write the exact folder that `push` uploads into `dest` (which must be empty); return its files.

    `link` hard-links the run's files instead of copying them: only for a folder that is deleted
    after the upload, since writing into a linked file would write into the run.
    """

    from .card import build_card, data_card_path

    run, dest = Path(run_dir), Path(dest)
    files = plan_files(run, merged=merged)
    known = known_paths(run, read_run_config(run, required=True))
    for name, src in files.items():
        if src.suffix in TEXT_RECORDS and name not in TOKENIZER_FILES:
            # Rewritten, never linked: the run's own file stays as it is. The tokenizer's files are
            # data (a vocabulary may hold "/usr"), copied as they are.
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            text = redact_secrets(redact_paths(src.read_text(encoding="utf-8"), known=known))
            (dest / name).write_text(text, encoding="utf-8")
        else:
            _place(src, dest / name, link)
    config = read_run_config(run, required=True)
    data_card = data_card_path(config)
    if data_card is not None:
        shutil.copyfile(data_card, dest / "data_card.md")
    adapter = (run / ADAPTER_DIR).is_dir() and not merged
    card = build_card(run, repo_id, adapter=adapter, data_card="data_card.md" if data_card else None)
    card.content = redact_secrets(redact_paths(card.content, known=known))
    card.save(dest / "README.md")
    return sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())


def check_repo_id(repo_id: str | None, option: str = "--repo_id") -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    example = f"{option} my-org/tofu-llama-forget10-graddiff"
    if not repo_id or repo_id.count("/") != 1:
        raise ValueError(f"{option} must be ORG/NAME, got {repo_id!r}; pass e.g. {example}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(
            f"{option} {repo_id!r} is not a valid Hub repo id ({str(err).splitlines()[0]})"
        ) from None
    return repo_id


def hub_endpoint() -> str:
    """`HF_ENDPOINT` as set now (huggingface_hub reads it once, at import), else huggingface_hub's default."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")


def hub_token(instead: str = "pass --dry_run --output_dir DIR to build the folder without uploading") -> str:
    """The token from `HF_TOKEN` or the user's login; a one-line error before any work when there is none
    (`instead`: what the command can do without the Hub)."""
    from huggingface_hub import constants, get_token

    if constants.is_offline_mode():
        raise RunError(
            f"the Hub is unreachable by choice: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set; unset it to "
            f"push, or {instead}"
        )
    token = get_token()
    if not token:
        raise RunError(
            "no Hugging Face token: set HF_TOKEN to a token with write access, or run `hf auth login`; "
            "tokens are never taken on the command line"
        )
    return token


def _failure(run: Path, repo_id: str, err: Exception, token: str) -> str:
    """`upload of RUN to REPO failed (<reason>); nothing in RUN was changed; <fix>`, token scrubbed."""
    from huggingface_hub.errors import HfHubHTTPError

    while isinstance(err, RuntimeError) and err.__cause__ is not None:  # LFS wraps the HTTP error
        err = err.__cause__  # type: ignore[assignment]
    status = (
        err.response.status_code if isinstance(err, HfHubHTTPError) and err.response is not None else None
    )
    if status is not None:
        path = err.response.request.url.path  # type: ignore[union-attr]
        reason = f"HTTP {status} on {path}" + (f": {err.server_message}" if err.server_message else "")  # type: ignore[union-attr]
    else:
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no message'}"
    reason = " ".join(reason.replace(token, "<token>").split())[:200]
    retry = f"retry with `llm-unlearn push {run} --repo_id {repo_id}`"
    fixes = {
        401: "check the token (HF_TOKEN or `hf auth login`); then " + retry,
        403: f"the token needs write access to {repo_id.split('/')[0]}; use one that has it, then " + retry,
        404: "check --repo_id and --revision, then " + retry,
    }
    if status is None:
        fix = f"check the network and the endpoint ({hub_endpoint()}, from HF_ENDPOINT), then {retry}"
    else:
        fix = fixes.get(status, retry + " (it sends the same files)")
    return f"upload of {run} to {repo_id} failed ({reason}); nothing in {run} was changed; {fix}"


def push(
    run_dir: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    merged: bool = False,
    dry_run: bool = False,
    output_dir: str | Path | None = None,
    trust_remote_code: bool = False,
) -> str:
    """Upload a complete run to `repo_id` (created if needed) and return its URL; or, with `dry_run`,
    write the folder that would be uploaded to `output_dir` and return that path. `trust_remote_code`: the
    run's model ships its own code, which checking that it loads runs.
    """
    check_repo_id(repo_id)
    run = check_run(run_dir, merged=merged, trust_remote_code=trust_remote_code)
    if dry_run:
        if output_dir is None:
            raise ValueError("--dry_run needs --output_dir DIR, the folder to write instead of uploading")
        out = Path(output_dir).resolve()
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"output dir {out} is a file; choose a new --output_dir")
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"output dir {out} exists and is not empty; choose a new --output_dir")
        if out.is_relative_to(run.resolve()):
            raise ValueError(
                f"output dir {out} is inside the run {run}, which push never changes; choose another"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(out.parent, f".{out.name}.")
        try:
            files = stage(run, tmp, repo_id, merged=merged)
        except BaseException:
            shutil.rmtree(tmp)
            raise
        try:
            move_into_place(tmp, out, "choose a new --output_dir")  # the folder appears whole or not at all
        except BaseException:
            shutil.rmtree(tmp)
            raise
        print(f"dry run: {len(files)} files for {repo_id} written to {out} (nothing uploaded)")
        return str(out)
    if output_dir is not None:
        raise ValueError("--output_dir is only for --dry_run (a push stages in a temporary folder); drop it")
    token = hub_token()
    from huggingface_hub import HfApi

    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    with scratch_dir("llm-unlearn-push-") as tmp:
        files = stage(run, tmp, repo_id, merged=merged, link=True)
        logger.info("uploading %d files from %s to %s: %s", len(files), run, repo_id, ", ".join(files))
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision and revision != "main":
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp,
                revision=revision,
                commit_message=f"Upload unlearning run {run.name} (llm-unlearn)",
            )
        except Exception as err:
            # HfHubHTTPError, httpx2 transport errors, ValueError for a malformed reply, RuntimeError
            # around a failed LFS transfer: each means the upload failed, which is all a user can act on.
            raise RunError(_failure(run, repo_id, err, token)) from err
    url = f"{endpoint}/{repo_id}" + (f"/tree/{revision}" if revision else "")
    print(f"pushed {run} to {url} ({len(files)} files, commit {commit.oid[:8]})")
    return url


def push_cli(argv: list[str]) -> None:

    parser = CommandParser(
        prog="llm-unlearn push",
        description="Upload a complete run (safetensors weights, tokenizer, eval.json, recipe, model card) "
        "to the Hugging Face Hub. The token comes from HF_TOKEN or `hf auth login`.",
    )
    parser.add_argument("run_dir", help="the run directory (the --output_dir of `llm-unlearn unlearn`)")
    parser.add_argument("--repo_id", required=True, help="ORG/NAME of the model repo (created if needed)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", help="branch to push to (created from main if needed)")
    parser.add_argument(
        "--merged", action="store_true", help="LoRA runs: upload the merged model, not the adapter"
    )
    parser.add_argument("--dry_run", action="store_true", help="write the folder and card, upload nothing")
    parser.add_argument("--output_dir", help="with --dry_run: where to write the folder")
    add_trust_remote_code(parser)
    args = parser.parse_args(argv)
    require_one_process("push")  # every rank would do it all, into the same files
    push(
        args.run_dir,
        args.repo_id,
        private=True if args.private else None,
        revision=args.revision,
        merged=args.merged,
        dry_run=args.dry_run,
        output_dir=args.output_dir,
        trust_remote_code=args.trust_remote_code,
    )
