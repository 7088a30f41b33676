"""The key order of one database's live images (group name, then intra_id), for listing a page at a time.

Only the names of the groups that hold images are kept sorted here, in blocks of about ``BLOCK`` (lists of
references to the names ``Groups`` already holds: 8 bytes a group); the images of each group come in
intra_id order from the record store (``Members.ordered``: its sorted arrays and the changes not merged in
yet). So a page costs a bisection among the groups and one per group it shows, whatever was written before
it, and a write only touches the order when a group gets its first image or loses its last: a bisection and
an insert into one block (a few microseconds), never a pass over every group or image.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from lookalike.server.core.backends.api import Key
from lookalike.server.core.backends.builtin.records import Groups

BLOCK = 1000  # names a block holds after a sort; a block of twice that is split
Placed = tuple[str, int, int]  # (group name, intra_id, row) of one image


class KeyOrder:
    def __init__(self, names: Iterable[str] = ()) -> None:
        ordered = sorted(names)
        self.blocks = [ordered[at : at + BLOCK] for at in range(0, len(ordered), BLOCK)]  # none empty
        self.firsts = [block[0] for block in self.blocks]  # each block's first name, to bisect blocks by

    @classmethod
    def of(cls, groups: Groups) -> KeyOrder:
        """The order of what ``groups`` holds now (a sort of the group names: once, then kept in step)."""
        return cls(groups.names[g] for g in groups.members.per_group.nonzero()[0].tolist())

    @property
    def names(self) -> list[str]:
        return [name for block in self.blocks for name in block]

    def _find(self, name: str) -> tuple[int, int]:
        """(block, position) where ``name`` is or would go; (len(blocks), 0) past the end."""
        if not self.blocks:
            return 0, 0
        b = max(bisect.bisect_right(self.firsts, name) - 1, 0)
        at = bisect.bisect_left(self.blocks[b], name)
        return (b + 1, 0) if at == len(self.blocks[b]) else (b, at)

    def add(self, fresh: list[str]) -> None:
        """Groups that just got their first image (none of them here yet). In name order, the blocks they go
        to are read one after another (a bisection costs cache misses more than compares)."""
        for name in sorted(fresh):
            if not self.blocks:
                self.blocks, self.firsts = [[name]], [name]
                continue
            b = max(bisect.bisect_right(self.firsts, name) - 1, 0)
            block = self.blocks[b]
            bisect.insort(block, name)
            self.firsts[b] = block[0]
            if len(block) >= 2 * BLOCK:
                self.blocks[b : b + 1] = [block[:BLOCK], block[BLOCK:]]
                self.firsts.insert(b + 1, block[BLOCK])

    def discard(self, name: str) -> None:
        """A group that lost its last image."""
        b, at = self._find(name)
        if b == len(self.blocks) or self.blocks[b][at] != name:
            return
        block = self.blocks[b]
        del block[at]
        if block:
            self.firsts[b] = block[0]
        else:
            del self.blocks[b], self.firsts[b]

    def clear(self) -> None:
        self.blocks, self.firsts = [], []

    def page(self, groups: Groups, group_id: str | None, after: Key | None, limit: int) -> tuple[list[Placed], bool]:
        """(group name, intra_id, row) of up to ``limit`` images in key order strictly after ``after`` (of one
        group with ``group_id``), and whether more follow."""
        limit = max(limit, 0)
        members = groups.members
        if group_id is not None:
            g = groups.number.get(group_id)
            if g is None or (after is not None and after[0] > group_id):
                return [], False
            low = after[1] if after is not None and after[0] == group_id else -1
            found = [(group_id, i, r) for i, r in members.ordered(g, low, limit + 1)]
            return found[:limit], len(found) > limit
        b, at, low = 0, 0, -1
        if after is not None:
            b, at = self._find(after[0])
            if b < len(self.blocks) and self.blocks[b][at] == after[0]:
                low = after[1]
        found: list[Placed] = []
        while b < len(self.blocks) and len(found) <= limit:  # one past the page says whether more follow
            block = self.blocks[b]
            while at < len(block) and len(found) <= limit:
                name = block[at]
                found += [(name, i, r) for i, r in members.ordered(groups.number[name], low, limit + 1 - len(found))]
                at, low = at + 1, -1
            b, at = b + 1, 0
        return found[:limit], len(found) > limit
