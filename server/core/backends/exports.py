"""Exports, both ways: what an export holds once read back and checked, and rows written as one.

Both backends write and read the one format (``builtin/snapshot_files.py``), so a database moves
between them; here are the checks an import makes first (checksums, records, the model) and the
error a failed write maps to. Kept images travel beside the rows (``core/keeping.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from lookalike.server.core.backends.api import Entry, Loaded, describe_model
from lookalike.server.core.errors import ErrorKind, LookalikeError, invalid, not_found
from lookalike.server.core.validation import check_attributes, check_group_id, check_intra_id

IMPORT_CHUNK = 4096  # rows written per step of an import


@dataclass
class ExportedDatabase:
    """An export as read back: its model, layout and rows, whatever backend wrote it."""

    model: dict[str, Any]
    dimension: int
    create_time: float
    storage: str
    size: int
    entries: Callable[[], Iterator[list[Entry]]]  # the rows, a chunk at a time, in key order
    keep: str = "none"  # what the exported database kept of its images (their blobs travel in images/)


def read_export_for(location: str, oss: Any, loaded: Loaded) -> ExportedDatabase:
    """An export read, verified (every file's checksums) and checked for import on a server running the ``loaded``
    models (identity, dimension; the default first): its vectors must be one of theirs."""
    from lookalike.server.core.backends.builtin.snapshot_files import RecordInvalid, read_export
    from lookalike.server.storage.segments import CorruptionError

    try:
        source = read_export(location, oss)
    except RecordInvalid as exc:
        raise invalid(
            "EXPORT_RECORD_INVALID",
            f"record {exc.position} is invalid: {exc.why}; nothing was imported",
            record=str(exc.position),
        ) from None
    except FileNotFoundError as exc:
        raise not_found("EXPORT_NOT_FOUND", str(exc)) from None
    except CorruptionError as exc:
        raise invalid("EXPORT_CORRUPT", f"the export is damaged: {exc}") from None
    except ConnectionError:
        raise LookalikeError(ErrorKind.UNAVAILABLE, "OSS_UNREACHABLE",
                             f"could not read {location}: the OSS endpoint could not be reached") from None  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise invalid("EXPORT_UNREADABLE", f"could not read {location} as an export: {exc}") from None
    if not any(source.model.get("digest") == m.get("digest") and source.dimension == d for m, d in loaded):
        runs = ", ".join(describe_model(m) for m, _ in loaded)
        raise LookalikeError(
            ErrorKind.FAILED_PRECONDITION, "MODEL_MISMATCH",
            f"the export holds vectors of model {describe_model(source.model)}, but this server runs {runs}; "
            "import it on a server started with that model (--model NAME=PATH)",
        )  # fmt: skip

    try:
        rows, _ = source.list(group_id=None, after=None, limit=source.size)
    except Exception as exc:  # a hand-edited export can hold anything; never an INTERNAL later
        raise invalid(
            "EXPORT_RECORD_INVALID", f"the export's records cannot be read ({exc}); nothing was imported"
        ) from None
    for position, entry in enumerate(rows):
        check_record(position, entry, source.dimension)

    def entries() -> Iterator[list[Entry]]:
        for start in range(0, len(rows), IMPORT_CHUNK):
            yield rows[start : start + IMPORT_CHUNK]

    return ExportedDatabase(source.model, source.dimension, source.create_time, source.storage, source.size, entries,
                            source.keep)  # fmt: skip


def write_export_entries(
    name: str,
    dimension: int,
    model: dict[str, Any],
    create_time: float,
    batches: Iterator[list[Entry]],
    location: str,
    oss: Any,
    keep: str = "none",
) -> tuple[int, int]:
    """Write rows as an export (the one format both backends read); returns (bytes, images).

    Raises ``LookalikeError`` when the location cannot be written.
    """
    from lookalike.server.core.backends.builtin.snapshot_files import export_entries

    try:
        return export_entries(name, dimension, model, create_time, batches, location, oss, keep)
    except (OSError, ValueError) as exc:
        raise export_failed(location, exc) from None


def export_failed(location: str, exc: BaseException) -> LookalikeError:
    """Permanent causes (a file in the way, no permission, OSS refused) are FAILED_PRECONDITION; the rest retryable."""
    if isinstance(exc, (NotADirectoryError, FileExistsError, IsADirectoryError, PermissionError)):
        return LookalikeError(ErrorKind.FAILED_PRECONDITION, "DESTINATION_INVALID",
                              f"could not write the export to {location}: a file is in the way, or it is not "
                              "writable by the server")  # fmt: skip
    status = getattr(exc, "status", None)
    if isinstance(exc, ValueError) or (isinstance(status, int) and 400 <= status < 500):
        return LookalikeError(ErrorKind.FAILED_PRECONDITION, "EXPORT_FAILED",
                              f"could not write the export to {location}: {exc}")  # fmt: skip
    if isinstance(exc, ConnectionError):
        return LookalikeError(ErrorKind.UNAVAILABLE, "OSS_UNREACHABLE",
                              f"could not write the export to {location}: OSS was not reached")  # fmt: skip
    return LookalikeError(ErrorKind.UNAVAILABLE, "EXPORT_FAILED", f"could not write the export to {location}: {exc}")


def check_record(position: int, entry: Entry, dimension: int) -> None:
    """An imported record passes the checks a SetImage would: keys, attributes, a finite unit vector."""
    try:
        if not isinstance(entry.group_id, str) or not isinstance(entry.intra_id, int):
            raise invalid("KEY_INVALID", "group_id must be a string and intra_id an integer")
        check_group_id(entry.group_id)
        check_intra_id(entry.intra_id)
        check_attributes(entry.attributes, system=True)
        vector = np.asarray(entry.vector, np.float32)
        norm = float(np.linalg.norm(vector)) if np.isfinite(vector).all() else float("nan")
        if vector.shape != (dimension,) or not abs(norm - 1.0) < 1e-3:
            raise invalid("VECTOR_INVALID", f"the vector is not a finite unit vector of dimension {dimension}")
    except LookalikeError as err:
        raise invalid(
            "EXPORT_RECORD_INVALID",
            f"record {position} (group_id={str(entry.group_id)[:80]!r}, intra_id={entry.intra_id}) is invalid: "
            f"{err.message} ({err.reason}); nothing was imported",
            record=str(position),
            record_reason=err.reason,
        ) from None
