"""The Milvus backend's retry window: request ids in the catalog collection, shared by every replica.

One catalog row per remembered id (``kind == "request"``), keyed by the database incarnation
and the id, holding the key it wrote and its ``replaced`` flag; ``grp`` is the image's row key,
so deleting an image, a group or a database forgets exactly the ids that wrote it. The newest
``size`` ids per database are kept: each replica counts what it records and trims the oldest
(by ``block``, the time it was recorded) once the window may have overflowed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from lookalike.server.core.backends.api import RETRY_WINDOW, Key, SetResult
from lookalike.server.storage.milvus_store import KEY_SEPARATOR, MilvusStore, literal, row_key

DELETE_BATCH = 500


def _pk(incarnation: str, request_id: str) -> str:
    return f"request{KEY_SEPARATOR}{incarnation}{KEY_SEPARATOR}{request_id}"


def _scope(incarnation: str) -> str:
    return f'kind == "request" and db == {literal(incarnation)}'


class MilvusRequestWindow:
    def __init__(self, store: MilvusStore, guard: Callable[[Callable[[], Any]], Any], size: int = RETRY_WINDOW) -> None:
        self.store = store
        self.guard = guard
        self.size = size
        self._recorded: dict[str, int] = {}  # incarnation -> ids recorded by this replica since the last count
        self._lock = threading.Lock()

    def seen(self, incarnation: str, request_ids: list[str]) -> dict[str, tuple[SetResult, str]]:
        """(first result, fingerprint) of each id in the window."""
        if not request_ids:
            return {}
        expr = "pk in [" + ", ".join(literal(_pk(incarnation, r)) for r in request_ids) + "]"
        rows = self.guard(lambda: self.store.meta_rows(expr, ["pk", "info"]))
        found = {}
        for row in rows:
            info = row["info"]
            request_id = row["pk"].split(KEY_SEPARATOR, 2)[2]
            result = SetResult((str(info["g"]), int(info["i"])), bool(info["replaced"]))
            found[request_id] = (result, str(info.get("f", "")))
        return found

    def remember(self, incarnation: str, results: list[tuple[str, SetResult, str]]) -> None:
        """Record (request id, result, fingerprint) of each write."""
        rows = []
        now = time.time_ns()
        for n, (request_id, result, fingerprint) in enumerate(results):
            if request_id:
                g, i = result.key
                rows.append({"pk": _pk(incarnation, request_id), "kind": "request", "db": incarnation,
                             "grp": row_key(g, i), "block": now + n,
                             "info": {"g": g, "i": i, "replaced": result.replaced, "f": fingerprint}})  # fmt: skip
        if not rows:
            return
        self.guard(lambda: self.store.put_meta(rows))
        with self._lock:
            count = self._recorded[incarnation] = self._recorded.get(incarnation, 0) + len(rows)
            due = count >= max(1, self.size // 8)
            if due:
                self._recorded[incarnation] = 0
        if due:
            self._trim(incarnation)

    def _trim(self, incarnation: str) -> None:
        rows = self.guard(lambda: self.store.meta_rows(_scope(incarnation), ["count(*)"]))
        total = int(rows[0]["count(*)"]) if rows else 0
        if total <= self.size:
            return
        every = [r for batch in self.guard(lambda: list(self.store.meta_scan(_scope(incarnation), ["pk", "block"])))
                 for r in batch]  # fmt: skip
        every.sort(key=lambda r: int(r["block"]))
        oldest = [r["pk"] for r in every[: len(every) - self.size]]
        for start in range(0, len(oldest), DELETE_BATCH):
            part = oldest[start : start + DELETE_BATCH]
            expr = "pk in [" + ", ".join(literal(pk) for pk in part) + "]"
            self.guard(lambda expr=expr: self.store.delete_meta(expr))

    def forget_key(self, incarnation: str, key: Key) -> None:
        self.guard(lambda: self.store.delete_meta(f"{_scope(incarnation)} and grp == {literal(row_key(*key))}"))

    def forget_group(self, incarnation: str, group_id: str) -> None:
        low, high = group_id + KEY_SEPARATOR, group_id + chr(ord(KEY_SEPARATOR) + 1)
        expr = f"{_scope(incarnation)} and grp >= {literal(low)} and grp < {literal(high)}"
        self.guard(lambda: self.store.delete_meta(expr))

    def forget_all(self, incarnation: str) -> None:
        self.guard(lambda: self.store.delete_meta(_scope(incarnation)))
