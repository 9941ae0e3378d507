"""What every resumable study in benchmarks/ shares: plan, skip what is recorded, run, append, report.

A study is a list of planned runs (dicts); `key(run)` names a run. Its JSON record holds
`{"baseline": {...}, "runs": [...], "size": ...}` (at the top level, or under `section` when one file
holds several studies); a run is appended under a file lock as soon as it finishes, so an
interrupted study (or two processes sharing one record) resumes with what is left.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from pathlib import Path

from llm_unlearn.runs.folder import locked, write_json_atomic


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", action="store_true", help="list the runs still to do, run nothing")
    parser.add_argument("--report_only", action="store_true", help="rewrite the table and plot from the JSON")


def read(out: Path, section: str | None = None) -> dict:
    """The study's state: the whole file, or its `section` (empty where there is none yet)."""
    state = json.loads(out.read_text()) if out.exists() else {}
    if section is not None:
        state = state.get(section, {})
    return {"baseline": {}, "runs": []} | state


def run_study(
    planned: list[dict],
    out: Path,
    key: Callable[[dict], tuple],
    args: argparse.Namespace,
    execute: Callable[[list[dict]], None],
    report: Callable[[dict], None],
    section: str | None = None,
) -> None:
    """Print what is planned and recorded; run what is left unless `--plan`/`--report_only`; rewrite the report."""
    done = {key(r) for r in read(out, section)["runs"]}
    todo = [r for r in planned if key(r) not in done]
    print(f"{len(planned)} runs planned, {len(planned) - len(todo)} already recorded, {len(todo)} to run")
    if args.plan:
        for r in todo:
            print(r)
        return
    if todo and not args.report_only:
        execute(todo)
    if out.exists():
        with locked(out):
            report(read(out, section))


def append(
    out: Path, records: Iterable[dict], baseline: dict | None = None, section: str | None = None, **fields
) -> None:
    """Append finished runs (and merge their baseline and `fields`) into the record, under its lock."""
    with locked(out):
        whole = json.loads(out.read_text()) if out.exists() else {}
        state = read(out, section)
        state["baseline"] |= baseline or {}
        state.update(fields)
        state["runs"] += list(records)
        if section is None:
            whole = state
        else:
            whole[section] = state
        write_json_atomic(out, whole)
