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
from collections.abc import Callable, Iterable

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
        self._touched: set[str] | None = None  # what the log replayed at start-up referenced or released
        self._replayed: set[str] | None = None  # the same after the replay, until the first push

    def add(self, digests: Iterable[str]) -> None:
        if self._touched is not None:
            digests = list(digests)
            self._touched.update(digests)
        self._refs.update(digests)

    def release(self, digests: Iterable[str]) -> None:
        if self._touched is not None:
            digests = list(digests)
            self._touched.update(digests)
        for digest in digests:
            self._refs[digest] -= 1
            if self._refs[digest] <= 0:
                del self._refs[digest]
                self._unreferenced.add(digest)

    # -- start-up: what the OSS root is known to hold ------------------------------------------
    def snapshot_loaded(self) -> None:
        """The snapshot's references are counted; the log's replay starts (its digests are tracked)."""
        self._touched = set()

    def replayed(self) -> None:
        """After the replay. The blobs the snapshot references that the log after it never referenced or released
        again: when the OSS root holds that snapshot (its manifest is the one loaded), each was uploaded before
        that manifest and is still there (a blob leaves OSS only once released), so the first ``push`` marks
        them shipped instead of asking OSS about each (one HEAD a kept image, 10M at 10M images)."""
        self._replayed, self._touched = self._touched or set(), None

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

    def push(self, snapshot_in_remote: Callable[[], bool | None] | None = None) -> int:
        """Upload the referenced blobs the OSS root lacks (at a snapshot, before its manifest). The first one after
        a start-up asks ``snapshot_in_remote`` (one GET of the OSS manifest) whether the snapshot it started from
        is the root's: then what that snapshot names and the replayed log left alone needs no check (blobs
        stored since the start are uploaded or marked by the image store itself). Asked again at the next push
        while OSS cannot answer (an outage at start-up must not cost a check of every blob once it is over)."""
        if self.images is None:
            return 0
        if self._replayed is not None and self.images.remote is not None and snapshot_in_remote is not None:
            answer = snapshot_in_remote()
            if answer is not None:
                touched, self._replayed = self._replayed, None
                if answer:
                    marked = self.images.mark_shipped(d for d in self.live() if d not in touched)
                    log.info("kept images: %d known to be in the OSS root (the snapshot there names them)", marked)
        return self.images.push(self.live())

    def collect_remote(self) -> int:
        """Remove from OSS the blobs removed here that the snapshot just uploaded no longer names."""
        return self.images.collect_remote(set(self.live())) if self.images is not None else 0

    def counts(self) -> tuple[int, int]:
        """(distinct blobs referenced, references)."""
        with self._lock:
            return len(self._refs), sum(self._refs.values())
