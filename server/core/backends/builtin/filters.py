"""Attribute filters as an index: per attribute key, one small integer code per row.

``where`` (attributes that must all equal given values) used to be a Python scan of every
row's attribute dict under the database lock: 52 ms at 50k rows against 11 ms unfiltered, and
a writer waited behind every filtered search. Here each filtered key has a column of int32
codes by row (0 = the row lacks the key) and a value -> code dict, so a filter is one
vectorised compare per key (about 1 ms at 1M rows), ANDed with the live mask outside the lock.

Why codes by row and not a bitmap per value: a key like ``lookalike.sha256`` has a value per
image; a bitmap (or a row array) per value would cost a numpy object per image, a code column
costs 4 bytes a row whatever the cardinality. The value dict shares its strings with the
attribute dicts, so it adds one dict entry per distinct value. Columns are built lazily, on
the first filter on a key (most keys are never filtered on), outside the lock, and kept
current from then on.

Like the row chunks, a column never changes below the rows a search has seen: new rows are
written past them, a clear or a compaction installs new arrays, and growth copies. Retired
rows keep their codes; the live mask drops them. So a search reads a column without a copy.
The database calls every method but ``ensure`` under its lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from lookalike.server.core.backends.builtin.records import grown

BUILD_TRIES = 3  # builds outside the lock a clear or compaction may void before one runs under it


class KeyColumn:
    """One attribute key: value codes by row, and the value -> code dict."""

    def __init__(self, start: int) -> None:
        self.codes = np.zeros(max(start, 1024), np.int32)
        self.values: dict[str, int] = {}
        self.next_code = 1
        self.start = start  # rows below it come from the build; the database writes later ones
        self.ready = False
        self.done = threading.Event()  # set when the build is merged or voided

    def code(self, value: str) -> int:
        c = self.values.get(value)
        if c is None:
            c = self.values[value] = self.next_code
            self.next_code += 1
        return c

    def merge(self, low: np.ndarray, local: dict[str, int]) -> None:
        """The build's codes of rows below ``start`` (numbered by ``local``) joined with those written
        meanwhile. The build's numbering is kept and the few values written meanwhile are renumbered,
        so the time under the lock does not grow with the distinct values (a digest has 1M at 1M rows)."""
        table = np.zeros(self.next_code, np.int32)
        for value, c in self.values.items():
            table[c] = local.setdefault(value, len(local) + 1)
        self.codes[self.start :] = table[self.codes[self.start :]]
        self.codes[: len(low)] = low
        self.values, self.next_code = local, len(local) + 1
        self.ready = True


def scan(attrs: Mapping[int, Mapping[str, str]], key: str, rows: int) -> tuple[np.ndarray, dict[str, int]]:
    """Codes of ``key`` for rows below ``rows``, numbered by a dict of its own (safe without the lock:
    rows below ``rows`` never gain attributes, a retired row losing its own only drops a dead row)."""
    low = np.zeros(rows, np.int32)
    local: dict[str, int] = {}
    get = attrs.get
    for row in list(attrs):  # a copy of the keys: the dict may change while this runs
        if row < rows:
            a = get(row)
            value = a.get(key) if a else None
            if value is not None:
                c = local.get(value)
                if c is None:
                    c = local[value] = len(local) + 1
                low[row] = c
    return low, local


class FilterIndex:
    """The key columns of one database (only keys some search filtered on)."""

    def __init__(self) -> None:
        self.columns: dict[str, KeyColumn] = {}

    # -- kept current by the database (under its lock) --------------------------------------
    def appended(self, first: int, attributes: Sequence[Mapping[str, str] | None]) -> None:
        """Rows ``first``.. were written with these attributes (rows no search has seen yet)."""
        end = first + len(attributes)
        for key, col in self.columns.items():
            col.codes = grown(col.codes, len(col.codes), end)
            for k, a in enumerate(attributes):
                value = a.get(key) if a else None
                if value is not None:
                    col.codes[first + k] = col.code(value)

    def cleared(self) -> None:
        """Every row retired: fresh columns (searches running keep the old arrays)."""
        for key, col in list(self.columns.items()):
            if not col.ready:
                self._void(key)
                continue
            col.codes = np.zeros(len(col.codes), np.int32)
            col.values, col.next_code = {}, 1

    def compacted(self, kept: np.ndarray) -> None:
        """Row ``kept[j]`` is now ``j``; values no kept row holds are forgotten."""
        for key, col in list(self.columns.items()):
            if not col.ready:
                self._void(key)
                continue
            codes = np.zeros(max(len(kept), 1024), np.int32)
            codes[: len(kept)] = col.codes[kept]
            present = np.zeros(col.next_code, bool)
            present[codes[: len(kept)]] = True
            col.codes = codes
            col.values = {v: c for v, c in col.values.items() if present[c]}

    def _void(self, key: str) -> None:
        """Drop a column whose build is still running (its rows moved or went); the builder retries."""
        col = self.columns.pop(key)
        col.done.set()

    # -- used by searches ------------------------------------------------------------------
    def terms(self, where: Mapping[str, str], n: int) -> list[tuple[np.ndarray, int]] | None:
        """(codes of rows below ``n``, code wanted) per key, or None when a value is on no row
        (lock held, every key ``ensure``d first: a built column is never dropped, so it is there)."""
        out = []
        for key, value in where.items():
            col = self.columns.get(key)
            if col is None or not col.ready:
                raise KeyError(key)
            c = col.values.get(value)
            if c is None:
                return None
            out.append((col.codes[:n], c))
        return out

    def ensure(
        self,
        keys: Iterable[str],
        lock: threading.Lock,
        state: Callable[[], tuple[Mapping[int, Mapping[str, str]], int]],
    ) -> None:
        """Build the columns of ``keys`` not built yet, scanning the attributes outside ``lock``.

        ``state()`` (called under the lock) gives the attribute dict and the row count. Rows
        written during the scan are coded by ``appended`` meanwhile; a clear or compaction voids
        the build and it starts again (after ``BUILD_TRIES``, it runs under the lock).
        """
        for key in keys:
            for _ in range(BUILD_TRIES):
                with lock:
                    col = self.columns.get(key)
                    if col is not None and col.ready:
                        break
                    mine = col is None
                    if mine:
                        attrs, rows = state()
                        col = self.columns[key] = KeyColumn(rows)
                if not mine:
                    col.done.wait()  # another search is building it
                    continue
                try:
                    low, local = scan(attrs, key, col.start)
                    with lock:
                        if self.columns.get(key) is col:
                            col.merge(low, local)
                finally:
                    with lock:
                        if not col.ready and self.columns.get(key) is col:
                            del self.columns[key]
                    col.done.set()
                if col.ready:
                    break
            else:
                with lock:
                    col = self.columns.get(key)
                    if col is None or not col.ready:
                        attrs, rows = state()
                        fresh = KeyColumn(rows)
                        fresh.merge(*scan(attrs, key, rows))
                        self.columns[key] = fresh
                        if col is not None:
                            col.done.set()

    def memory(self) -> int:
        """Bytes of the code arrays (the value dicts come on top: about 100 bytes per distinct value)."""
        return sum(col.codes.nbytes for col in self.columns.values())


def mask_of(terms: list[tuple[np.ndarray, int]], live: np.ndarray) -> np.ndarray:
    """uint8 row mask: live rows whose codes equal every term's (outside the lock: nothing here changes)."""
    out = np.not_equal(live, 0)
    for codes, c in terms:
        out &= codes == c
    return out.view(np.uint8)
