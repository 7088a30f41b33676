"""Writes while a reindex runs: each goes to the old database and, under one gate, to the shadow.

Mixed into ``Reindexer`` (``reindex.py``). The service embeds a write's images with the new model
before it takes the gate (``shadow_vectors``), then applies the write to the old database and its
mirror to the shadow under the gate, so the copy loop (which writes a row only if the old one is
still what it embedded) and the writers never interleave on a row. A mirrored write that fails is
logged, not raised: the write stands, and the comparison before the switch mends the shadow.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from lookalike.server.core.backends.api import Key, SetRequest
from lookalike.server.core.errors import ErrorKind, LookalikeError

if TYPE_CHECKING:
    from lookalike.server.core.service import LookalikeService

log = logging.getLogger("lookalike.server.core.reindex")


@dataclass
class Mirror:
    """A reindex in progress on one database: writes to it also go to the shadow, under ``gate``."""

    operation: str
    database: str
    shadow: str
    model: str  # the loaded model the shadow is bound to
    gate: threading.Lock = field(default_factory=threading.Lock)
    writes: int = 0  # writes mirrored so far (a clean comparison stays clean while this does not move)
    switched: bool = False  # the name now belongs to the shadow: a writer that pinned the old one starts again
    mended: int = 0  # rows the comparison before the switch re-embedded (written past the mirror)


class MirrorWrites:
    """``self.service`` is the service; ``self.mirrors`` the running reindexes by database name."""

    service: LookalikeService
    mirrors: dict[str, Mirror]

    def shadow_vectors(self, database: str, images: Sequence[bytes | None]) -> tuple[Mirror | None, list[Any]]:
        """The mirror of ``database`` (None: no reindex) and each image embedded by the new model (None for a
        vector write, which the new model cannot use: the comparison before the switch lists it missing)."""
        mirror = self.mirrors.get(database)
        if mirror is None or not any(img is not None for img in images):
            return mirror, [None] * len(images)
        embedder = self.service.models.get(mirror.model)
        present = [k for k, img in enumerate(images) if img is not None]
        vectors = embedder.embed([images[k] for k in present], field="image")  # type: ignore[misc]
        out: list[Any] = [None] * len(images)
        for k, v in zip(present, vectors, strict=True):
            out[k] = v
        return mirror, out

    @staticmethod
    def gate(mirror: Mirror | None) -> AbstractContextManager[Any]:
        """The mirror's gate, or nothing to hold when the database is not being reindexed."""
        return mirror.gate if mirror is not None else nullcontext()

    def mirror_sets(self, mirror: Mirror | None, written: list[tuple[Key, dict[str, str] | None]],
                    vectors: list[Any]) -> None:  # fmt: skip
        """After the old database applied writes (under the gate): the same rows in the shadow, new vectors."""
        if mirror is None or mirror.switched:
            return
        mirror.writes += len(written)
        rows = [(key, attrs, v) for (key, attrs), v in zip(written, vectors, strict=True)]
        embedded = [(k, a, v) for k, a, v in rows if v is not None]
        gone = [k for k, _, v in rows if v is None]
        try:
            if embedded:
                requests = [SetRequest(k[0], k[1], "", dict(a or {})) for k, a, _ in embedded]
                self.service.catalog.set_images(mirror.shadow, requests, np.stack([v for _, _, v in embedded]))
            for key in gone:  # a vector write: the shadow must not keep an older picture under that key
                self._forget(mirror, key)
        except LookalikeError as err:  # the write stands; the comparison before the switch mends the shadow
            log.warning("reindex of %r: a write was not mirrored (%s); mended before the switch", mirror.database,
                        err.message)  # fmt: skip

    def mirror_delete(self, mirror: Mirror | None, group_id: str, intra_id: int | None = None) -> None:
        if mirror is None or mirror.switched:
            return
        mirror.writes += 1
        try:
            if intra_id is None:
                self.service.catalog.delete_group(mirror.shadow, group_id)
            else:
                self.service.catalog.delete_image(mirror.shadow, group_id, intra_id)
        except LookalikeError as err:
            if err.kind != ErrorKind.NOT_FOUND:
                log.warning("reindex of %r: a delete was not mirrored (%s)", mirror.database, err.message)

    def mirror_clear(self, mirror: Mirror | None) -> None:
        if mirror is not None and not mirror.switched:
            mirror.writes += 1
            try:
                self.service.catalog.clear(mirror.shadow)
            except LookalikeError as err:
                log.warning("reindex of %r: a clear was not mirrored (%s)", mirror.database, err.message)

    def _forget(self, mirror: Mirror, key: Key) -> None:
        try:
            self.service.catalog.delete_image(mirror.shadow, *key)
        except LookalikeError as err:
            if err.kind != ErrorKind.NOT_FOUND:
                raise
