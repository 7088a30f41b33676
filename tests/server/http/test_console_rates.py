"""The status page's request rates (``server/transport/console/rates.py``): since start, and since a recent view.

Driven with the server's own ``ServerMetrics`` registry (the counters a real call increments) and a clock the
test moves: a view after an hour of idle and a burst must show the burst's rate, not the hour's average."""

from __future__ import annotations

import pytest
from lookalike.server.transport.console import rates
from lookalike.server.transport.console.rates import RequestRates
from lookalike.server.transport.metrics import ServerMetrics


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def calls(metrics: ServerMetrics, method: str, n: int, code: str = "OK", seconds: float = 0.01) -> None:
    for _ in range(n):
        metrics.requests.labels(method, code).inc()
        metrics.latency.labels(method, code).observe(seconds)


def by_method(rows: list[dict]) -> dict[str, dict]:
    return {r["method"]: r for r in rows}


def test_recent_rates_follow_the_views_not_the_uptime(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = ServerMetrics()
    started = next(s.value for f in metrics.registry.collect() for s in f.samples
                   if s.name == "process_start_time_seconds")  # fmt: skip
    clock = Clock(started + 3600)  # an hour up
    monkeypatch.setattr(rates.time, "time", clock)
    table = RequestRates()
    calls(metrics, "Search", 36)  # in the hour before the first view
    rows, uptime, window = table.rows(metrics)
    assert uptime == pytest.approx(3600) and window == 0
    first = by_method(rows)["Search"]
    assert first["calls"] == 36 and first["per_s"] == pytest.approx(0.01) and first["recent_per_s"] is None

    clock.now += 30  # a burst: 300 calls (2 refused) in 30 s, then a view
    calls(metrics, "Search", 298)
    calls(metrics, "Search", 2, code="INVALID_ARGUMENT")
    calls(metrics, "Match", 15, seconds=0.2)
    rows, uptime, window = table.rows(metrics)
    search, match = by_method(rows)["Search"], by_method(rows)["Match"]
    assert window == pytest.approx(30)  # no view 60 s old yet: since the first one
    assert search["recent_per_s"] == pytest.approx(10.0) and search["per_s"] == pytest.approx(336 / 3630)
    assert search["calls"] == 336 and search["failed"] == 2 and search["mean_ms"] == pytest.approx(10.0)
    assert match["recent_per_s"] == pytest.approx(0.5) and match["mean_ms"] == pytest.approx(200.0)
    assert [r["method"] for r in rows] == ["Search", "Match"]  # most calls first

    clock.now += 40  # idle since: the window is now the first view (70 s), the newest at least 60 s old
    rows, _, window = table.rows(metrics)
    assert window == pytest.approx(70) and by_method(rows)["Search"]["recent_per_s"] == pytest.approx(300 / 70)
    clock.now += 65  # the views at +30 and +70 are 105 and 65 s old: the newer one (+70) is the base
    calls(metrics, "Search", 13)
    rows, _, window = table.rows(metrics)
    assert window == pytest.approx(65) and by_method(rows)["Search"]["recent_per_s"] == pytest.approx(13 / 65)
    clock.now += rates.RECENT_MAX_S + 1  # every kept view is too old: the window starts again from this view
    rows, _, window = table.rows(metrics)
    assert window == 0 and by_method(rows)["Search"]["recent_per_s"] is None
    assert len(table._seen) <= 2  # not one snapshot per view for ever


def test_without_metrics_the_table_is_empty() -> None:
    assert RequestRates().rows(None) == ([], 0.0, 0.0)
