"""Run directories: atomic JSON writes, `status.json`, and safe model loading.

A run directory explains itself: `status.json` says whether it is `running`, `complete` or `failed`
(with the error); files are written under a temporary name and renamed, so a crash never leaves a
file that looks complete. One process at a time writes into a run directory: `claim_run_dir` holds
an exclusive lock on a file in it, which the kernel drops when the process ends, however it ends.
Models load as safetensors only unless pickle is explicitly allowed, remote code runs only when
asked, and weights that do not fit their config (or a tokenizer that outgrows the embeddings) are
refused rather than initialised at random.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"


class RunError(RuntimeError):
    """A run directory that cannot be used as asked: the message says why and what to do."""


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def locked(path: str | Path):
    """Hold an exclusive lock on `<path>.lock` (a sibling file): workers sharing one records file take it
    around each read-modify-write, so none loses another's record."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def write_status(run_dir: str | Path, state: str, **extra: Any) -> None:
    """Replace `status.json` atomically; a `running` status names its process so readers can tell a
    live run from one that was killed (`run_state`)."""
    record = {"state": state, "time": time.time(), **extra}
    if state == "running":
        record |= {"pid": os.getpid(), "host": socket.gethostname()}
    write_json_atomic(Path(run_dir) / STATUS_FILE, record)


RUN_INFO_FILE = "run_info.json"
# An option holds a secret when its name is one of these words or ends in `_<word>` (`--hub_token`,
# `--token`, `--openai_api_key`). Counts and sizes of tokens (`--max_new_tokens`) end otherwise, and
# the tokenizer's special tokens are named, not secret.
_SECRET_WORDS = ("token", "password", "passwd", "secret", "api_key", "apikey")
_NOT_SECRET = {f"{kind}_token" for kind in ("pad", "eos", "bos", "unk", "sep", "cls", "mask")}
# A Hugging Face access token: `hf_` and 34 letters and digits today; 30 or more is matched.
_HF_TOKEN = re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{30,}")
REDACTED = "<redacted>"


def is_secret_option(name: str) -> bool:
    """True for an option (or config field) whose value is a secret: `hub_token`, not `max_new_tokens`."""
    name = name.lstrip("-").lower().replace("-", "_")
    return name not in _NOT_SECRET and any(name == w or name.endswith(f"_{w}") for w in _SECRET_WORDS)


def redact_secrets(text: str) -> str:
    """`text` with every Hugging Face token in it (`hf_...`) replaced, wherever it appears."""
    return _HF_TOKEN.sub(REDACTED, text)


def redacted_argv(argv: list[str]) -> list[str]:
    """The command line with the value of every secret option replaced (`--hub_token X`, `--hub_token=X`,
    see `is_secret_option`) and any Hugging Face token replaced wherever it appears."""
    out, hide_next = [], False
    for arg in argv:
        if hide_next and not arg.startswith("--"):
            out.append(REDACTED)
            hide_next = False
            continue
        hide_next = False
        name, eq, _ = arg.partition("=")
        if arg.startswith("--") and is_secret_option(name):
            out.append(f"{name}={REDACTED}" if eq else arg)
            hide_next = not eq
            continue
        out.append(redact_secrets(arg))
    return out


