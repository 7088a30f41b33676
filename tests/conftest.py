"""Shared fixtures: a real server on a loopback port with the real default model, real photos."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from databases import client_for, fresh_database
from photos import PHOTO_NAMES, photo


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    return {name: photo(name) for name in PHOTO_NAMES}


@pytest.fixture(scope="session")
def grpc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real server (default model) on 127.0.0.1 with a free port; ``.address`` is HOST:PORT."""
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    running = create_server(ServerConfig(port=0, data_dir=tmp_path_factory.mktemp("data")))
    yield running
    running.stop(0)


@pytest.fixture(scope="session")
def client(grpc_server: object) -> Iterator[object]:
    yield from client_for(grpc_server)


@pytest.fixture
def db_name(client: object, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database per test, deleted afterwards."""
    yield from fresh_database(client, request)
