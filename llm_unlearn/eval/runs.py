"""What `llm-unlearn report` reads: run directories, or folders of them, and the original model's eval.

A run here is any folder with an `eval.json` (an unlearning run directory, or a model folder that
`llm-unlearn eval --output_dir` wrote to, like the demo's `target/` and `retain/`); beside it the
report uses `train_log.jsonl`, `probe.json` and `unlearn_config.yaml` when they exist. A folder
without `eval.json` is read as a folder of runs (its immediate subfolders). A run directory with a
`status.json` must be complete: named on the command line, an unfinished one is an error; found
inside a folder, it is left out and the report says so.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..runs.folder import STATUS_FILE, RunError, read_run_config, require_complete
from .tofu import load_eval

EVAL_FILE, TRAIN_LOG, PROBE_FILE = "eval.json", "train_log.jsonl", "probe.json"


@dataclass
class Run:
    """One model's artifacts. `label` names it in tables and legends."""

    label: str
    path: Path
    eval: dict
    train_log: list[dict] | None = None
    probe: dict | None = None
    config: dict | None = field(default=None, repr=False)


def read_train_log(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path} line {n} is not JSON ({err.msg}); the training log is damaged"
            ) from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {n} is not a JSON object; the training log is damaged")
        rows.append(row)
    return rows


def read_probe(path: Path) -> dict:
    try:
        probe = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err.msg}); rerun `llm-unlearn probe` on the run"
        ) from None
    if not isinstance(probe, dict) or not any(k in probe for k in ("relearn", "piggyback", "quant")):
        raise ValueError(
            f"{path} is not a probe.json of `llm-unlearn probe` (no relearn, piggyback or quant)"
        )
    return probe


def _probed_weights(probe: dict) -> Path | None:
    """The weights `probe` was measured on (`meta.models.unlearned`; `probe --out` can put the probe of one
    model beside another); None where it records none."""
    try:
        return Path(probe["meta"]["models"]["unlearned"])
    except (KeyError, TypeError):
        return None


def _is_own_probe(run_dir: Path, probe: dict) -> bool:
    probed = _probed_weights(probe)
    if probed is None:
        return False
    if probed.exists() and probed.resolve() == run_dir.resolve():
        return True
    # A copied or moved run: the same weights if their files hash as the probe recorded.
    from .cache import model_digest

    recorded = probe["meta"].get("unlearned_files_sha256")
    return bool(recorded) and recorded == model_digest(run_dir)


