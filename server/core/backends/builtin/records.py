"""Row bookkeeping of one database: which row holds each (group, intra_id), compactly.

Owned here: the group names and numbers, each group's next automatic intra_id, and the
sorted key -> row arrays. Knows nothing of vectors, search or files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SMALL = 1 << 32  # intra_ids below it go in the sorted arrays (``group << 32 | intra_id``)


class Members:
    """Live images by (group number, intra_id) -> row, compact enough for 10M images.

    A dict entry per image (the former ``{group: {intra_id: row}}``) costs 100-500 bytes of
    Python objects per image; here the keys ``group << 32 | intra_id`` and rows sit in two sorted
    int64 arrays (16 bytes per image), changes go to a small per-group dict first and are merged in
    batches (a linear merge per ``MERGE`` changes). intra_ids of 2**32 and above (rare: ids are
    assigned in sequence) stay in per-group dicts of their own. ``ordered`` reads a group in intra_id
    order from both without merging, so listing a page after a write costs the page, not a merge.
    """

    MERGE = 65536
    OVERLAY = 256  # a group's unmerged changes past this many are laid over in numpy (``_laid_over``)

    def __init__(self) -> None:
        self.keys = np.zeros(0, np.int64)
        self.rows = np.zeros(0, np.int64)
        self.recent: dict[int, dict[int, int]] = {}  # group -> {intra_id: row, or -1 for removed}
        self.pending = 0  # entries in ``recent``
        self.sorted_recent: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # group -> its recent, sorted (a cache)
        self.big: dict[int, dict[int, int]] = {}  # group -> {intra_id >= 2**32: row}
        self.per_group = np.zeros(0, np.int64)  # live images per group number
        self.groups = 0  # groups holding at least one image

    def get(self, g: int, intra: int) -> int | None:
        if intra >= SMALL:
            big = self.big.get(g)
            return big.get(intra) if big else None
        recent = self.recent.get(g)
        if recent is not None:
            row = recent.get(intra)
            if row is not None:
                return row if row >= 0 else None
        key = (g << 32) | intra
        pos = int(np.searchsorted(self.keys, key))
        if pos < len(self.keys) and int(self.keys[pos]) == key:
            return int(self.rows[pos])
        return None

    def count(self, g: int) -> int:
        return int(self.per_group[g]) if 0 <= g < len(self.per_group) else 0

    def _counted(self, g: int, delta: int) -> None:
        if g >= len(self.per_group):
            grown = np.zeros(max(g + 1, 2 * len(self.per_group), 1024), np.int64)
            grown[: len(self.per_group)] = self.per_group
            self.per_group = grown
        before = int(self.per_group[g])
        self.per_group[g] = before + delta
        self.groups += (before == 0 and delta > 0) - (before + delta == 0 and before > 0)

    def _note(self, g: int, intra: int, row: int) -> None:
        recent = self.recent.get(g)
        if recent is None:
            recent = self.recent[g] = {}
        self.pending += intra not in recent
        recent[intra] = row
        if self.sorted_recent:
            self.sorted_recent.pop(g, None)
        if self.pending >= self.MERGE:
            self.merge()

    def set(self, g: int, intra: int, row: int) -> int | None:
        """Points (g, intra) at ``row``; returns the row it replaces, if any."""
        old = self.get(g, intra)
        if intra >= SMALL:
            self.big.setdefault(g, {})[intra] = row
        else:
            self._note(g, intra, row)
        if old is None:
            self._counted(g, 1)
        return old

    def remove(self, g: int, intra: int) -> int | None:
        old = self.get(g, intra)
        if old is None:
            return None
        if intra >= SMALL:
            big = self.big[g]
            del big[intra]
            if not big:
                del self.big[g]
        else:
            self._note(g, intra, -1)
        self._counted(g, -1)
        return old

    def merge(self) -> None:
        """Folds ``recent`` into the sorted arrays: a bisection per change and one copy of the arrays."""
        if not self.recent:
            return
        rk = np.fromiter(((g << 32) | i for g, r in self.recent.items() for i in r), np.int64, self.pending)
        rr = np.fromiter((row for r in self.recent.values() for row in r.values()), np.int64, self.pending)
        self.recent, self.pending, self.sorted_recent = {}, 0, {}
        order = np.argsort(rk)
        rk, rr = rk[order], rr[order]
        pos = np.searchsorted(self.keys, rk)
        there = pos < len(self.keys)
        there[there] = self.keys[pos[there]] == rk[there]
        keys, rows = np.delete(self.keys, pos[there]), np.delete(self.rows, pos[there])  # removed or replaced
        add = rr >= 0
        at = np.searchsorted(keys, rk[add])
        self.keys, self.rows = np.insert(keys, at, rk[add]), np.insert(rows, at, rr[add])

    def ordered(self, g: int, after: int, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` (intra_id, row) of group ``g`` with intra_id > ``after``, in intra_id order.

        Reads the sorted arrays (a bisection and a slice of about ``limit``) with the group's unmerged
        changes laid over them; merges nothing, so a page after a write costs the page."""
        out: list[tuple[int, int]] = []
        if limit <= 0:
            return out
        recent = self.recent.get(g)
        if after < SMALL - 1 and recent is not None and len(recent) > self.OVERLAY:
            out = self._laid_over(g, recent, after, limit)
        elif after < SMALL - 1:
            a = int(np.searchsorted(self.keys, (g << 32) | max(after + 1, 0)))
            keys = self.keys[a : a + limit + (len(recent) if recent else 0)]  # enough, whatever recent drops
            keys = keys[: int(np.searchsorted(keys, (g + 1) << 32))]
            out = list(zip((keys & (SMALL - 1)).tolist(), self.rows[a : a + len(keys)].tolist(), strict=True))
            if recent:
                out = [(i, r) for i, r in out if i not in recent]
                out += [(i, r) for i, r in recent.items() if r >= 0 and i > after]
                out.sort()
                del out[limit:]
        big = self.big.get(g)
        if big and len(out) < limit:
            out += sorted((i, r) for i, r in big.items() if i > after)[: limit - len(out)]
        return out

    def _laid_over(self, g: int, recent: dict[int, int], after: int, limit: int) -> list[tuple[int, int]]:
        """``ordered`` below 2**32 for a group with many unmerged changes (a bulk write into it): the changes
        are sorted once (kept until the group changes again) and laid over the arrays' slice in numpy."""
        cached = self.sorted_recent.get(g)
        if cached is None:
            intras = np.fromiter(recent, np.int64, len(recent))
            order = np.argsort(intras)
            cached = self.sorted_recent[g] = (intras[order], np.fromiter(recent.values(), np.int64, len(recent))[order])
        cut = int(np.searchsorted(cached[0], after, "right"))
        intras, rows = cached[0][cut:], cached[1][cut:]  # the changes past ``after``
        a = int(np.searchsorted(self.keys, (g << 32) | max(after + 1, 0)))
        keys = self.keys[a : a + limit + len(intras)]  # enough, whatever the changes drop
        keys = keys[: int(np.searchsorted(keys, (g + 1) << 32))]
        base, base_rows = keys & (SMALL - 1), self.rows[a : a + len(keys)]
        if len(intras):
            kept = intras[np.searchsorted(intras, base).clip(max=len(intras) - 1)] != base  # not changed since
            base, base_rows = base[kept], base_rows[kept]
        added = rows >= 0
        both = np.concatenate([base[:limit], intras[added][:limit]])
        order = np.argsort(both)[:limit]
        both_rows = np.concatenate([base_rows[:limit], rows[added][:limit]])
        return list(zip(both[order].tolist(), both_rows[order].tolist(), strict=True))

    def empty(self, groups: np.ndarray) -> list[int]:
        """The distinct group numbers among ``groups`` that hold no image (ascending)."""
        distinct = np.unique(groups).astype(np.int64)
        counts = np.zeros(len(distinct), np.int64)
        inside = distinct < len(self.per_group)
        counts[inside] = self.per_group[distinct[inside]]
        return distinct[counts == 0].tolist()

    def group(self, g: int) -> dict[int, int]:
        """intra_id -> row of one group, in intra_id order."""
        return dict(self.ordered(g, -1, self.count(g)))

    def items(self) -> list[tuple[int, int, int]]:
        """(group, intra_id, row) of every image."""
        self.merge()
        out = list(zip((self.keys >> 32).tolist(), (self.keys & 0xFFFFFFFF).tolist(), self.rows.tolist(), strict=True))
        return out + [(g, i, r) for g, big in self.big.items() for i, r in big.items()]

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def remap(self, kept: np.ndarray) -> None:
        """Rows moved by a compaction: row ``kept[j]`` is now ``j``."""
        self.merge()
        self.rows = np.searchsorted(kept, self.rows).astype(np.int64)
        self.big = {g: {i: int(np.searchsorted(kept, r)) for i, r in big.items()} for g, big in self.big.items()}

    @classmethod
    def from_rows(cls, groups: np.ndarray, intras: np.ndarray, rows: np.ndarray) -> Members:
        m = cls()
        small = intras < SMALL
        keys = (groups[small].astype(np.int64) << 32) | intras[small]
        order = np.argsort(keys, kind="stable")
        m.keys, m.rows = keys[order], rows[small][order].astype(np.int64)
        for g, i, r in zip(groups[~small].tolist(), intras[~small].tolist(), rows[~small].tolist(), strict=True):
            m.big.setdefault(g, {})[i] = r
        counts = np.bincount(groups.astype(np.int64), minlength=1) if len(groups) else np.zeros(0, np.int64)
        m.per_group = counts.astype(np.int64)
        m.groups = int(np.count_nonzero(counts))
        return m


@dataclass
class Groups:
    names: list[str] = field(default_factory=list)
    number: dict[str, int] = field(default_factory=dict)
    next_intra: list[int] = field(default_factory=list)
    members: Members = field(default_factory=Members)  # (group number, intra_id) -> row

    def get_or_add(self, group_id: str) -> int:
        g = self.number.get(group_id)
        if g is None:
            g = self.number[group_id] = len(self.names)
            self.names.append(group_id)
            self.next_intra.append(0)
        return g


def grown(array: np.ndarray, used: int, rows: int) -> np.ndarray:
    """``array`` with room for ``rows`` (doubling; the first ``used`` entries copied), or itself."""
    if rows <= len(array):
        return array
    grown = np.zeros(max(rows, 2 * len(array), 1024), array.dtype)
    grown[:used] = array[:used]
    return grown
