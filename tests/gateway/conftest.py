"""Real processes for the gateway tests: local store(s) + 2-worker gateways on 127.0.0.1, started once per module."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gw_support import FAST_WATCH, Stack, _stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Store without index lag; gateway with a 1 MiB body limit and a 1.5 s upstream timeout."""
    yield from _stack(tmp_path_factory.mktemp("stack"), {},
                      {"LAYER_MAX_BODY_BYTES": str(1 << 20), "LAYER_UPSTREAM_TIMEOUT_MS": "1500", **FAST_WATCH})


@pytest.fixture(autouse=True)
def _no_faults_left(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "stack" in request.fixturenames:
        request.getfixturevalue("stack").clear_faults()
