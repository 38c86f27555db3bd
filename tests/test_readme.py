"""The README's quick tour, run as written against a real server: every call
in it must succeed, so the README stays true."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def quick_tour() -> str:
    text = README.read_text()
    section = text.split("## Quick tour", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_quick_tour_runs_as_written(server, tmp_path):
    script = quick_tour()
    assert "make run &" in script
    script = script.replace("make run &", "")
    script = script.replace("http://localhost:3003", server.url)
    script = script.replace("curl -s ", "curl -sS --fail-with-body ")
    env = {**server.env, "MODEL_ROUTER_ADMIN_KEY": server.admin_key}
    done = subprocess.run(
        [
            "bash",
            "-euo",
            "pipefail",
            "-c",
            script.replace("export MODEL_ROUTER_ADMIN_KEY=dev-admin-key-0123456789", ""),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert '"dryRun":true' in done.stdout
