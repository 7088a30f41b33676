"""Automatic intra_ids that stay unique when several replicas write one group at once.

Milvus has no counter and no compare-and-swap, so ids are handed out in blocks. A replica
claims block ``b`` of a group by writing a claim row and then reading every claim of that
block (Strong consistency: a read sees every write acknowledged before it). It owns the block
only if its claim is the only one it sees. Why that is safe: if A sees only its own claim,
any other claim of the block was written after A's read, so its writer reads A's claim and
gives up. Two replicas that both see both give up and try the next block (with jitter), so
no block ever has two owners. Inside an owned block ids are handed out in order; an id that
already names an image (one set explicitly) is skipped by the caller.

The guarantee: an automatic intra_id is never handed out twice, across replicas and restarts.
Numbers are dense within one replica's block; after a restart, or with several replicas, a
group's automatic ids may skip (a restarted replica starts at a fresh block).
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from lookalike.server.storage.milvus_store import KEY_SEPARATOR, MilvusStore, literal

MAX_CLAIM_ATTEMPTS = 64


class IntraIdLeases:
    def __init__(self, store: MilvusStore, block: int = 64, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.store = store
        self.block = block
        self.replica = secrets.token_hex(8)  # this process; claims carry it so each can recognise its own
        self._owned: dict[tuple[str, str], list[int]] = {}  # (incarnation, group) -> [next, end]
        self._floor: dict[tuple[str, str], int] = {}  # first id the next claimed block may hand out
        self._lock = threading.Lock()
        self._sleep = sleep
        self.claims = 0  # blocks claimed by this process (tests and logs)

    def take(self, incarnation: str, group_id: str, count: int) -> list[int]:
        """``count`` fresh ids for the group, in increasing order."""
        out: list[int] = []
        with self._lock:
            while len(out) < count:
                span = self._owned.get((incarnation, group_id))
                if span is None or span[0] >= span[1]:
                    floor = self._floor.pop((incarnation, group_id), 0)
                    span = self._owned[(incarnation, group_id)] = self._claim(incarnation, group_id, floor)
                n = min(count - len(out), span[1] - span[0])
                out.extend(range(span[0], span[0] + n))
                span[0] += n
        return out

    def saw_explicit(self, incarnation: str, group_id: str, intra_id: int) -> None:
        """An id set explicitly through this replica: later automatic ones here come after it, as built-in."""
        with self._lock:
            key = (incarnation, group_id)
            span = self._owned.get(key)
            if span is not None and span[0] <= intra_id < span[1]:
                span[0] = intra_id + 1
            elif span is None or intra_id >= span[1]:
                self._owned.pop(key, None)
                self._floor[key] = max(self._floor.get(key, 0), intra_id + 1)

    def forget(self, incarnation: str) -> None:
        with self._lock:
            for key in [k for k in self._owned if k[0] == incarnation]:
                del self._owned[key]
            for key in [k for k in self._floor if k[0] == incarnation]:
                del self._floor[key]

    def _claims(self, incarnation: str, group_id: str, block: int | None) -> list[dict[str, Any]]:
        expr = f'kind == "lease" and db == {literal(incarnation)} and grp == {literal(group_id)}'
        if block is not None:
            expr += f" and block == {block}"
        return self.store.meta_rows(expr, ["pk", "block"])

    def _claim(self, incarnation: str, group_id: str, floor: int = 0) -> list[int]:
        seen = self._claims(incarnation, group_id, None)
        block = max(max((int(r["block"]) for r in seen), default=-1) + 1, floor // self.block)
        for attempt in range(MAX_CLAIM_ATTEMPTS):
            pk = KEY_SEPARATOR.join(("lease", incarnation, group_id, f"{block:020d}", self.replica))
            self.store.put_meta([{"pk": pk, "kind": "lease", "db": incarnation, "grp": group_id, "block": block}])
            rivals = self._claims(incarnation, group_id, block)
            if [r["pk"] for r in rivals] == [pk]:
                self.claims += 1
                return [max(block * self.block, floor), (block + 1) * self.block]
            block = max(int(r["block"]) for r in rivals) + 1
            self._sleep(random.uniform(0, 0.002 * (attempt + 1)))
        raise TimeoutError(f"no block of intra_ids for group {group_id!r} after {MAX_CLAIM_ATTEMPTS} contested claims")

    def drop(self, incarnation: str) -> None:
        """Forget a deleted database's claims, here and in Milvus."""
        self.forget(incarnation)
        self.store.delete_meta(f'kind == "lease" and db == {literal(incarnation)}')
