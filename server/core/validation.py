"""Validation of names, ids and vectors that come from clients."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from lookalike.server.core.errors import invalid
from lookalike.server.core.locations import MAX_LOCATION_LEN as MAX_LOCATION_LEN  # the PAI schema reads it

DATABASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
MAX_GROUP_ID_LEN = 256
MAX_INTRA_ID = 2**53  # exact in JSON numbers and float64, for PAI-style clients


PREVIOUS_SUFFIX = "@previous"  # the copy a reindex keeps of the database it replaced (RollbackDatabase)


def check_database_name(name: str) -> str:
    """A database name as clients use it: NAME, or NAME@previous (the copy a reindex kept), which may be read,
    searched and dropped like any other but never created."""
    if name.endswith(PREVIOUS_SUFFIX) and DATABASE_NAME.fullmatch(name[: -len(PREVIOUS_SUFFIX)]):
        return name
    return check_new_database_name(name)


def check_new_database_name(name: str) -> str:
    if not DATABASE_NAME.fullmatch(name or ""):
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise invalid(
            "DATABASE_NAME_INVALID",
            f"database name {shown!r} is invalid: use 1-63 letters, digits, '-' or '_', "
            "starting with a letter or digit",
        )
    return name


LOAD_PREFIX = "~load-"  # a database being loaded: ~load-<8 hex>-<name>; no client name can start with "~"
REINDEX_PREFIX = "~reindex-"  # the shadow database a reindex fills: ~reindex-<8 hex>-<name>
INTERNAL_PREFIX = "~"  # internal databases are never listed to clients
LOAD_NAME = re.compile(r"[0-9a-f]{8}-" + DATABASE_NAME.pattern)


def check_stored_name(name: str) -> str:
    """A client's database name, or the internal name of a load or a reindex in progress (backends accept all)."""
    for prefix in (LOAD_PREFIX, REINDEX_PREFIX):
        if name.startswith(prefix) and LOAD_NAME.fullmatch(name[len(prefix) :]):
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


SYSTEM_PREFIX = "lookalike."  # attribute keys the server sets; a client cannot
DIGEST_ATTRIBUTE = SYSTEM_PREFIX + "sha256"  # the sha256 of the image bytes an image was registered from
SIZE_ATTRIBUTE = SYSTEM_PREFIX + "size"  # "WIDTHxHEIGHT" of that image (a duplicate cluster keeps the largest)
THUMBNAIL_ATTRIBUTE = SYSTEM_PREFIX + "thumbnail"  # the digest of the kept thumbnail (core/keeping.py)
ORIGINAL_ATTRIBUTE = SYSTEM_PREFIX + "original"  # the digest of the kept original bytes
KEPT_ATTRIBUTES = (THUMBNAIL_ATTRIBUTE, ORIGINAL_ATTRIBUTE)
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def kept_digests(attributes: dict[str, str] | None) -> list[str]:
    """The kept-image blobs a row references (its thumbnail and original digests; core/keeping.py)."""
    if not attributes:
        return []
    return [attributes[k] for k in KEPT_ATTRIBUTES if attributes.get(k)]


IMAGE_SIZE = re.compile(r"[1-9][0-9]{0,5}x[1-9][0-9]{0,5}")
SYSTEM_ATTRIBUTES = {DIGEST_ATTRIBUTE: SHA256_HEX, SIZE_ATTRIBUTE: IMAGE_SIZE, THUMBNAIL_ATTRIBUTE: SHA256_HEX,
                     ORIGINAL_ATTRIBUTE: SHA256_HEX}  # fmt: skip


def check_attributes(attributes: dict[str, str] | None, *, system: bool = False) -> dict[str, str]:
    """A small string map (source, url, title, category, ...), bounded so it never bloats a record.

    Keys starting with ``lookalike.`` are the server's (``system=True`` where stored records
    are read back or filtered on); they do not count against the client's limits.
    """
    if not attributes:
        return {}
    own = {}
    for key, value in attributes.items():
        if isinstance(key, str) and key.startswith(SYSTEM_PREFIX):
            if not system:
                raise invalid("ATTRIBUTES_INVALID", f"attribute keys starting with {SYSTEM_PREFIX!r} are set by the "
                              f"server ({key[:40]!r}); choose another key")  # fmt: skip
            shape = SYSTEM_ATTRIBUTES.get(key)
            if shape is None or not isinstance(value, str) or not shape.fullmatch(value):
                raise invalid("ATTRIBUTES_INVALID", f"system attribute {key[:40]!r} is unknown or malformed; the "
                              f"server sets only {', '.join(sorted(SYSTEM_ATTRIBUTES))} (digests: 64 lowercase hex "
                              f"digits; {SIZE_ATTRIBUTE!r}: WIDTHxHEIGHT)")  # fmt: skip
        else:
            own[key] = value
    if len(own) > MAX_ATTRIBUTES:
        raise invalid("ATTRIBUTES_INVALID", f"{len(own)} attributes; the limit is {MAX_ATTRIBUTES}")
    total = 0
    for key, value in own.items():
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


def check_group_prefix(prefix: str) -> str:
    """A search's ``group_id_prefix``: no longer than a group id may be (empty: every group)."""
    if len(prefix) > MAX_GROUP_ID_LEN:
        raise invalid("GROUP_ID_PREFIX_INVALID",
                      f"group_id_prefix is {len(prefix)} characters; the limit is {MAX_GROUP_ID_LEN}")  # fmt: skip
    if prefix and not prefix.isprintable():
        raise invalid("GROUP_ID_PREFIX_INVALID", "group_id_prefix contains control characters; use printable text")
    return prefix


# Where locations (exports, imports, PAI roots) are checked: server/core/locations.py.
