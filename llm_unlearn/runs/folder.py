"""Run directories: atomic JSON writes, `status.json`, claims, checkpoint marks, and the cache folder.

A run directory explains itself: `status.json` says whether it is `running`, `complete` or `failed`
(with the error); files are written under a temporary name and renamed, so a crash never leaves a
file that looks complete. One process at a time writes into a run directory: `claim_run_dir` holds
an exclusive lock on a file in it, which the kernel drops when the process ends, however it ends.
Everything the toolkit builds once and reuses (default models, built-in sources, evaluations) lives
under `cache_root()`.

This is the bottom layer: it imports nothing else from llm_unlearn.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .redact import redact_secrets, redacted_argv

STATUS_FILE = "status.json"
# The resolved settings a run trained with (pipeline/unlearn.py, pipeline/distill.py write it).
CONFIG_FILE = "unlearn_config.yaml"


def cache_root() -> Path:
    """The toolkit's cache folder: `$LLM_UNLEARN_CACHE`, else `~/.cache/llm_unlearn` (the one reader of it)."""
    return Path(os.environ.get("LLM_UNLEARN_CACHE", Path.home() / ".cache" / "llm_unlearn"))


class RunError(RuntimeError):
    """A run directory that cannot be used as asked: the message says why and what to do."""


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """`obj` as JSON, replaced atomically; a Hugging Face token anywhere in it (a system prompt, a run name:
    eval.json and the eval cache record those) is written redacted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, redact_secrets(json.dumps(obj, indent=2, default=str)) + "\n")


def strict_json(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, inf) as None: `json.dumps` would write a bare `NaN`, which
    Python reads and strict JSON readers (jq, JavaScript, most other languages) refuse."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def append_jsonl(path: str | Path, record: dict) -> None:
    """One line of strict JSON appended to `path` (a training log): non-finite values become null."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(strict_json(record), allow_nan=False, default=str) + "\n")


@contextlib.contextmanager
def locked(path: str | Path, waiting: str | None = None):
    """Hold an exclusive lock on `<path>.lock` (a sibling file): workers sharing one records file take it
    around each read-modify-write, so none loses another's record; a cache entry built once is built
    inside it, so a second process waits and then finds it. `waiting` is logged when the lock is taken."""
    import fcntl
    import logging

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f"{path.name}.lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                logging.getLogger("llm_unlearn").info(waiting)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # mkstemp makes the file 0600: the records get what a plain open gives (so do the weights: plain_permissions)
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:  # a full disk, a folder where the file should go, an interrupt: no stray file
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def ended_by(err: BaseException) -> tuple[str, dict]:
    """(state, fields) of a run that `err` ended: `interrupted` for Ctrl-C or SIGTERM (as a killed run reads),
    else `failed` with the error."""
    text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return ("interrupted" if isinstance(err, KeyboardInterrupt) else "failed"), {"error": text}


def move_into_place(tmp: Path, dest: Path, fix: str) -> None:
    """Rename the finished folder `tmp` to `dest`, which must be new (or an empty folder). A `dest` that
    another process made meanwhile is refused by its own name, not the temporary folder's; `fix` says what
    to do instead."""
    import errno

    try:
        os.replace(tmp, dest)
    except OSError as err:
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise FileExistsError(
                f"{dest} appeared while this command wrote it (another process?); {fix}"
            ) from None
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def plain_permissions(folder: str | Path) -> None:
    """Give the files of a saved model (and its `adapter/`) the permissions a plain open gives: safetensors
    writes the weights 0600, so on a shared machine others could read a run's records but not its model."""
    mode = 0o666 & ~_umask()
    for path in [*Path(folder).glob("*"), *Path(folder).glob("adapter/*")]:
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o777 == 0o600:
            path.chmod(mode)


