"""Scratch folders in the system temp directory that a killed process does not leave behind for good.

`tempfile.TemporaryDirectory` removes its folder when the block ends, but a process killed with SIGKILL
(the OOM killer, a cancelled CI job) never reaches that. `scratch_dir` holds an exclusive lock on a file in
its folder while the block runs; the kernel drops it when the process ends, however it ends. So the next
command of the same kind tells an orphan (nobody holds its lock) from a live folder (another bench or push
running now, even in another container or pid namespace, where a pid would mislead) and clears the orphans.

This is the bottom layer: it imports nothing else from llm_unlearn.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".lock"
# A folder without its lock file yet is one being made now (mkdtemp, then the lock): left alone this long.
UNLOCKED_GRACE_S = 600


def _orphaned(folder: Path) -> bool:
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR)
    except FileNotFoundError:
        return time.time() - folder.stat().st_mtime > UNLOCKED_GRACE_S
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: its process is running
    finally:
        os.close(fd)  # also releases the lock just taken
    return True


def clear_orphans(prefix: str, root: str | Path | None = None) -> list[Path]:
    """Remove this user's `{prefix}{pid}-*` folders in `root` (the temp directory) that no live process holds;
    returns what was removed."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    for path in sorted(root.glob(f"{prefix}*-*")):
        pid = path.name[len(prefix) :].partition("-")[0]
        try:
            mine = path.lstat().st_uid == os.getuid()
        except OSError:
            continue
        if pid.isdigit() and mine and path.is_dir() and not path.is_symlink() and _orphaned(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def scratch_dir(prefix: str, root: str | Path | None = None) -> Iterator[str]:
    """An empty temporary folder inside `{root}/{prefix}{pid}-XXXX` (the pid for whoever looks), whose lock is
    held while the block runs and which is removed when it ends; orphans of earlier killed processes with the
    same prefix are cleared first. The lock file sits beside the folder given, which holds only what the
    caller puts there (push uploads all of it)."""
    clear_orphans(prefix, root)
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-", dir=root) as outer:
        fd = os.open(Path(outer) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            work = Path(outer) / "work"
            work.mkdir()
            yield str(work)
        finally:
            os.close(fd)
