"""What one call to the service carries and returns: limits, queries, bulk items and summaries.

Plain values, shared by the service and every transport (a transport builds these from its
wire messages and turns the results back into them).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
from lookalike.server import defaults
from lookalike.server.core.backends.api import Key, SetRequest, content_digest, request_fingerprint
from lookalike.server.core.errors import invalid
from lookalike.server.core.validation import DIGEST_ATTRIBUTE, IMAGE_SIZE, SIZE_ATTRIBUTE

BULK_CHUNK = 32
BULK_CHUNK_BYTES = 64 << 20  # image bytes of one chunk: a chunk of big images is cut short
DEFAULT_TOP_K = 10
MAX_REQUEST_ID_LEN = 128
MAX_CLIENT_REF_ECHO = 256
SUMMARY_BUDGET_BYTES = 4 << 20  # failures and keys listed in a bulk summary, so it always fits a message


@dataclass(frozen=True)
class Limits:
    """What one call may ask for; each is a server setting (``lookalike serve --help``)."""

    max_top_k: int = defaults.MAX_TOP_K
    max_embed_images: int = defaults.MAX_EMBED_IMAGES
    max_stream_items: int = defaults.MAX_STREAM_ITEMS
    max_list_items: int = defaults.MAX_LIST_ITEMS

    @classmethod
    def from_config(cls, config: object) -> Limits:
        return cls(
            **{f: getattr(config, f) for f in ("max_top_k", "max_embed_images", "max_stream_items", "max_list_items")}
        )


@dataclass(frozen=True)
class Query:
    """Exactly one of image / vector / registered."""

    image: bytes | None = None
    vector: Sequence[float] | None = None
    registered: Key | None = None


@dataclass(frozen=True)
class DuplicateSpec:
    """A write's duplicate check as asked: ``if_duplicate`` ALLOW, SKIP or REJECT, by tier or threshold."""

    if_duplicate: str = "ALLOW"
    tier: str = ""
    threshold: float | None = None


@dataclass(frozen=True)
class BulkItem:
    group_id: str
    intra_id: int | None
    image: bytes | None = None
    vector: Sequence[float] | None = None
    client_ref: str = ""
    database: str = ""  # empty, or must repeat the stream's database
    request_id: str = ""
    attributes: dict[str, str] | None = None
    duplicates: DuplicateSpec | None = None


@dataclass
class BulkFailure:
    index: int
    client_ref: str
    reason: str
    message: str


@dataclass
class BulkSkipped:
    index: int
    client_ref: str
    existing: Key
    score: float


@dataclass
class BulkResult:
    """What a stream did; counts only what is durable. Lists are cut to a byte budget."""

    received: int = 0
    succeeded: int = 0
    replayed: int = 0  # of the succeeded: retries answered from the retry window, stored nothing again
    keys: list[Key] = field(default_factory=list)
    failures: list[BulkFailure] = field(default_factory=list)
    failed: int = 0
    keys_truncated: bool = False
    failures_truncated: bool = False
    skipped_count: int = 0  # of the succeeded: duplicates the check skipped (stored nothing)
    skipped: list[BulkSkipped] = field(default_factory=list)
    _budget: int = SUMMARY_BUDGET_BYTES

    def add_key(self, key: Key, *, replayed: bool = False) -> None:
        self.succeeded += 1
        self.replayed += replayed
        cost = len(key[0]) + 16
        if self.keys_truncated or cost > self._budget:
            self.keys_truncated = True
            return
        self._budget -= cost
        self.keys.append(key)

    def add_skipped(self, skipped: BulkSkipped) -> None:
        """A duplicate the check skipped (its existing key went into ``keys``)."""
        self.skipped_count += 1
        cost = len(skipped.client_ref) + len(skipped.existing[0]) + 24
        if self.keys_truncated or cost > self._budget:
            self.keys_truncated = True
            return
        self._budget -= cost
        self.skipped.append(skipped)

    def add_failure(self, failure: BulkFailure) -> None:
        self.failed += 1
        cost = len(failure.client_ref) + len(failure.message) + len(failure.reason) + 16
        if self.failures_truncated or cost > self._budget:
            self.failures_truncated = True
            return
        self._budget -= cost
        self.failures.append(failure)


def similarity(cosine: float) -> float:
    """The [0, 1] similarity of the API: cosine clipped at 0 (opposite and unrelated look alike: not at all)."""
    return max(0.0, min(1.0, cosine))


def check_request_id(request_id: str) -> str:
    if len(request_id) > MAX_REQUEST_ID_LEN or not request_id.isprintable():
        raise invalid(
            "REQUEST_ID_INVALID", f"request_id must be at most {MAX_REQUEST_ID_LEN} printable characters (e.g. a UUID)"
        )
    return request_id


def take_chunk(stream: Iterator[BulkItem]) -> list[BulkItem]:
    """The next items of a stream: ``BULK_CHUNK`` of them, fewer once they hold ``BULK_CHUNK_BYTES`` of images."""
    chunk: list[BulkItem] = []
    held = 0
    for item in islice(stream, BULK_CHUNK):
        chunk.append(item)
        held += len(item.image or b"")
        if held >= BULK_CHUNK_BYTES:
            break
    return chunk


def image_size(image: bytes) -> dict[str, str]:
    """``lookalike.size`` of an image ("WIDTHxHEIGHT", from its header only), or nothing if unreadable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(image)) as img:
            width, height = img.size
    except Exception:  # the embedder decoded it already; a header PIL cannot size just stays unsized
        return {}
    size = f"{width}x{height}"
    return {SIZE_ATTRIBUTE: size} if IMAGE_SIZE.fullmatch(size) else {}


def set_request(
    group_id: str,
    intra_id: int | None,
    request_id: str,
    attributes: dict[str, str] | None,
    image: bytes | None,
    vector: Sequence[float] | None,
) -> SetRequest:
    """A write as the backends take it: an image's bytes digest kept as ``lookalike.sha256`` (so a
    client can tell which files are already registered), and the fingerprint of what was asked."""
    digest = ""
    if image is not None:
        digest = content_digest(image)
        attributes = {**(attributes or {}), DIGEST_ATTRIBUTE: digest, **image_size(image)}
    elif request_id:
        digest = content_digest(np.asarray(vector, dtype="<f4").tobytes())
    return SetRequest(group_id, intra_id, request_id, attributes or None,
                      request_fingerprint(group_id, intra_id, digest) if request_id else "")  # fmt: skip
