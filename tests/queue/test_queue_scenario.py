"""The design's end-to-end scenario (pipelines-udfs.md §5 A, B) with the published hevlayer 0.7.3 client, per
backend. The client runs in its own interpreter: LAYER_PUBLISHED_CLIENT_PYTHON, else the published client's virtual
environment (tests/support/published_client.py; the project's own client owns the import name `hevlayer`).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from queue_support import BACKENDS, KEY, queue_stack
from support.published_client import published_python

SCRIPT = Path(__file__).resolve().parent / "published_scenario.py"
EXPECTED_LAST_STEP = "B16 gone"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", BACKENDS)
def test_published_client_scenario(backend: str, tmp_path: Path) -> None:
    python = os.environ.get("LAYER_PUBLISHED_CLIENT_PYTHON") or str(published_python())
    with queue_stack(tmp_path, backend) as stack:
        proc = subprocess.run([python, str(SCRIPT), stack.url, KEY], capture_output=True, text=True, timeout=240, check=False)
        assert proc.returncode == 0, f"{proc.stderr}\n{stack.logs()}"
        result = json.loads(proc.stdout)
        assert result["client"] == "0.7.3", f"{python} has hevlayer {result['client']}, not the published 0.7.3"
        failed = [s for s in result["steps"] if not s["ok"]]
        assert result["error"] is None and not failed, (
            f"{result['error']}\nlast steps: {json.dumps(result['steps'][-3:], indent=1)}\n{stack.logs()}")
        assert result["steps"][-1]["step"] == EXPECTED_LAST_STEP
        assert len(result["steps"]) >= 60
