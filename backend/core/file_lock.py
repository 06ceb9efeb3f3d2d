"""An exclusive lock on a file, for one host's processes: tried once, or waited for."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path) -> Iterator[bool]:
    """Yields True while this caller holds the lock on `path` (made if missing), False when
    another open file holds it. Released when the block ends or the process dies. Keep the
    file: one removed while another process holds it open would let a third lock a new file
    of the same name beside the second."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def waited_file_lock(path: Path, timeout: float, poll: float = 0.05) -> Iterator[bool]:
    """As file_lock, but waits up to `timeout` seconds for the holder to let go: yields
    True once held, False if the wait ran out."""
    deadline = time.monotonic() + timeout
    while True:
        with file_lock(path) as held:
            if held or time.monotonic() >= deadline:
                yield held
                return
        time.sleep(poll)
