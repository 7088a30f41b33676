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
        self._seen: OrderedDict[str, SetResult] = OrderedDict()
        self._by_key: dict[Key, set[str]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def get(self, request_id: str) -> SetResult | None:
        return self._seen.get(request_id) if request_id else None

    def remember(self, request_id: str, key: Key, replaced: bool) -> None:
        if not request_id:
            return
        self._drop(request_id)
        self._seen[request_id] = SetResult(key, replaced)
        self._by_key.setdefault(key, set()).add(request_id)
        while len(self._seen) > self.size:
            self._drop(next(iter(self._seen)))

    def _drop(self, request_id: str) -> None:
        old = self._seen.pop(request_id, None)
        if old is not None:
            ids = self._by_key.get(old.key)
            if ids is not None:
                ids.discard(request_id)
                if not ids:
                    del self._by_key[old.key]

    def forget_key(self, key: Key) -> None:
        for request_id in list(self._by_key.get(key, ())):
            self._drop(request_id)

    def forget_group(self, group_id: str) -> None:
        for key in [k for k in self._by_key if k[0] == group_id]:
            self.forget_key(key)

    def items(self) -> list[tuple[str, SetResult]]:
        return list(self._seen.items())
