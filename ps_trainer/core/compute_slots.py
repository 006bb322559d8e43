"""ComputeSlots: at most k worker processes on one node compute at a time (node-local locks).

Where a node runs more workers than it has cores, the operating system time-slices them: a
step takes as long as all of them together, and while it runs every other worker pushes, so a
push is about as many versions stale as there are workers. Taking turns instead (k = the
node's cores) runs each step at full speed, so a push is about k - 1 versions stale, and the
tasks share the updates about evenly (as the single-process loop's round-robin does), at the
same throughput: the cores are busy either way.

A slot is an exclusive ``flock`` on one of k files named after the run, in a folder of the
node's temporary directory that only this user may enter (``ps_trainer-<uid>``, mode 0700,
refused if another user owns it): in the shared directory itself another user could create the
predictable names first and hold every slot, or point them elsewhere. The kernel lets a lock go
when its holder dies, so a killed worker never blocks the others. Waiters poll every
millisecond, and a worker that has just let a slot go waits a little longer than that before
it asks again, so that a waiting worker gets the turn (unless another
slot is free: then nobody waits, and it goes on at once).
"""
from __future__ import annotations

import fcntl
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import Optional

from ps_trainer.core.runtime import usable_cores

_POLL_S = 0.001
_AFTER_RELEASE_S = 0.003


def slot_count(setting) -> int:
    """`run.compute_slots_per_node` on this node: "cores" is the CPU cores this process may
    use (a container's share, not the host's)."""
    return usable_cores() if setting == "cores" else int(setting)


def private_lock_folder(base: Optional[str] = None) -> Path:
    """``<tmp>/ps_trainer-<uid>``, made 0700 for this user; a PermissionError if it exists and
    is not a directory this user owns and alone may enter."""
    folder = Path(base or tempfile.gettempdir()) / f"ps_trainer-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(folder)
    if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid()
            or stat.S_IMODE(info.st_mode) & 0o077):
        raise PermissionError(f"{folder} is not a private directory of this user (owner uid "
                              f"{info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}); remove it")
    return folder


class ComputeSlots:
    """``with slots: step()`` holds one of `count` node-wide slots for the step (0: no limit)."""

    def __init__(self, count: int, scope: str, directory: Optional[str] = None):
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", scope)
        folder = Path(directory) if directory else private_lock_folder()
        self._files = [open(folder / f"ps_trainer-{safe}-slot-{i}.lock", "a+b")
                       for i in range(count)]
        self._held = None
        self._last = None                  # the slot let go last
        self._released_at = 0.0

    def acquire(self) -> None:
        if not self._files:
            return
        pause = _AFTER_RELEASE_S - (time.monotonic() - self._released_at)
        if pause > 0:
            # Another slot free: nobody is waiting (a waiter would have taken it), go on.
            if self.try_acquire(skip=self._last):
                return
            time.sleep(pause)
        while not self.try_acquire():
            time.sleep(_POLL_S)

    def try_acquire(self, skip=None) -> bool:
        """Take a free slot if there is one (always True without slots)."""
        if not self._files:
            return True
        for f in self._files:
            if f is skip:
                continue
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            self._held = f
            return True
        return False

    def release(self) -> None:
        if self._held is not None:
            fcntl.flock(self._held, fcntl.LOCK_UN)
            self._last, self._held = self._held, None
            self._released_at = time.monotonic()

    def __enter__(self) -> "ComputeSlots":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def close(self) -> None:
        self.release()
        for f in self._files:
            f.close()
        self._files = []
