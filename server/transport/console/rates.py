"""The status page's request table: per method, since the server started and over the last minute or so.

An average since start hides what the server does now (a day of idle under an hour of load reads as a trickle),
so each view also keeps a snapshot of the counters and the page shows the rate since a recent one: the newest
at least ``RECENT_MIN_S`` old, else the oldest kept (views seconds apart), never older than ``RECENT_MAX_S``.
The numbers are the server's own Prometheus registry's; nothing runs between views.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

RECENT_MIN_S = 60.0
RECENT_MAX_S = 600.0

Counts = dict[str, tuple[float, float, float]]  # method -> (calls, failed, seconds)


def read_counts(metrics: Any) -> tuple[Counts, float]:
    """Calls, failures and summed latency per method, and the process's start time (0 when unknown)."""
    rows: dict[str, list[float]] = {}
    started = 0.0
    for family in metrics.registry.collect():
        for s in family.samples:
            method = s.labels.get("method", "")
            if s.name == "process_start_time_seconds":
                started = s.value
            elif s.name == "lookalike_requests_total":
                row = rows.setdefault(method, [0.0, 0.0, 0.0])
                row[0] += s.value
                row[1] += 0 if s.labels.get("code") == "OK" else s.value
            elif s.name == "lookalike_request_seconds_sum":
                rows.setdefault(method, [0.0, 0.0, 0.0])[2] += s.value
    return {m: (r[0], r[1], r[2]) for m, r in rows.items()}, started


class RequestRates:
    """The table's rows, each view remembered for the next one's recent rates."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: deque[tuple[float, Counts]] = deque()

    def _since(self, now: float, counts: Counts) -> tuple[float, Counts] | None:
        with self._lock:
            while self._seen and now - self._seen[0][0] > RECENT_MAX_S:
                self._seen.popleft()
            old = [s for s in self._seen if now - s[0] >= RECENT_MIN_S]
            base = old[-1] if old else (self._seen[0] if self._seen else None)
            while len(self._seen) >= 2 and now - self._seen[1][0] >= RECENT_MIN_S:
                self._seen.popleft()  # only the newest snapshot old enough is needed again
            self._seen.append((now, counts))
        return base

    def rows(self, metrics: Any) -> tuple[list[dict[str, Any]], float, float]:
        """(rows largest first, uptime s, recent window s: 0 on a first view); a row: method, calls, failed,
        mean_ms, per_s (since start) and recent_per_s (over the window; None on a first view)."""
        if metrics is None:
            return [], 0.0, 0.0
        counts, started = read_counts(metrics)
        now = time.time()
        uptime = max(now - started, 1e-9) if started else 0.0
        base = self._since(now, counts)
        window = now - base[0] if base else 0.0
        rows = []
        for method, (calls, failed, seconds) in counts.items():
            recent = None
            if base is not None and window > 0:
                recent = (calls - base[1].get(method, (0.0, 0.0, 0.0))[0]) / window
            rows.append({"method": method, "calls": calls, "failed": failed, "recent_per_s": recent,
                         "mean_ms": 1000 * seconds / calls if calls else 0.0,
                         "per_s": calls / uptime if uptime else 0.0})  # fmt: skip
        return sorted(rows, key=lambda r: -r["calls"]), uptime, window
