"""Claiming run folders across processes: several ``cropi compare`` processes may share one folder (e.g. one
per core), and each run must be trained by exactly one of them.

A claim is the file ``RUN/.lock`` created with ``O_EXCL`` (atomic on a local filesystem) holding the claimer's
pid.  A lock whose process has died is taken over, so a crashed run resumes in whichever process gets to it
next."""

from __future__ import annotations

import os
from pathlib import Path

LOCK_NAME = ".lock"


def claim(run_dir: Path) -> bool:
    """Create ``run_dir/.lock`` holding this pid; False while another live process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_NAME
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if holder(run_dir) is not None:
                return False
            lock.unlink(missing_ok=True)  # its process died: the run resumes here
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return True
    return False


def holder(run_dir: Path) -> int | None:
    """The pid of the live process holding ``run_dir``'s lock; None when unlocked or its holder has died."""
    try:
        pid = int((run_dir / LOCK_NAME).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid and process_alive(pid) else None


def release(run_dir: Path) -> None:
    (run_dir / LOCK_NAME).unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True