def write_run_info(run_dir: str | Path, argv: list[str] | None = None) -> Path:
    """`run_info.json`: the command (secrets redacted) and the library versions behind a run."""
    import platform
    import shlex
    import sys
    from importlib.metadata import PackageNotFoundError, version

    argv = list(sys.argv if argv is None else argv)
    prog = Path(argv[0]).name if argv else "llm-unlearn"
    if prog in ("cli.py", "__main__.py", "-m", "-c"):
        prog = "llm-unlearn"
    versions = {}
    for package in ("llm_unlearn", "torch", "transformers", "accelerate", "peft", "huggingface_hub"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    info = {
        "command": shlex.join([prog, *redacted_argv(argv[1:])]),
        "python": platform.python_version(),
        "versions": versions,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return write_json_atomic(Path(run_dir) / RUN_INFO_FILE, info)


def read_status(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / STATUS_FILE
    if not path.is_file():
        return None
    try:
        status = json.loads(path.read_text())
    except json.JSONDecodeError:
        status = None
    if not isinstance(status, dict) or "state" not in status:
        raise RunError(f"{path} is not a status file of llm-unlearn; remove it or choose another directory")
    return status


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def run_state(status: dict | None) -> str | None:
    """`complete`, `failed`, `running` (its process is alive), or `interrupted` (status says running, but
    the process that wrote it is gone: killed, or the machine went down)."""
    if status is None:
        return None
    state = status["state"]
    if state == "running" and status.get("host") == socket.gethostname() and "pid" in status:
        if not _process_alive(int(status["pid"])):
            return "interrupted"
    return state


def require_complete(run_dir: str | Path, action: str) -> None:
    """Refuse to evaluate or publish a run of ours that did not finish."""
    status = read_status(run_dir)
    state = run_state(status)
    if status is not None and state != "complete":
        why = f": {status['error']}" if status.get("error") else ""
        if state == "running":
            fix = f"wait for it to finish (process {status.get('pid')})"
        else:
            fix = "resume it with the same command and --output_dir, or start a new one"
        raise RunError(f"run {run_dir} is {state}{why}; {action} needs a complete run ({fix})")


CLAIM_FILE = ".llm_unlearn.lock"


@contextlib.contextmanager
def claim_run_dir(run_dir: str | Path) -> Iterator[Path]:
    """Hold `run_dir` for this process alone while the block runs; a second process is refused at once.

    The claim is an exclusive `flock` on `run_dir/.llm_unlearn.lock` (holding `pid@host`), taken before
    anything is written into the folder and released, with the file, when the block ends. The kernel
    drops the lock of a process that dies (SIGKILL included), so a stale claim is never in the way of
    resuming. A folder this claim had to create is removed again if it is still empty at the end.
    """
    import fcntl

    out = Path(run_dir)
    try:
        out.mkdir(parents=True)
        created = True
    except FileExistsError:
        created = False
    if not out.is_dir():
        raise RunError(f"output dir {out} is a file; choose a new --output_dir")
    lock = out / CLAIM_FILE
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip()
            os.close(fd)
            raise RunError(
                f"output dir {out} is in use by another llm-unlearn process{f' ({holder})' if holder else ''}; "
                "wait for it to finish, or choose a new --output_dir"
            ) from None
        try:
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # its holder finished and removed it between our open and our lock: claim afresh
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}@{socket.gethostname()}".encode())
    try:
        yield out
    finally:
        os.unlink(lock)  # before the lock is dropped, so no one can lock the file being removed
        os.close(fd)
        if created and not any(out.iterdir()):
            out.rmdir()


def is_missing_local_path(path: str) -> bool:
    """True for a path meant to be local (`./x`, `/x`, `~/x`, `a/b/c`) that does not exist.

    A Hub id has the form `name` or `org/name`, so it never counts as missing here.
    """
    if Path(path).expanduser().exists():
        return False
    return path.startswith((".", "/", "~")) or path.count("/") > 1


def load_tokenizer(path: str, *, trust_remote_code: bool = False):
    """Load a tokenizer from a model folder, Hub id or `builtin:NAME`, checking a local path first."""
    from transformers import AutoTokenizer

    from .sources import resolve

    path = resolve(path)
    local = Path(path)
    if is_missing_local_path(path) or (local.exists() and not local.is_dir()):
        raise FileNotFoundError(
            f"model path {path} does not exist; pass a model folder, a Hub id, or build the default with `llm-unlearn demo`"
        )
    if local.is_dir() and not (local / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a model folder (no config.json); pass the folder a model was saved in"
        )
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as err:
        if local.exists():
            raise
        # Not a folder here, so it was read as a Hub id, and fetching it failed (no network, no such id).
        raise RunError(
            f"no folder {path!r} here, and fetching it as a Hub id failed ({str(err).splitlines()[0][:160]}); "
            "pass an existing model folder, or check the id and the network (HF_HUB_OFFLINE)"
        ) from None


def load_model(
    path: str, *, trust_remote_code: bool = False, allow_pickle: bool = False, torch_dtype: str = "float32"
):
    """Load a causal LM from a folder, Hub id or `builtin:NAME` (safetensors unless pickle is allowed).

    Every weight the config asks for must be in the files, with the config's shape, and every tensor in
    the files must have a place: transformers would initialise the rest at random and only warn.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from .sources import resolve

    path = resolve(path)
    local = Path(path)
    if local.is_dir() and not allow_pickle and not any(local.glob("*.safetensors")):
        raise RunError(
            f"{path} has no safetensors weights; convert them, or pass --allow_pickle if you trust the files"
        )
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[torch_dtype]
    with _without_load_report():
        model, info = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
            ignore_mismatched_sizes=True,  # reported below, as one line
            output_loading_info=True,
        )
    _check_loading_info(path, info)
    return model


def _names(keys, limit: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _check_loading_info(path: str, info: dict) -> None:
    problems = []
    if info["mismatched_keys"]:
        shapes = sorted(info["mismatched_keys"])
        key, in_file, in_config = shapes[0]
        problems.append(
            f"{len(shapes)} tensor(s) of another shape ({key}: {tuple(in_file)} in the weights, "
            f"{tuple(in_config)} by the config"
            f"{f', and {len(shapes) - 1} more' if len(shapes) > 1 else ''})"
        )
    if info["missing_keys"]:
        problems.append(f"{len(info['missing_keys'])} weight(s) missing ({_names(info['missing_keys'])})")
    if info["unexpected_keys"]:
        unexpected = info["unexpected_keys"]
        problems.append(f"{len(unexpected)} tensor(s) the config has no place for ({_names(unexpected)})")
    if problems:
        raise RunError(
            f"the weights in {path} do not fit its config.json: {'; '.join(problems)}; put the config.json "
            "saved with these weights beside them (or save the model again with save_pretrained)"
        )


@contextlib.contextmanager
def _without_load_report():
    """Hide transformers' multi-line load report: `_check_loading_info` says the same in one line."""
    import logging

    def no_report(record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)

    logger = logging.getLogger("transformers.modeling_utils")
    logger.addFilter(no_report)
    try:
        yield
    finally:
        logger.removeFilter(no_report)


def check_tokenizer_fits(tokenizer, model, path: str) -> None:
    """Refuse a tokenizer with ids past the model's input embeddings (they would fail mid-run)."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise RunError(
            f"the tokenizer in {path} has {len(tokenizer)} tokens but the model's input embeddings have {rows} "
            "rows; use the tokenizer the model was trained with, or resize the embeddings "
            "(model.resize_token_embeddings(len(tokenizer))) and save the model again"
        )


def load_model_and_tokenizer(
    path: str, *, trust_remote_code: bool = False, allow_pickle: bool = False, torch_dtype: str = "float32"
):
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    model = load_model(
        path, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, torch_dtype=torch_dtype
    )
    check_tokenizer_fits(tokenizer, model, path)
    return model, tokenizer


# ---------------------------------------------------------------------- checkpoints

CHECKPOINT_MARK = "llm_unlearn_checkpoint.json"


def _checkpoint_step(path: Path) -> int:
    suffix = path.name.rpartition("-")[2]
    return int(suffix) if suffix.isdigit() else -1


def checkpoints(run_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """(complete, incomplete) `checkpoint-N` folders of a run, oldest first.

    A checkpoint is complete once its mark is written, which happens after every file of it
    (weights, optimizer, scheduler, RNG and trainer state) is on disk; a folder without the mark was
    being written when the run died and is never resumed from.
    """
    found = sorted(
        (p for p in Path(run_dir).glob("checkpoint-*") if p.is_dir() and _checkpoint_step(p) >= 0),
        key=_checkpoint_step,
    )
    complete = [p for p in found if (p / CHECKPOINT_MARK).is_file()]
    return complete, [p for p in found if p not in complete]


def mark_checkpoint(folder: str | Path, step: int, train_log_bytes: int) -> None:
    """Declare a checkpoint complete; `train_log_bytes` is how much of `train_log.jsonl` it covers."""
    write_json_atomic(Path(folder) / CHECKPOINT_MARK, {"step": step, "train_log_bytes": train_log_bytes})


def read_checkpoint_mark(folder: str | Path) -> dict:
    return json.loads((Path(folder) / CHECKPOINT_MARK).read_text())
