"""What a database keeps of each image it registers: nothing, a thumbnail, or the original bytes.

Kept bytes let a catalogue be re-embedded by a new model without finding every original
again, and give a browser something to show. The policy is chosen per database at creation
(``keep``); the kept blobs live in the image store (``server/storage/image_store.py``), named
by digest, and a row names them in system attributes (``lookalike.thumbnail``,
``lookalike.original``), so exports, snapshots and both backends carry the references as they
carry any attribute. Blobs are stored (and durable) before the write that references them is
logged, and held until it is applied, so an acknowledged image always has its kept bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from lookalike.server import defaults
from lookalike.server.core.backends.api import DatabaseHandle
from lookalike.server.core.backends.exports import ExportedDatabase
from lookalike.server.core.errors import LookalikeError, invalid, not_found
from lookalike.server.core.validation import ORIGINAL_ATTRIBUTE, THUMBNAIL_ATTRIBUTE, kept_digests
from lookalike.server.storage.image_store import ImageStore, digest_of

log = logging.getLogger(__name__)

KEEP_POLICIES = defaults.KEEP_POLICIES
VIEWS = {"thumbnail": THUMBNAIL_ATTRIBUTE, "original": ORIGINAL_ATTRIBUTE}


def check_keep(keep: str, default: str) -> str:
    """A database's keep policy ("" = the server's ``--keep``)."""
    keep = (keep or default).lower()
    if keep not in KEEP_POLICIES:
        raise invalid("KEEP_INVALID", f"keep {keep!r} is not one of {', '.join(KEEP_POLICIES)}")
    return keep


@dataclass(frozen=True)
class KeptImage:
    data: bytes
    digest: str
    media_type: str
    unchanged: bool = False  # the caller already holds these bytes (its ETag named the digest): none were read


def media_type_of(data: bytes) -> str:
    """The media type of kept bytes, from their magic numbers (originals are whatever was sent)."""
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:3] == b"GIF":
        return "image/gif"
    if data[:2] == b"BM":
        return "image/bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    return "application/octet-stream"


class Keeper:
    """Makes and stores what each policy keeps; reads it back by view."""

    def __init__(self, store: ImageStore, pool: Executor | None = None,
                 thumbnail: Callable[[bytes], bytes] | None = None) -> None:  # fmt: skip
        """``pool`` makes thumbnails in parallel (the embedder's decode pool); ``thumbnail`` overrides the
        encoder (``core/embedding/thumbnails.py`` by default)."""
        self.store = store
        self.pool = pool
        if thumbnail is None:
            from lookalike.server.core.embedding.thumbnails import make_thumbnail

            thumbnail = make_thumbnail
        self._thumbnail = thumbnail

    def _thumbnails(self, images: Sequence[bytes]) -> list[bytes]:
        def one(pair: tuple[int, bytes]) -> bytes:
            try:
                return self._thumbnail(pair[1])
            except LookalikeError as err:
                err.metadata["index"] = str(pair[0])
                raise
            except Exception as exc:  # the embedder decoded it; a thumbnail failing is a bug or a bomb
                raise invalid("IMAGE_UNDECODABLE", f"images[{pair[0]}]: no thumbnail could be made ({exc})",
                              index=str(pair[0])) from None  # fmt: skip

        pairs = list(enumerate(images))
        if self.pool is None or len(pairs) == 1:
            return [one(p) for p in pairs]
        return list(self.pool.map(one, pairs))

    @staticmethod
    def from_decoded(policy: str) -> Callable[[Any], bytes | None] | None:
        """For the embedder's decode (``Embedder.prepare(also=...)``): the thumbnail made from the picture it
        decoded anyway, when that is large enough (a JPEG decoded at a reduced scale for a small model is not:
        None, and ``keep`` decodes it again at the thumbnail's size). None when ``policy`` keeps nothing."""
        if policy == "none":
            return None
        from lookalike.server.core.embedding.thumbnails import THUMBNAIL_MAX_SIDE, encode_thumbnail

        def thumbnail(img: Any) -> bytes | None:
            return encode_thumbnail(img) if max(img.size) >= THUMBNAIL_MAX_SIDE else None

        return thumbnail

    @contextmanager
    def keep(self, policy: str, images: Sequence[bytes | None],
             thumbnails: Sequence[bytes | None] | None = None) -> Iterator[list[dict[str, str]]]:  # fmt: skip
        """Store what ``policy`` keeps of each image; yields the attributes that reference it (one dict per
        image, empty for a vector or ``none``), holding the blobs until the block ends (the write is applied).
        ``thumbnails``: those already made from the embedder's decode (None where not)."""
        out: list[dict[str, str]] = [{} for _ in images]
        if policy == "none" or not any(img is not None for img in images):
            yield out
            return
        present = [k for k, img in enumerate(images) if img is not None]
        payload = [images[k] for k in present]
        made = [thumbnails[k] if thumbnails is not None else None for k in present]
        todo = [j for j, t in enumerate(made) if t is None]
        for j, t in zip(todo, self._thumbnails([payload[j] for j in todo]), strict=True):  # type: ignore[misc]
            made[j] = t
        thumbs: list[bytes] = made  # type: ignore[assignment]
        blobs: list[bytes] = list(thumbs)
        if policy == "original":
            blobs += payload  # type: ignore[arg-type]
        digests = [digest_of(b) for b in blobs]
        n = len(present)
        with self.store.hold(digests):  # held before stored: a concurrent free of the same content cannot win
            self.store.put_many(blobs, digests)
            for j, k in enumerate(present):
                out[k][THUMBNAIL_ATTRIBUTE] = digests[j]
                if policy == "original":
                    out[k][ORIGINAL_ATTRIBUTE] = digests[n + j]
            yield out

    def read(self, attributes: Mapping[str, str], view: str, what: str, known: Collection[str] = ()) -> KeptImage:
        """The kept bytes of one view ("thumbnail" or "original") of a row; NOT_FOUND when not kept. ``known``:
        digests the caller holds (an HTTP ``If-None-Match``; ``*``: any): when the row's is one of them, nothing is
        read (no disk read, no OSS fetch on a restored machine) and the result says ``unchanged``."""
        key = VIEWS.get(view)
        if key is None:
            raise invalid("VIEW_INVALID", f"view {view!r} is not one of {', '.join(VIEWS)}")
        digest = attributes.get(key)
        if not digest:
            kept = "only thumbnails" if attributes.get(THUMBNAIL_ATTRIBUTE) else "nothing"
            raise not_found("IMAGE_NOT_KEPT", f"{what} has no kept {view}: its database keeps {kept} of the images "
                            "it registers (CreateDatabase keep), or it was registered as a vector")  # fmt: skip
        if digest in known or "*" in known:
            return KeptImage(b"", digest, "", unchanged=True)
        try:
            data = self.store.get(digest)
        except KeyError:
            raise not_found("IMAGE_BYTES_MISSING", f"{what}: the kept {view} ({digest[:12]}) is missing from the "
                            "image store; re-register the image") from None  # fmt: skip
        return KeptImage(data, digest, media_type_of(data))

    # -- exports and imports: the kept blobs travel in the export folder's images/ -------------
    def export(self, db: DatabaseHandle, location: str, oss: object) -> int:
        """Copy the blobs ``db``'s rows reference into the export at ``location``; returns how many."""
        from lookalike.server.storage.blobs import open_store

        if db.keep == "none":
            return 0
        target = open_store(location, oss)  # type: ignore[arg-type]
        sent = 0
        after = None
        while True:
            page, more = db.list(group_id=None, after=after, limit=1000)
            for entry in page:
                for digest in kept_digests(entry.attributes):
                    name = ImageStore.object_name(digest)
                    if not target.exists(name):
                        try:
                            target.put(name, self.store.get(digest))
                            sent += 1
                        except KeyError:
                            pass  # lost from the store: the import reports it missing
            if not more or not page:
                return sent
            after = (page[-1].group_id, page[-1].intra_id)

    @contextmanager
    def import_(self, exported: ExportedDatabase, location: str, oss: object) -> Iterator[int]:
        """Copy the blobs an export's rows reference into the store, held until the import is applied."""
        from lookalike.server.storage.blobs import open_store

        wanted = {d for part in exported.entries() for e in part for d in kept_digests(e.attributes)}
        if not wanted:
            yield 0
            return
        source = open_store(location, oss)  # type: ignore[arg-type]
        with self.store.hold(wanted):
            missing = 0
            for digest in sorted(wanted):
                if self.store.exists(digest):
                    continue
                try:
                    data = source.get(ImageStore.object_name(digest))
                except (OSError, KeyError):
                    missing += 1
                    continue
                if digest_of(data) != digest:
                    raise invalid("EXPORT_CORRUPT", f"the export's kept image {digest[:12]} does not match its digest")
                self.store.put_many([data])
            if missing:
                log.warning("import from %s: %d kept images are not in the export; GetImage reports them missing",
                            location, missing)  # fmt: skip
            yield len(wanted) - missing
