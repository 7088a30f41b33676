"""Every mutation of the server's state, as one command with all its choices already made.

``intra_id``, the internal image id and the timestamp are chosen *before* a command is
logged, so replaying the write-ahead log reproduces exactly what was acknowledged.
Encoding: ``u32 header length | JSON header | float32 vectors`` (little endian).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

_LEN = struct.Struct("<I")


@dataclass(frozen=True)
class CreateDatabase:
    db: str
    dimension: int
    model: dict[str, Any]
    time: float
    storage: str = "f32"
    keep: str = "none"  # what it keeps of each image (core/keeping.py); older logs kept nothing


@dataclass(frozen=True)
class DropDatabase:
    db: str


@dataclass(frozen=True)
class SetItem:
    group_id: str
    intra_id: int
    image_id: int  # the stable internal id
    request_id: str = ""
    attributes: dict[str, str] | None = None
    fingerprint: str = ""  # what the request asked for, so a reused request id is told apart from a retry


@dataclass(frozen=True)
class SetImages:
    """One image (SetImage) or a chunk of a bulk stream: applied, and logged, as one unit."""

    db: str
    items: tuple[SetItem, ...]
    vectors: np.ndarray  # [len(items), dimension] float32, unit length
    time: float
    times: tuple[float, ...] | None = None  # per item (an imported copy keeps its times), else ``time``


@dataclass(frozen=True)
class DeleteImage:
    db: str
    group_id: str
    intra_id: int


@dataclass(frozen=True)
class DeleteGroup:
    db: str
    group_id: str


@dataclass(frozen=True)
class ClearDatabase:
    db: str


@dataclass(frozen=True)
class ReplaceDatabase:
    """Database ``source`` (a load, complete and verified) takes the name ``db``: one step, one record."""

    db: str
    source: str


@dataclass(frozen=True)
class RenameDatabases:
    """Databases take new names in one step (a reindex's switch, a rollback's swap); a database already holding a
    target name that is not itself moving is dropped."""

    moves: tuple[tuple[str, str], ...]

    @property
    def db(self) -> str:
        return self.moves[0][1]

    def dropped(self, names: set[str]) -> list[str]:
        """The databases (of ``names``, the ones that exist) this step drops."""
        sources = {src for src, _ in self.moves}
        return [dst for _, dst in self.moves if dst in names and dst not in sources]


Command = (CreateDatabase | DropDatabase | SetImages | DeleteImage | DeleteGroup | ClearDatabase | ReplaceDatabase
           | RenameDatabases)  # fmt: skip


def encode(cmd: Command) -> bytes:
    vectors = b""
    if isinstance(cmd, CreateDatabase):
        head: dict[str, Any] = {"op": "create", "db": cmd.db, "dim": cmd.dimension, "model": cmd.model, "t": cmd.time,
                                "storage": cmd.storage, "keep": cmd.keep}  # fmt: skip
    elif isinstance(cmd, DropDatabase):
        head = {"op": "drop", "db": cmd.db}
    elif isinstance(cmd, SetImages):
        head = {
            "op": "set",
            "db": cmd.db,
            "t": cmd.time,
            "items": [
                [
                    i.group_id,
                    i.intra_id,
                    i.image_id,
                    i.request_id,
                    *([i.attributes or {}, i.fingerprint] if i.fingerprint else [i.attributes] if i.attributes else []),
                ]
                for i in cmd.items
            ],
            "dim": int(cmd.vectors.shape[1]),
        }
        if cmd.times is not None:
            head["times"] = list(cmd.times)
        vectors = np.ascontiguousarray(cmd.vectors, dtype="<f4").tobytes()
    elif isinstance(cmd, DeleteImage):
        head = {"op": "del", "db": cmd.db, "g": cmd.group_id, "i": cmd.intra_id}
    elif isinstance(cmd, DeleteGroup):
        head = {"op": "delgroup", "db": cmd.db, "g": cmd.group_id}
    elif isinstance(cmd, ClearDatabase):
        head = {"op": "clear", "db": cmd.db}
    elif isinstance(cmd, ReplaceDatabase):
        head = {"op": "replace", "db": cmd.db, "source": cmd.source}
    elif isinstance(cmd, RenameDatabases):
        head = {"op": "rename", "moves": [list(m) for m in cmd.moves]}
    else:  # pragma: no cover - exhaustive
        raise TypeError(f"not a command: {cmd!r}")
    text = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode()
    return _LEN.pack(len(text)) + text + vectors


def decode(data: bytes) -> Command:
    (n,) = _LEN.unpack_from(data, 0)
    head = json.loads(data[_LEN.size : _LEN.size + n])
    op = head["op"]
    if op == "create":
        return CreateDatabase(head["db"], int(head["dim"]), head["model"], float(head["t"]), head.get("storage", "f32"),
                              head.get("keep", "none"))  # fmt: skip
    if op == "drop":
        return DropDatabase(head["db"])
    if op == "set":
        items = tuple(
            SetItem(
                it[0],
                int(it[1]),
                int(it[2]),
                it[3],
                (it[4] or None) if len(it) > 4 else None,
                it[5] if len(it) > 5 else "",
            )
            for it in head["items"]
        )
        vectors = np.frombuffer(data, dtype="<f4", offset=_LEN.size + n).reshape(len(items), int(head["dim"]))
        times = tuple(float(t) for t in head["times"]) if "times" in head else None
        return SetImages(head["db"], items, vectors.astype(np.float32), float(head["t"]), times)
    if op == "del":
        return DeleteImage(head["db"], head["g"], int(head["i"]))
    if op == "delgroup":
        return DeleteGroup(head["db"], head["g"])
    if op == "clear":
        return ClearDatabase(head["db"])
    if op == "replace":
        return ReplaceDatabase(head["db"], head["source"])
    if op == "rename":
        return RenameDatabases(tuple((str(a), str(b)) for a, b in head["moves"]))
    raise ValueError(f"unknown command {op!r} in the log")
