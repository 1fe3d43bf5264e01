from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.procs import LOG_DIR, STORE_KEY, Proc, start_gateway, start_localstore


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False,
                     help="soak mode: run the randomized cache coherence test for minutes instead of seconds")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Keep only this run's process logs (a failing test's log stays for reading after the run)."""
    if LOG_DIR.is_dir():
        for old in LOG_DIR.glob("*.log"):
            old.unlink(missing_ok=True)


@pytest.fixture
def localstore(tmp_path: Path) -> Iterator[Proc]:
    """A fresh local store (its own data dir) for one test."""
    proc = start_localstore(tmp_path / "store")
    yield proc
    proc.stop()


@pytest.fixture
def gateway_stack(tmp_path: Path) -> Iterator[tuple[Proc, Proc]]:
    """A local store with a fixed key and a 2-worker gateway in front of it: (gateway, store)."""
    store = start_localstore(tmp_path / "store", LOCALSTORE_API_KEY=STORE_KEY)
    gw = start_gateway(store.url, STORE_KEY, tmp_path / "gateway")
    yield gw, store
    gw.stop()
    store.stop()
