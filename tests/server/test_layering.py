"""The tree's rules, checked on the source: one door, one contract, wires only in transport.

- nothing in ``server/transport/`` imports ``server.core.backends`` or touches ``.catalog``;
- only ``server/transport/`` imports grpc or the HTTP framework;
- a backend never imports the service, the embedding package, a transport or the other backend;
- ``server/storage/`` never imports ``server.core``;
- no file in ``server/`` is over about 450 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVER = Path(__file__).resolve().parents[2] / "server"
FILES = sorted(SERVER.rglob("*.py"))


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def rel(path: Path) -> str:
    return path.relative_to(SERVER).as_posix()


@pytest.mark.parametrize("path", [p for p in FILES if rel(p).startswith("transport/")], ids=rel)
def test_transports_see_only_the_service(path):
    assert not [m for m in imports(path) if m.startswith("lookalike.server.core.backends")]
    tree = ast.parse(path.read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "catalog"]


# pymilvus talks gRPC to Milvus and raises grpc's errors: the Milvus client may catch them.
CLIENT_OF_A_GRPC_SERVICE = {"storage/milvus_store.py"}


@pytest.mark.parametrize(
    "path",
    [p for p in FILES if not rel(p).startswith("transport/") and rel(p) not in CLIENT_OF_A_GRPC_SERVICE],
    ids=rel,
)
def test_only_transport_imports_the_wire(path):
    wire = ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "fastapi", "uvicorn", "starlette")
    assert not [m for m in imports(path) if m.split(".")[0] in wire]


@pytest.mark.parametrize("path", [p for p in FILES if rel(p).startswith("core/backends/")], ids=rel)
def test_backends_stay_behind_the_contract(path):
    banned = ["lookalike.server.core.service", "lookalike.server.core.embedding", "lookalike.server.transport"]
    if rel(path).startswith("core/backends/builtin/"):
        banned.append("lookalike.server.core.backends.milvus")
    if rel(path).startswith("core/backends/milvus/"):
        banned.append("lookalike.server.core.backends.builtin")
    assert not [m for m in imports(path) if any(m.startswith(b) for b in banned)]


@pytest.mark.parametrize("path", [p for p in FILES if rel(p).startswith("storage/")], ids=rel)
def test_storage_does_not_know_the_core(path):
    assert not [m for m in imports(path) if m.startswith("lookalike.server.core")]


def test_no_file_is_a_pile():
    long = {rel(p): n for p in FILES if (n := len(p.read_text().splitlines())) > 460}
    assert not long, f"split these along their seams: {long}"
