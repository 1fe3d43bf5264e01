"""Drive the published hevlayer 0.7.3 client, which now lives beside the project's own `hevlayer`.

The project's client (clients/python) takes the import name `hevlayer` in the main environment, so the published
0.7.3 gets its own virtual environment: created on first use (pip install, under a minute), kept in the temp
directory and reused by later sessions. `run_published(script, *args)` runs a Python file under that interpreter and
returns the JSON of its last stdout line; a non-zero exit fails with the script's stderr.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

PUBLISHED = "hevlayer==0.7.3"
VENV = Path(tempfile.gettempdir()) / f"layer-published-hevlayer-0.7.3-py{sys.version_info[0]}{sys.version_info[1]}"
INSTALL_TIMEOUT_S = 600


@functools.cache
def published_python() -> Path:
    """The interpreter of the published client's virtual environment (created once; safe across processes)."""
    python = VENV / "bin" / "python"
    marker = VENV / ".installed"
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{VENV}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and marker.read_text() == PUBLISHED and python.exists():
            return python
        shutil.rmtree(VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=INSTALL_TIMEOUT_S)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", PUBLISHED],
                       check=True, timeout=INSTALL_TIMEOUT_S)
        marker.write_text(PUBLISHED)
    return python


def run_published(script: str | Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120.0) -> Any:
    """Run `script` (with `args`) under the published client's interpreter; the JSON of its last stdout line."""
    full_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("TURBOPUFFER_")}
    full_env.update(env or {})
    proc = subprocess.run([str(published_python()), str(script), *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited with {proc.returncode}:\n{proc.stderr[-6000:]}")
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{script} printed nothing; stderr:\n{proc.stderr[-2000:]}"
    return json.loads(lines[-1])
