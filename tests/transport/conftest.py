"""Fixtures for the transport tests: a scripted upstream per test, a CA made at test time, a client per transport."""

from __future__ import annotations

import ssl
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.upstream_server import ScriptedUpstream
from tr_support import KINDS, Client


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def tls_upstream(ca: trustme.CA) -> Iterator[ScriptedUpstream]:
    """An https upstream whose certificate names `localhost` only (not 127.0.0.1)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    server = ScriptedUpstream(tls=ctx)
    yield server
    server.stop()


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_client(kind: str) -> Iterator[Callable[..., Client]]:
    """A client of the parametrized transport with the given settings (closed after the test)."""
    made: list[Client] = []

    def make(**settings: Any) -> Client:
        made.append(Client(kind, **settings))
        return made[-1]

    yield make
    for client in made:
        client.close()
