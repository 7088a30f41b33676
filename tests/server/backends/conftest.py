"""The backend-independent suite: every test in this folder runs against the built-in store and
against Milvus (``milvus-lite server`` on a loopback port, driven by the real pymilvus).

Milvus runs with a FLAT index here so that results are exact and must equal the built-in
store's (HNSW recall is measured in bench/backends.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from databases import client_for, fresh_database
from milvus_server import MilvusLite

DIM = 1280
EXACT = ("exact", "milvus-flat")  # what SearchResponse.index says for an exact answer on each backend


def unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="session")
def milvus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusLite]:
    server = MilvusLite(tmp_path_factory.mktemp("milvus") / "data")
    yield server
    server.stop()


@pytest.fixture(scope="session", params=["builtin", "milvus"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def grpc_server(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    """A real server with the default model on a free port, on the backend under test."""
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    options: dict[str, object] = {}
    if backend == "milvus":
        uri = request.getfixturevalue("milvus").uri
        options = {"index": "milvus", "milvus_uri": uri, "milvus_index": "FLAT", "milvus_prefix": "suite_"}
    running = create_server(ServerConfig(port=0, data_dir=tmp_path_factory.mktemp(f"data-{backend}"), **options))
    yield running
    running.stop(0)


# The root conftest's ``client`` and ``db_name`` are session fixtures too: if they were created
# earlier in the session they would stay bound to the root server. These are bound to the
# backend under test (each parameter gets its own).
@pytest.fixture(scope="session")
def client(grpc_server: object) -> Iterator[object]:
    yield from client_for(grpc_server)


@pytest.fixture
def db_name(client: object, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database per test on the backend under test, deleted afterwards."""
    yield from fresh_database(client, request)


@pytest.fixture(autouse=True)
def _on_the_backend_under_test(request: pytest.FixtureRequest) -> None:
    """Every suite test must talk to the server of its backend parameter, never another one."""
    if "grpc_server" not in request.fixturenames:
        return  # Milvus-only tests start their own servers
    server = request.getfixturevalue("grpc_server")
    expected = {"builtin": "Catalog", "milvus": "MilvusCatalog"}[request.getfixturevalue("backend")]
    assert type(server.service.catalog).__name__ == expected
    if "client" in request.fixturenames:
        assert request.getfixturevalue("client").address == server.address
