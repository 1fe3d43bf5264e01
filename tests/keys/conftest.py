from __future__ import annotations

from collections.abc import Iterator

import pytest
from keys_support import Stack, start_stack, stop_stack
from support.aerospike import AerospikeServer, start_aerospike


@pytest.fixture(scope="module")
def aerospike_server() -> Iterator[AerospikeServer]:
    server = start_aerospike()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("keys-stack"))
    yield s
    stop_stack(s)
