"""The README's quick tour, run as written against a real server: every call
in it must succeed, so the README stays true."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from conftest import ROUTER, free_port

README = Path(__file__).parent.parent / "README.md"


def section(title: str) -> str:
    text = README.read_text().split(f"## {title}", 1)[1]
    return re.search(r"```bash\n(.*?)```", text, re.S).group(1)


def test_quick_tour_and_calling_a_model_run_as_written(make_server, tmp_path):
    server = make_server(MOCK_PROVIDER_KEY="anything")
    tour, calling = section("Quick tour"), section("Calling a model")
    assert "make run &" in tour
    mock_port = str(free_port())
    script = (tour.replace("make run &", "") + calling).replace("9100", mock_port)
    script = script.replace("http://localhost:3003", server.url)
    script = script.replace("curl -s ", "curl -sS --fail-with-body ")
    script = script.replace("export MODEL_ROUTER_ADMIN_KEY=dev-admin-key-0123456789", "")
    env = {
        **server.env,
        "MODEL_ROUTER_ADMIN_KEY": server.admin_key,
        "PATH": f"{ROUTER.parent}:{server.env.get('PATH', '')}",
    }
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert '"dryRun":true' in done.stdout
    assert '"requestId":"req-12345"' in done.stdout and '"modelId":"claude-mock"' in done.stdout
    assert "data: [DONE]" in done.stdout
    assert 'model_router_requests_total{model="claude-mock",status="200"} 3.0' in done.stdout
    assert '"modelId":"claude-mock","totals":{"requests":3,"attempts":3' in done.stdout
