"""Shared fixtures: a real server on a loopback port with the real default model, real photos."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
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
    from lookalike.client import LookalikeClient

    with LookalikeClient(grpc_server.address) as c:  # type: ignore[attr-defined]
        yield c


@pytest.fixture
def db_name(client: object, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database per test, deleted afterwards."""
    import re

    name = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)[:60]
    client.create_database(name)  # type: ignore[attr-defined]
    yield name
    try:
        client.delete_database(name)  # type: ignore[attr-defined]
    except Exception:
        pass
