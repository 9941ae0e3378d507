"""runs/scratch.py: temp folders a SIGKILLed bench or push left are cleared by the next one, live ones kept."""

import os
import subprocess
import sys
from pathlib import Path

from llm_unlearn.runs.scratch import clear_orphans, scratch_dir


def _locked_elsewhere(folder: Path) -> subprocess.Popen:
    """A live process holding `folder`'s lock, as a running bench or push does."""
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)")  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(folder / ".lock")], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _ended_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_orphans_are_cleared_live_and_other_folders_kept(tmp_path):
    orphan = tmp_path / f"llm-unlearn-bench-{_ended_pid()}-abc"  # its lock file, held by nobody
    # The pid in a name is not trusted: in another pid namespace a live process's pid looks ended.
    running = tmp_path / f"llm-unlearn-bench-{_ended_pid()}-def"
    being_made = tmp_path / f"llm-unlearn-bench-{_ended_pid()}-new"  # no lock file yet
    stale = tmp_path / f"llm-unlearn-bench-{_ended_pid()}-old"  # no lock file for far too long
    other_kind = tmp_path / f"llm-unlearn-bench-eval-{_ended_pid()}-ghi"  # another prefix's folder
    old_style = tmp_path / "llm-unlearn-bench-xyz"  # no pid in its name: not ours to judge
    for folder in (orphan, running, being_made, stale, other_kind, old_style):
        (folder / "work").mkdir(parents=True)
        (folder / "work" / "w.bin").write_bytes(b"x")
    for folder in (orphan, running, other_kind, old_style):
        (folder / ".lock").touch()
    os.utime(stale, (0, 0))
    stray_file = tmp_path / f"llm-unlearn-bench-{_ended_pid()}-file"
    stray_file.write_text("not a folder")
    holder = _locked_elsewhere(running)
    try:
        assert clear_orphans("llm-unlearn-bench-", tmp_path) == sorted([orphan, stale])
        assert not orphan.exists() and not stale.exists()
        assert all(p.exists() for p in (running, being_made, other_kind, old_style, stray_file))
    finally:
        holder.kill()
        holder.wait()
    assert clear_orphans("llm-unlearn-bench-", tmp_path) == [running]  # its process has ended


def test_scratch_dir_is_named_after_its_process_and_removed(tmp_path):
    orphan = tmp_path / f"llm-unlearn-push-{_ended_pid()}-abc"
    orphan.mkdir()
    (orphan / ".lock").touch()
    with scratch_dir("llm-unlearn-push-", tmp_path) as tmp:
        assert Path(tmp).parent.name.startswith(f"llm-unlearn-push-{os.getpid()}-")
        assert list(Path(tmp).iterdir()) == []  # push uploads all of it: no lock file inside
        assert not orphan.exists()  # cleared on entry
        (Path(tmp) / "f").write_text("x")
        # A second scratch folder of this same process (a nested use) is not taken for an orphan.
        with scratch_dir("llm-unlearn-push-", tmp_path) as inner:
            assert Path(tmp).is_dir() and Path(inner).is_dir()
    assert list(tmp_path.iterdir()) == []
