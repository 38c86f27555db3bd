"""The read-your-writes check every request makes: is the instance's write
counter (shared memory) ahead of what this worker last loaded at?

    .venv/bin/pytest bench/test_write_counter.py --benchmark-only

Target: well under 1 us per request (it is one load from a mapped page).
"""

from __future__ import annotations

from model_router.engine.live import LiveConfig
from model_router.engine.write_counter import WriteCounter


def test_behind(benchmark, tmp_path):
    live = LiveConfig.__new__(LiveConfig)  # only the two fields the check reads
    live.writes = WriteCounter(tmp_path / "writes")
    live.writes.bump()
    live.writes_seen = 1
    assert not live.behind()
    benchmark(live.behind)
    assert benchmark.stats.stats.median < 1e-6
    live.writes.close()
