"""Who references each kept image: a count per blob digest over every database of the catalog.

The catalog feeds it every applied command (a set references the new rows' blobs and
releases the rows it replaces; a delete, clear, drop or replace releases), so the counts are
rebuilt by replaying the log like everything else. A blob whose count reaches zero is removed
from the image store only once the releasing write is durable (``free``), and never while a
writer holds it (``ImageStore.hold``): an acknowledged image always has its kept bytes.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable

from lookalike.server import defaults
from lookalike.server.storage.image_store import ImageStore

log = logging.getLogger(__name__)


class KeptRefs:
    """Reference counts of kept-image blobs; ``lock`` is the catalog's write lock (counts change under it)."""

    def __init__(self, images: ImageStore | None, lock: threading.Lock) -> None:
        self.images = images
        self._lock = lock
        self._refs: Counter[str] = Counter()
        self._unreferenced: set[str] = set()  # count reached zero: freed once that write is durable

    def add(self, digests: Iterable[str]) -> None:
        self._refs.update(digests)

    def release(self, digests: Iterable[str]) -> None:
        for digest in digests:
            self._refs[digest] -= 1
            if self._refs[digest] <= 0:
                del self._refs[digest]
                self._unreferenced.add(digest)

    def free(self) -> None:
        """Remove the blobs no live image references any more (call once the releasing write is durable)."""
        if self.images is None or not self._unreferenced:
            return
        with self._lock:
            free = [d for d in self._unreferenced if d not in self._refs]
            self._unreferenced.clear()
        self.images.remove(free)  # a blob a writer holds meanwhile stays (ImageStore.hold)

    def live(self) -> list[str]:
        with self._lock:
            return list(self._refs)

    def sweep(self, grace_s: float = defaults.KEEP_SWEEP_GRACE_S) -> int:
        """Remove blobs nothing references (a write that failed after storing them, a crash before a free)."""
        if self.images is None:
            return 0
        removed = self.images.sweep(set(self.live()), grace_s=grace_s)
        if removed:
            log.info("image store: removed %d unreferenced blobs", removed)
        return removed

    def push(self) -> int:
        """Upload the referenced blobs the OSS root lacks (at a snapshot, before its manifest)."""
        return self.images.push(self.live()) if self.images is not None else 0

    def collect_remote(self) -> int:
        """Remove from OSS the blobs removed here that the snapshot just uploaded no longer names."""
        return self.images.collect_remote(set(self.live())) if self.images is not None else 0

    def counts(self) -> tuple[int, int]:
        """(distinct blobs referenced, references)."""
        with self._lock:
            return len(self._refs), sum(self._refs.values())
