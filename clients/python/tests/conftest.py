"""The Python client's tests. They import the client from this source tree (clients/python), whatever `hevlayer`
is installed, and the repository's sdk/ helpers (the recording fake, the live stack)."""

from __future__ import annotations

import sys
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[1]
REPO = CLIENT.parents[1]
sys.path[:0] = [str(CLIENT), str(REPO / "sdk")]
