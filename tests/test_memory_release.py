"""Freed heap memory goes back to the system: glibc keeps the free blocks
between blocks still in use (as a burst of connections leaves them) until
`malloc_trim`, which each worker runs on a beat.

Each case runs in a process of its own, whose resident memory is its own.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's; RSS read from /proc"
)

MEASURE = """
from pathlib import Path

def resident_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
"""
# 512 blocks of 64 KiB (below glibc's mmap threshold: they come from the
# heap), every other one freed: 16 MiB free between blocks still in use, 15
# of it in whole pages (a free block keeps its first page's list pointers).
FRAGMENT = """
blocks = [bytearray(64 * 1024) for _ in range(512)]
del blocks[::2]
before = resident_mib()
"""


def released_mib(script: str) -> float:
    """How much less memory a process held when `script` set `released`
    than just after its FRAGMENT freed the 16 MiB."""
    script = "\n".join((MEASURE, script, "print(released)"))
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return float(out.stdout.split()[-1])


def test_release_free_memory_hands_back_the_pages_between_blocks_in_use():
    setup = "import time\nfrom model_router._core import release_free_memory\n" + FRAGMENT
    released = "\nreleased = before - resident_mib()"
    assert released_mib(setup + "assert release_free_memory()" + released) > 12
    # Without it, glibc holds them: what makes the release the cause.
    assert released_mib(setup + "time.sleep(0.1)" + released) < 2


def test_a_running_service_releases_free_memory_within_its_beat(tmp_path: Path):
    started = f"""
import asyncio
from model_router.service import MEMORY_RELEASE_MS, Service
from model_router.settings import Settings
from model_router._core import Clients

async def main():
    global before, blocks, released
    service = Service(Settings.from_env({{"MODEL_ROUTER_DATA_DIR": {str(tmp_path)!r}}}), Clients(0))
    await service.start()
    try:
{textwrap.indent(FRAGMENT, " " * 8)}
        # Within a beat, or two on a busy machine.
        for _ in range(2 * MEMORY_RELEASE_MS // 50):
            await asyncio.sleep(0.05)
            released = before - resident_mib()
            if released > 12:
                break
    finally:
        await service.stop()

asyncio.run(main())
"""
    assert released_mib(started) > 12
