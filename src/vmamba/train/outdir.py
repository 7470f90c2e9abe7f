"""The output folder of a run: checked writable before any work, locked for the run's life,
and write errors (a full disk above all) reported with the path.

The lock is ``<out>/.lock``, held with ``fcntl.flock``: the kernel releases it when the process
ends, however it ends, so a lock left by a killed run is taken over (with a message) and a live
run's lock is never broken. On systems without ``fcntl`` the folder is not locked.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


class OutputError(OSError):
    """The output folder cannot be created or written, or is in use by another run (found before
    any work starts)."""


class WriteError(OutputError):
    """Writing an output failed during the run (a full disk, say); the message names the file."""


def describe_os_error(e: OSError, path) -> str:
    """'no space left on device writing PATH' and the like: what failed, and where."""
    if e.errno == errno.ENOSPC:
        return f"no space left on device writing {path}"
    if e.errno == errno.EDQUOT:
        return f"disk quota exceeded writing {path}"
    return f"cannot write {path}: {e.strerror or e}"


@contextmanager
def reported_writes(path):
    """Turn an OSError raised while writing ``path`` into an :class:`OutputError` naming it."""
    try:
        yield
    except OutputError:
        raise
    except OSError as e:
        raise WriteError(describe_os_error(e, path)) from e


class RunLock:
    """An exclusive lock on a run's output folder, held from :meth:`acquire` to :meth:`release`.

    ``acquire`` creates the folder (so an unwritable ``--out`` is found before any work) and
    returns a message when it took over the lock of a run that is no longer running.
    """

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.path = self.out / ".lock"
        self._file = None

    def acquire(self) -> str | None:
        if self.out.exists() and not self.out.is_dir():
            raise OutputError(f"--out {self.out}: a file is in the way (expected a folder)")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")
        except OSError as e:
            raise OutputError(f"--out {self.out}: {describe_os_error(e, self.path)}") from None
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(f)
                f.close()
                raise OutputError(f"--out {self.out} is in use by another vmamba train ({owner}); "
                                               f"wait for it to finish or choose another --out") from None
        previous = _read_owner(f)
        try:
            f.seek(0)
            f.truncate()
            f.write(json.dumps(dict(pid=os.getpid(), host=socket.gethostname(),
                                    started=time.strftime("%Y-%m-%d %H:%M:%S"))) + "\n")
            f.flush()
            os.fsync(f.fileno())
        except OSError as e:
            f.close()
            raise OutputError(f"--out {self.out}: {describe_os_error(e, self.path)}") from None
        self._file = f
        if previous and fcntl is not None:
            return f"taking over the lock of {self.out} left by a run that is no longer running ({previous})"
        return None

    def release(self) -> None:
        if self._file is None:
            return
        try:
            self._file.seek(0)
            self._file.truncate()  # an empty lock file: the run ended normally
        except OSError:
            pass
        self._file.close()  # closing releases the flock
        self._file = None


def _read_owner(f) -> str:
    """'pid N on HOST, started T' from a lock file's content, or '' when empty."""
    try:
        f.seek(0)
        text = f.read().strip()
    except OSError:
        return ""
    if not text:
        return ""
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return text[:100]
