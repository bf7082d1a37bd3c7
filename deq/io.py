"""Files are never half-written (write beside the target, then rename over it), and a folder that
several processes may work on at once is guarded by a lock file."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class LockedError(RuntimeError):
    """Another process holds the lock (raised only by ``exclusive_lock(..., wait=False)``)."""


@contextmanager
def exclusive_lock(path: str | Path, wait: bool = True, what: str = "this folder") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    ``wait=True`` blocks until the holder lets go (processes preparing one dataset take turns);
    ``wait=False`` raises :class:`LockedError` naming the lock file and the holder's pid instead. The
    kernel drops the lock when its process dies, so a crash never leaves a stale lock behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "unknown"
            raise LockedError(f"another process (pid {holder}) is using {what}: {path} is locked; wait for it "
                              f"to finish or stop it") from None
        file.seek(0)
        file.truncate()
        file.write(str(os.getpid()))
        file.flush()
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def default_file_mode() -> int:
    """The mode ``open`` would give a new file (0o666 less the umask); ``mkstemp`` gives 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def log_to(path: str | Path) -> None:
    """Send this process's stdout and stderr (a traceback too) to ``path``: the first line of every
    workflow script, with the rule's ``log:`` file. The file stays open until the process exits."""
    import sys

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout = sys.stderr = open(path, "w", buffering=1)