def make_temp_dir(parent: str | Path, prefix: str) -> Path:
    """`tempfile.mkdtemp` in `parent`, with the permissions a plain `mkdir` gets: mkdtemp makes it 0700, and
    the folder it is renamed into (a world, models, a staged upload) is then unreadable to anyone else."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def write_status(run_dir: str | Path, state: str, **extra: Any) -> None:
    """Replace `status.json` atomically; a `running` status names its process so readers can tell a
    live run from one that was killed (`run_state`)."""
    record = {"state": state, "time": time.time(), **extra}
    if state == "running":
        record |= {"pid": os.getpid(), "host": socket.gethostname()}
    write_json_atomic(Path(run_dir) / STATUS_FILE, record)


RUN_INFO_FILE = "run_info.json"


def write_run_info(
    run_dir: str | Path, argv: list[str] | None = None, resumed_from: str | None = None
) -> Path:
    """`run_info.json`: the command (secrets redacted) and the library versions behind a run.

    Written again when the run goes on (resumed, or rerun for its final evaluation), it keeps the first
    start time and the `resumes` so far; a resume from the checkpoint `resumed_from` adds an entry: which
    checkpoint, when, and whether the optimizer and schedule came with it (a model-only checkpoint starts
    them afresh, so the rest of the run differs from an uninterrupted one)."""
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
    path = Path(run_dir) / RUN_INFO_FILE
    try:
        earlier = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        earlier = {}
    earlier = earlier if isinstance(earlier, dict) else {}
    resumes = list(earlier.get("resumes") or [])
    if resumed_from is not None:
        checkpoint = Path(resumed_from)
        resumes.append({"checkpoint": checkpoint.name, "time": info["started"],
                        "optimizer_restored": any(checkpoint.glob("optimizer*"))})  # fmt: skip
    info["started"] = earlier.get("started", info["started"])
    if resumes:
        info["resumes"] = resumes
    return write_json_atomic(path, info)


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


def read_run_config(run_dir: str | Path, *, required: bool = False) -> dict:
    """A run's `unlearn_config.yaml` as a dict: `{}` where the run saved none (a `RunError` if `required`),
    and one line naming the file when it is not the mapping the toolkit wrote (hand-edited, truncated)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        if required:
            raise RunError(
                f"{run_dir} has no {CONFIG_FILE}; pass the run directory that `llm-unlearn unlearn` wrote"
            )
        return {}
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise RunError(
            f"{path} is not readable YAML ({type(err).__name__}); restore the file the run wrote"
        ) from None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise RunError(
            f"{path} holds a {type(config).__name__}, not the run's settings; restore the file the run wrote"
        )
    return config


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
    the process that wrote it is gone: killed, or the machine went down). A run trained to the end whose
    command evaluates it next (`FINAL_EVAL` pending) is `evaluating` while that process lives and
    `unevaluated` once it is gone: its eval.json is not, or not yet, the final one."""
    if status is None:
        return None
    state = status["state"]
    gone = (
        status.get("host") == socket.gethostname()
        and "pid" in status
        and not _process_alive(int(status["pid"]))
    )
    if state == "running" and gone:
        return "interrupted"
    if state == "complete" and status.get(FINAL_EVAL) == "pending":
        return "unevaluated" if gone else "evaluating"
    return state


# The status key that says a complete run's own command is still to evaluate it (`unlearn` writes it,
# the eval.json written into the run removes it: `mark_evaluated`).
FINAL_EVAL = "final_eval"


def pending_evaluation() -> dict:
    """The status fields of a run complete but for its command's own evaluation, which this process runs next."""
    return {FINAL_EVAL: "pending", "pid": os.getpid(), "host": socket.gethostname()}


def mark_evaluated(run_dir: str | Path) -> None:
    """Drop a pending final evaluation from the status once the run's eval.json is written."""
    status = read_status(run_dir)
    if status is not None and FINAL_EVAL in status:
        kept = {k: v for k, v in status.items() if k not in (FINAL_EVAL, "pid", "host", "state", "time")}
        write_status(run_dir, status["state"], **kept)


def require_complete(run_dir: str | Path, action: str) -> None:
    """Refuse to evaluate or publish a run of ours that did not finish."""
    status = read_status(run_dir)
    state = run_state(status)
    if action == "eval" and state in ("evaluating", "unevaluated"):
        return  # trained to the end: evaluating it is what is left (its own command does, or the user)
    if state == "evaluating":
        raise RunError(
            f"run {run_dir} is being evaluated by process {status['pid']} on {status.get('host', 'this machine')}; "
            f"{action} needs its eval.json (wait for it to finish)"
        )
    if state == "unevaluated":
        raise RunError(
            f"run {run_dir} was trained to the end but its final evaluation was cut short; {action} needs its "
            f"eval.json: rerun the command that made it (it only evaluates now) or `llm-unlearn eval "
            f"--model_name_or_path {run_dir} ...`"
        )
    if status is not None and state != "complete":
        why = f": {status['error']}" if status.get("error") else ""
        if state == "running":
            who = (
                f"process {status['pid']} on {status.get('host', 'this machine')}"
                if status.get("pid")
                else None
            )
            fix = f"wait for it to finish ({who})" if who else "wait for it to finish"
        elif str(status.get("error", "")).startswith("NonFiniteLossError"):  # resuming would diverge again
            fix = "start a new run with a lower --learning_rate"
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


def mark_checkpoint(
    folder: str | Path, step: int, train_log_bytes: int, train_seconds: float | None = None
) -> None:
    """Declare a checkpoint complete; `train_log_bytes` is how much of `train_log.jsonl` it covers,
    `train_seconds` how long training took to reach it (over every resume), where known."""
    mark = {"step": step, "train_log_bytes": train_log_bytes}
    if train_seconds is not None:
        mark["train_seconds"] = round(train_seconds, 2)
    write_json_atomic(Path(folder) / CHECKPOINT_MARK, mark)


class TrainClock:
    """Training seconds over a run's resumes: those its checkpoint's mark recorded, plus this process's."""

    def __init__(self, resumed_from: str | Path | None = None):
        self.before = read_checkpoint_mark(resumed_from).get("train_seconds", 0.0) if resumed_from else 0.0
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start


def mark_and_rotate(
    run_dir: str | Path, step: int, keep: int | None, clock: TrainClock | None = None
) -> Path:
    """Mark `checkpoint-{step}` complete, then delete all but the newest `keep` complete checkpoints.

    In this order on purpose: an older checkpoint goes only once a newer one is known to be whole, so a
    run killed at any moment keeps at least one checkpoint it can resume from.
    """
    out = Path(run_dir)
    folder = out / f"checkpoint-{step}"
    log = out / "train_log.jsonl"
    mark_checkpoint(folder, step, log.stat().st_size if log.is_file() else 0, clock and clock.seconds())
    complete, _ = checkpoints(out)
    if keep:
        for old in complete[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def read_checkpoint_mark(folder: str | Path) -> dict:
    return json.loads((Path(folder) / CHECKPOINT_MARK).read_text())
