"""How many config writes the workers of this instance have made, in shared
memory.

Granian's workers are processes forked on one machine. The worker that takes
a config write bumps this counter once the store has the write and before it
answers; every request compares the counter with the count its worker had
seen when it last loaded the config, and reloads first when it moved. So once
a write has answered 2xx, the next request on any worker routes under it. The
check is one load from a mapped page (tens of nanoseconds); the file is named
after the port, which only one instance can hold.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import tempfile
from pathlib import Path

_SIZE = 8  # one signed 64-bit count


def counter_path(port: int) -> Path:
    """In /dev/shm (memory) where it can be written, else the temp directory."""
    shm = Path("/dev/shm")
    directory = shm if os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return directory / f"model-router-{port}.writes"


class WriteCounter:
    def __init__(self, path: Path):
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < _SIZE:
            os.ftruncate(self._fd, _SIZE)
        self._map = mmap.mmap(self._fd, _SIZE)
        self._count = memoryview(self._map).cast("q")

    def read(self) -> int:
        return self._count[0]

    def bump(self) -> None:
        # Writes are rare: a file lock keeps two workers' increments whole.
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._count[0] += 1
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._count.release()
        self._map.close()
        os.close(self._fd)
