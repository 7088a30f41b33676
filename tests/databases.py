"""What the root and the backend-suite conftests share: a client per server, a fresh database per test."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest


def client_for(server: object) -> Iterator[object]:
    from lookalike.client import LookalikeClient

    with LookalikeClient(server.address) as c:  # type: ignore[attr-defined]
        yield c


def fresh_database(client: object, request: pytest.FixtureRequest) -> Iterator[str]:
    """A database named after the test, deleted afterwards."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)[:60]
    client.create_database(name)  # type: ignore[attr-defined]
    yield name
    try:
        client.delete_database(name)  # type: ignore[attr-defined]
    except Exception:
        pass