def run_probe(run_dir: Path) -> dict | None:
    """The run's `probe.json` when it probed this run's own weights, else None (report, card and push show
    and publish only that one)."""
    try:
        probe = json.loads((run_dir / PROBE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return probe if isinstance(probe, dict) and _is_own_probe(run_dir, probe) else None


def load_run(path: str | Path, label: str | None = None) -> Run:
    """Read one run folder; raises FileNotFoundError / RunError / ValueError with the fix."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"run directory {path} does not exist; pass a folder holding an eval.json")
    if not path.is_dir():
        raise ValueError(f"{path} is a file; pass the run directory that holds it")
    require_complete(path, "report")
    if not (path / EVAL_FILE).is_file():
        raise FileNotFoundError(
            f"{path} has no {EVAL_FILE}; evaluate it first: llm-unlearn eval --model_name_or_path {path} "
            "--data_dir DATA --reference_model RETAIN_ONLY_MODEL"
        )
    config = read_run_config(path) or None
    probe = (
        read_probe(path / PROBE_FILE) if (path / PROBE_FILE).is_file() else None
    )  # a damaged one is an error
    if probe is not None and not _is_own_probe(path, probe):
        logging.getLogger("llm_unlearn").warning(
            f"{path / PROBE_FILE} probed other weights ({_probed_weights(probe)}), not this run's: "
            "left out of the report"
        )
        probe = None
    return Run(
        label=label or path.resolve().name,
        path=path,
        eval=load_eval(path / EVAL_FILE),
        train_log=read_train_log(path / TRAIN_LOG) if (path / TRAIN_LOG).is_file() else None,
        probe=probe,
        config=config,
    )


def _is_run(path: Path) -> bool:
    return (path / EVAL_FILE).is_file() or (path / STATUS_FILE).is_file()


def collect_runs(paths: Sequence[str | Path]) -> tuple[list[Run], list[str]]:
    """The runs behind `paths` (each a run, or a folder of runs), and notes on runs left out.

    In a folder, plain evaluated model folders (no status.json: e.g. the target and the reference)
    come first, then the unlearning runs, each group by name.
    """
    if not paths:
        raise ValueError("no run directory given; pass one or more run directories or a folder of them")
    runs: list[Run] = []
    skipped: list[str] = []
    for given in map(Path, paths):
        if not given.exists():
            raise FileNotFoundError(
                f"run directory {given} does not exist; pass a folder holding an eval.json"
            )
        if not given.is_dir() or _is_run(given):
            runs.append(load_run(given))
            continue
        members = sorted(
            (p for p in given.iterdir() if p.is_dir() and _is_run(p)),
            key=lambda p: ((p / STATUS_FILE).is_file(), p.name),
        )
        if not members:
            raise FileNotFoundError(
                f"{given} holds no {EVAL_FILE} and no run directories with one; pass a run directory "
                "(evaluated with `llm-unlearn eval`) or a folder of them"
            )
        found = 0
        for member in members:
            try:
                runs.append(load_run(member))
                found += 1
            except (RunError, FileNotFoundError) as err:
                skipped.append(f"{member}: {err}")
        if not found:
            raise RunError(f"no complete, evaluated run in {given}: " + " | ".join(skipped))
    # One folder reached twice (named twice, or through a symbolic link) is one run, listed once.
    unique: dict[Path, Run] = {}
    for r in runs:
        unique.setdefault(r.path.resolve(), r)
    runs = list(unique.values())
    _unique_labels(runs)
    return runs, skipped


def _unique_labels(runs: list[Run]) -> None:
    """Folder names, lengthened by their parents' names until no two runs share one."""
    depth = 1
    while len({r.label for r in runs}) < len(runs) and depth < 6:
        depth += 1
        counts: dict[str, int] = {}
        for r in runs:
            counts[r.label] = counts.get(r.label, 0) + 1
        for r in runs:
            if counts[r.label] > 1:
                r.label = "/".join(r.path.resolve().parts[-depth:]).removeprefix("//")
    seen: dict[str, int] = {}
    for r in runs:  # two folders alike to six levels up
        seen[r.label] = seen.get(r.label, 0) + 1
        if seen[r.label] > 1:
            r.label = f"{r.label} ({seen[r.label]})"


def file_label(label: str) -> str:
    """A label as a file-name part: letters, digits, `.`, `_`, `-`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "run"


def _same_path(a: str | Path | None, b: str | Path | None) -> bool:
    if not a or not b:
        return False
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def find_target(runs: list[Run], target_eval: str | Path | None = None) -> tuple[Run | None, str]:
    """The original (pre-unlearning) model's eval, and how it was found.

    In order: `target_eval` (an eval.json, or a folder holding one); a run whose eval is of the model
    the unlearning runs started from (`model_name_or_path` in their unlearn_config.yaml); that model
    folder's own eval.json; a run labelled `target`. The returned run may be one of `runs` or new.
    """
    if target_eval is not None:
        path = Path(target_eval)
        if path.is_dir():
            path = path / EVAL_FILE
        for r in runs:
            if _same_path(r.path / EVAL_FILE, path):
                return r, f"--target_eval {target_eval}"
        result = load_eval(path)
        label = "target" if all(r.label != "target" for r in runs) else f"target ({path.parent.name})"
        return Run(label=label, path=path.parent, eval=result), f"--target_eval {target_eval}"
    origins = [
        r.config["model_name_or_path"] for r in runs if r.config and r.config.get("model_name_or_path")
    ]
    distinct = [o for i, o in enumerate(origins) if not any(_same_path(o, p) or o == p for p in origins[:i])]
    if len(distinct) > 1:  # one target for all would set some runs beside a model they never started from
        return None, (
            f"the runs started from different models ({', '.join(distinct)}): pass --target_eval for one of "
            "them, or report each group on its own"
        )
    for origin in origins:
        for r in runs:
            if _same_path(r.eval.get("meta", {}).get("model"), origin) or _same_path(r.path, origin):
                return r, f"the eval of {origin}, where the unlearning runs started"
    for origin in origins:
        if (Path(origin) / EVAL_FILE).is_file():
            return Run(label="target", path=Path(origin), eval=load_eval(Path(origin) / EVAL_FILE)), (
                f"{Path(origin) / EVAL_FILE}, where the unlearning runs started"
            )
    for r in runs:
        if r.label == "target":
            return r, "the run labelled `target`"
    return None, "not found"
