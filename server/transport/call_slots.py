"""The server's call slots: one ``--max-inflight`` count that the gRPC and HTTP ports share."""

from __future__ import annotations

import threading


class CallSlots:
    """The calls the server works on at once (``--max-inflight``), one count for every port.

    The gRPC and HTTP ports take from the same slots, so the limit holds for the server as a
    whole, not once per port. Taking never blocks: a call that finds none left is refused.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = threading.BoundedSemaphore(limit)

    def take(self) -> bool:
        return self._free.acquire(blocking=False)

    def give_back(self) -> None:
        self._free.release()
