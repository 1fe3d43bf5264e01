from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ls_support import Client
from support.procs import Proc, start_localstore


@pytest.fixture(scope="module")
def store_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_localstore(tmp_path_factory.mktemp("store"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(store_module: Proc) -> Client:
    return Client(store_module.url)


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[tuple[Proc, Path]]:
    """A per-test store with a known data dir (for restart tests)."""
    proc = start_localstore(tmp_path / "data")
    yield proc, tmp_path / "data"
    proc.stop()
