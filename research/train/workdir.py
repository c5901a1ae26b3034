"""A workdir belongs to one run: an exclusive lock on `WORKDIR/.lock` for the run's life.

`hold_workdir(workdir)` takes an `fcntl.flock` lock on `WORKDIR/.lock` and writes the holder's
pid and host into it. A second run on the same workdir (another `experiments.train`, another
sweep process, a notebook) gets `WorkdirBusy` at once, naming the workdir and the holder's pid.
The kernel drops a flock lock when its process dies, so the lock of a killed run (SIGKILL, a
crashed host) never blocks a rerun; the file itself stays and is simply taken over.

Within one process the lock is reentrant (a sweep holds a run's folder while the trainer, called
inside, takes it again). In a multi-process run only process 0 takes it, and every process learns
whether it succeeded, so all of them stop together. On a filesystem without flock support (some
FUSE mounts) the run warns and goes on unlocked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
import socket
import time
import warnings
from collections.abc import Iterator

import jax
import numpy as np

LOCK_NAME = ".lock"

# absolute lock path -> [file descriptor, depth] for the locks this process holds
_HELD: dict[str, list[int]] = {}


class WorkdirBusy(RuntimeError):
    """Another live process holds the workdir; the message names the workdir and its pid."""


def _holder(path: pathlib.Path) -> str:
    """The holder recorded in a lock file ("pid 123 on host h"), read a few times in case the
    holder has locked it but not yet written itself in."""
    for _ in range(10):
        try:
            text = path.read_text().strip()
        except OSError:
            text = ""
        if text:
            fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
            return f"pid {fields.get('pid', '?')} on {fields.get('host', '?')}"
        time.sleep(0.05)
    return "pid unknown"


def _lock(path: pathlib.Path) -> int | None:
    """Lock `path` for this process: its descriptor, or None if the filesystem has no flock.
    Raises WorkdirBusy if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        workdir = path.parent
        raise WorkdirBusy(
            f"workdir {workdir} is in use by another run ({_holder(path)}; lock file {path}). "
            "Wait for that run to finish or stop it, or use another --workdir.") from None
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            warnings.warn(f"cannot lock workdir {path.parent} ({e.strerror}); two runs on it "
                          "would not be stopped", stacklevel=3)
            return None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()} "
                  f"since={time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0)
    return fd


def _agree(ok: bool) -> bool:
    """Process 0's `ok`, on every process."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils
    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


@contextlib.contextmanager
def hold_workdir(workdir: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Hold `workdir` (created if missing) exclusively for the body; yields its absolute path.

    Raises:
      WorkdirBusy: another live process holds it (the message names the workdir and the pid).
    """
    workdir = pathlib.Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_NAME
    key = str(path)
    if key in _HELD:  # this process holds it already (a sweep, then the trainer inside it)
        _HELD[key][1] += 1
        try:
            yield workdir
        finally:
            _HELD[key][1] -= 1
        return
    fd, error = None, None
    if jax.process_index() == 0:
        try:
            fd = _lock(path)
        except WorkdirBusy as e:
            error = e
    if not _agree(error is None):
        raise error or WorkdirBusy(f"workdir {workdir} is in use by another run (process 0 "
                                   "could not lock it)")
    if fd is not None:
        _HELD[key] = [fd, 1]
    try:
        yield workdir
    finally:
        if fd is not None:
            del _HELD[key]
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
