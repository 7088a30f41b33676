"""Validation of names, ids and vectors that come from clients."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from lookalike.server.core.errors import invalid

DATABASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
MAX_GROUP_ID_LEN = 256
MAX_INTRA_ID = 2**53  # exact in JSON numbers and float64, for PAI-style clients


def check_database_name(name: str) -> str:
    if not DATABASE_NAME.fullmatch(name or ""):
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise invalid(
            "DATABASE_NAME_INVALID",
            f"database name {shown!r} is invalid: use 1-63 letters, digits, '-' or '_', "
            "starting with a letter or digit",
        )
    return name


LOAD_PREFIX = "~load-"  # a database being loaded: ~load-<8 hex>-<name>; no client name can start with "~"
LOAD_NAME = re.compile(r"[0-9a-f]{8}-" + DATABASE_NAME.pattern)


def check_stored_name(name: str) -> str:
    """A client's database name, or the internal name of a load in progress (backends accept both)."""
    if name.startswith(LOAD_PREFIX) and LOAD_NAME.fullmatch(name[len(LOAD_PREFIX) :]):
        return name
    return check_database_name(name)


def check_group_id(group_id: str) -> str:
    if not group_id:
        raise invalid("GROUP_ID_INVALID", "group_id is empty; name the group (e.g. a product id)")
    if len(group_id) > MAX_GROUP_ID_LEN:
        raise invalid("GROUP_ID_INVALID", f"group_id is {len(group_id)} characters; the limit is {MAX_GROUP_ID_LEN}")
    if not group_id.isprintable():
        raise invalid("GROUP_ID_INVALID", "group_id contains control characters; use printable text")
    return group_id


def check_intra_id(intra_id: int) -> int:
    if not 0 <= intra_id < MAX_INTRA_ID:
        raise invalid("INTRA_ID_INVALID", f"intra_id {intra_id} is out of range; use 0 <= intra_id < 2**53")
    return intra_id


def check_vector(values: Sequence[float] | np.ndarray, dimension: int, *, field: str = "vector") -> np.ndarray:
    """Validate and L2-normalise a client vector."""
    vec = np.asarray(values, dtype=np.float32).reshape(-1)
    if vec.size != dimension:
        raise invalid(
            "DIMENSION_MISMATCH",
            f"{field} has {vec.size} values but the database dimension is {dimension}",
            expected=str(dimension),
            actual=str(vec.size),
        )
    if not np.isfinite(vec).all():
        raise invalid("VECTOR_INVALID", f"{field} contains NaN or infinite values")
    wide = vec.astype(np.float64)  # float32 squares of 1e-30 underflow to 0: a tiny vector still has a direction
    scale = float(np.max(np.abs(wide)))
    if scale == 0.0:
        raise invalid("VECTOR_INVALID", f"{field} is all zeros; it has no direction to compare")
    wide /= scale
    return (wide / np.linalg.norm(wide)).astype(np.float32)


MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_KEY = 64
MAX_ATTRIBUTE_VALUE = 1024
MAX_ATTRIBUTES_BYTES = 8192


def check_attributes(attributes: dict[str, str] | None) -> dict[str, str]:
    """A small string map (source, url, title, category, ...), bounded so it never bloats a record."""
    if not attributes:
        return {}
    if len(attributes) > MAX_ATTRIBUTES:
        raise invalid("ATTRIBUTES_INVALID", f"{len(attributes)} attributes; the limit is {MAX_ATTRIBUTES}")
    total = 0
    for key, value in attributes.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise invalid("ATTRIBUTES_INVALID", "attribute keys and values must be strings")
        if not key or len(key) > MAX_ATTRIBUTE_KEY or not key.isprintable():
            raise invalid(
                "ATTRIBUTES_INVALID", f"attribute key {key[:40]!r} must be 1-{MAX_ATTRIBUTE_KEY} printable characters"
            )
        if len(value) > MAX_ATTRIBUTE_VALUE:
            raise invalid(
                "ATTRIBUTES_INVALID",
                f"attribute {key[:40]!r} is {len(value)} characters; the limit is {MAX_ATTRIBUTE_VALUE}",
            )
        total += len(key.encode()) + len(value.encode())
    if total > MAX_ATTRIBUTES_BYTES:
        raise invalid("ATTRIBUTES_INVALID", f"attributes take {total} bytes; the limit is {MAX_ATTRIBUTES_BYTES}")
    return dict(attributes)


MAX_LOCATION_LEN = 1024


def check_location(location: str, field: str) -> str:
    """A server-side directory or oss://bucket/prefix/; never anything with control characters."""
    if not location or not location.isprintable() or len(location) > MAX_LOCATION_LEN:
        raise invalid(
            "DESTINATION_INVALID",
            f"{field} must be a local directory on the server or oss://bucket/prefix/ "
            f"(at most {MAX_LOCATION_LEN} characters)",
        )
    if location.startswith("oss://"):
        bucket = location[len("oss://") :].split("/", 1)[0]
        if not bucket:
            raise invalid("DESTINATION_INVALID", f"{field} {location!r} names no bucket; use oss://bucket/prefix/")
    return location
