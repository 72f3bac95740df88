"""One writer per run directory: an advisory lock that a second ``vaekit train`` refuses at once.

The lock is ``.NAME.lock`` beside the run directory ``NAME`` (beside, not inside: ``--force`` deletes
the directory and a failed fresh run removes it, and the lock must outlive both). The holder keeps
an exclusive ``flock`` on it and writes its PID and host into it. The kernel drops a ``flock`` when
its process dies however it dies (SIGKILL included), so a lock is never stuck: a file whose lock is
free but whose text names a process is the trace of one that did not get to remove it, and the next
writer takes it over with a note. Readers (``sample``, ``evaluate``, ``encode``) take no lock: they
read checkpoints, which are replaced by renames (:mod:`vaekit.checkpoint`).

Where ``fcntl`` does not exist (Windows) there is no lock.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from vaekit.errors import VaekitError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def lock_path(run_dir: str | os.PathLike) -> Path:
    """``.NAME.lock`` beside ``run_dir``."""
    run_dir = Path(os.path.abspath(run_dir))
    return run_dir.with_name(f".{run_dir.name}.lock")


def _holder(text: str) -> tuple[int | None, str]:
    """(PID, host) from a lock file's text, ``"pid host"``; (None, "") when unreadable."""
    parts = text.split()
    if parts and parts[0].isdigit():
        return int(parts[0]), parts[1] if len(parts) > 1 else ""
    return None, ""


def _refusal(run_dir: Path, path: Path, text: str) -> VaekitError:
    pid, host = _holder(text)
    who = f"process {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
    if pid is None:
        who = "another process"
    return VaekitError(
        f"{run_dir} is being written by {who} (lock {path}); wait for it to finish or stop it "
        "(a stopped run continues with `vaekit train --resume`)"
    )


def _note_stale(run_dir: Path, text: str) -> None:
    pid, _ = _holder(text)
    if pid is not None and pid != os.getpid():
        print(f"vaekit: taking over the lock of {run_dir} from process {pid}, which is gone", file=sys.stderr)


@contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of ``run_dir`` for the block, or raise :class:`VaekitError` naming the PID that
    holds it. Creates the parent folder if needed (not ``run_dir`` itself)."""
    run_dir = Path(run_dir)
    path = lock_path(run_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where a folder on the way should be
        raise VaekitError(f"cannot write {run_dir}: {os.strerror(errno.ENOTDIR)}") from None
    except OSError as err:
        raise VaekitError(f"cannot write {run_dir}: {err.strerror or err}") from None
    if fcntl is None:  # pragma: no cover - Windows: no flock
        yield path
        return
    fd = _acquire(run_dir, path)
    try:
        yield path
    finally:
        # unlink while holding it: a process that opens the old file then finds it replaced and retries
        with suppress(OSError):
            path.unlink()
        os.close(fd)


def _acquire(run_dir: Path, path: Path) -> int:
    """An fd holding an exclusive flock on ``path`` (the file at that path now, not a removed one)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise VaekitError(f"cannot write {path}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            text = os.pread(fd, 200, 0).decode(errors="replace")
            os.close(fd)
            raise _refusal(run_dir, path, text) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # its holder removed it between our open and our flock: take the new one
            os.close(fd)
            continue
        _note_stale(run_dir, os.pread(fd, 200, 0).decode(errors="replace"))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        return fd
