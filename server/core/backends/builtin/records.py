"""Row bookkeeping of one database: which row holds each (group, intra_id), compactly.

Owned here: the group names and numbers, each group's next automatic intra_id, and the
sorted key -> row arrays. Knows nothing of vectors, search or files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class Members:
    """Live images by (group number, intra_id) -> row, compact enough for 10M images.

    A dict entry per image (the former ``{group: {intra_id: row}}``) costs 100-500 bytes of
    Python objects per image; here the keys ``group << 32 | intra_id`` and rows sit in two sorted
    int64 arrays (16 bytes per image), changes go to a small dict first and are merged in batches
    (a linear merge per ``MERGE`` changes). intra_ids of 2**32 and above (rare: ids are assigned
    in sequence) stay in a dict of their own.
    """

    MERGE = 65536

    def __init__(self) -> None:
        self.keys = np.zeros(0, np.int64)
        self.rows = np.zeros(0, np.int64)
        self.recent: dict[int, int] = {}  # key -> row, or -1 for removed
        self.big: dict[tuple[int, int], int] = {}
        self.per_group = np.zeros(0, np.int64)  # live images per group number
        self.groups = 0  # groups holding at least one image

    @staticmethod
    def _key(g: int, intra: int) -> int:
        return (g << 32) | intra

    def get(self, g: int, intra: int) -> int | None:
        if intra >= 1 << 32:
            return self.big.get((g, intra))
        key = self._key(g, intra)
        row = self.recent.get(key)
        if row is not None:
            return row if row >= 0 else None
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

    def set(self, g: int, intra: int, row: int) -> int | None:
        """Points (g, intra) at ``row``; returns the row it replaces, if any."""
        old = self.get(g, intra)
        if intra >= 1 << 32:
            self.big[(g, intra)] = row
        else:
            self.recent[self._key(g, intra)] = row
            self._maybe_merge()
        if old is None:
            self._counted(g, 1)
        return old

    def remove(self, g: int, intra: int) -> int | None:
        old = self.get(g, intra)
        if old is None:
            return None
        if intra >= 1 << 32:
            del self.big[(g, intra)]
        else:
            self.recent[self._key(g, intra)] = -1
            self._maybe_merge()
        self._counted(g, -1)
        return old

    def _maybe_merge(self) -> None:
        if len(self.recent) >= self.MERGE:
            self.merge()

    def merge(self) -> None:
        if not self.recent:
            return
        rk = np.fromiter(self.recent.keys(), np.int64, len(self.recent))
        rr = np.fromiter(self.recent.values(), np.int64, len(self.recent))
        keep = ~np.isin(self.keys, rk)
        keys, rows = self.keys[keep], self.rows[keep]
        add = rr >= 0
        rk, rr = rk[add], rr[add]
        order = np.argsort(rk)
        rk, rr = rk[order], rr[order]
        pos = np.searchsorted(keys, rk)
        self.keys, self.rows = np.insert(keys, pos, rk), np.insert(rows, pos, rr)
        self.recent = {}

    def group(self, g: int) -> dict[int, int]:
        """intra_id -> row of one group, in intra_id order."""
        self.merge()
        a, b = np.searchsorted(self.keys, [g << 32, (g + 1) << 32])
        out = dict(zip((self.keys[a:b] & 0xFFFFFFFF).tolist(), self.rows[a:b].tolist(), strict=True))
        out.update({i: r for (gg, i), r in self.big.items() if gg == g})
        return dict(sorted(out.items()))

    def items(self) -> list[tuple[int, int, int]]:
        """(group, intra_id, row) of every image."""
        self.merge()
        out = list(zip((self.keys >> 32).tolist(), (self.keys & 0xFFFFFFFF).tolist(), self.rows.tolist(), strict=True))
        return out + [(g, i, r) for (g, i), r in self.big.items()]

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def remap(self, kept: np.ndarray) -> None:
        """Rows moved by a compaction: row ``kept[j]`` is now ``j``."""
        self.merge()
        self.rows = np.searchsorted(kept, self.rows).astype(np.int64)
        self.big = {key: int(np.searchsorted(kept, r)) for key, r in self.big.items()}

    @classmethod
    def from_rows(cls, groups: np.ndarray, intras: np.ndarray, rows: np.ndarray) -> Members:
        m = cls()
        small = intras < (1 << 32)
        keys = (groups[small].astype(np.int64) << 32) | intras[small]
        order = np.argsort(keys, kind="stable")
        m.keys, m.rows = keys[order], rows[small][order].astype(np.int64)
        m.big = {(int(g), int(i)): int(r) for g, i, r in zip(groups[~small], intras[~small], rows[~small], strict=True)}
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
