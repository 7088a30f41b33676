"""The built-in store's retry window: request ids per database, with the result they got.

The most recent ``size`` ids of a database are kept (oldest dropped first), and an id is
forgotten as soon as the image it wrote is deleted, so a retry never resurrects a delete and
a re-add after a delete is a new write. The window is rebuilt by log replay and saved with
each checkpoint.
"""

from __future__ import annotations

from collections import OrderedDict

from lookalike.server.core.backends.api import RETRY_WINDOW, Key, SetResult


class RequestWindow:
    def __init__(self, size: int = RETRY_WINDOW) -> None:
        self.size = size
        self._seen: OrderedDict[str, tuple[SetResult, str]] = OrderedDict()  # id -> (result, fingerprint)
        self._by_key: dict[Key, set[str]] = {}
        self._by_group: dict[str, set[Key]] = {}  # so deleting a group costs its keys, not the window

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, request_ids: list[str]) -> dict[str, tuple[SetResult, str]]:
        return {r: self._seen[r] for r in request_ids if r in self._seen}

    def remember(self, request_id: str, key: Key, replaced: bool, fingerprint: str = "") -> None:
        if not request_id:
            return
        self._drop(request_id)
        self._seen[request_id] = (SetResult(key, replaced), fingerprint)
        self._by_key.setdefault(key, set()).add(request_id)
        self._by_group.setdefault(key[0], set()).add(key)
        while len(self._seen) > self.size:
            self._drop(next(iter(self._seen)))

    def _drop(self, request_id: str) -> None:
        old = self._seen.pop(request_id, None)
        if old is None:
            return
        key = old[0].key
        ids = self._by_key.get(key)
        if ids is not None:
            ids.discard(request_id)
            if not ids:
                del self._by_key[key]
                keys = self._by_group.get(key[0])
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self._by_group[key[0]]

    def forget_key(self, key: Key) -> None:
        for request_id in list(self._by_key.get(key, ())):
            self._drop(request_id)

    def forget_group(self, group_id: str) -> None:
        for key in list(self._by_group.get(group_id, ())):
            self.forget_key(key)

    def items(self) -> list[tuple[str, SetResult, str]]:
        return [(r, result, fingerprint) for r, (result, fingerprint) in self._seen.items()]
