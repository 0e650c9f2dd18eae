"""The rolling window of request durations behind the admin page's rate and latency."""

from __future__ import annotations

import pytest

from concilium.observability.metrics import Metrics, RequestWindow, percentile


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 100) == 100
    assert percentile([7.0], 95) == 7
    assert percentile([], 50) is None


def test_latency_percentiles_and_rate_cover_only_the_window() -> None:
    clock = Clock()
    window = RequestWindow(window_s=300, clock=clock)
    clock.now += 600  # older than a window: the rate is over the whole window
    for ms in range(1, 101):
        window.record(ms / 1000)
    summary = window.summary()
    assert (summary.total, summary.in_window) == (100, 100)
    assert summary.per_minute == pytest.approx(20)
    assert summary.p50_ms == pytest.approx(50)
    assert summary.p95_ms == pytest.approx(95)

    clock.now += 301
    window.record(2.0)
    summary = window.summary()
    assert (summary.total, summary.in_window) == (101, 1)
    assert summary.p50_ms == summary.p95_ms == pytest.approx(2000)


def test_a_young_window_gives_its_rate_over_a_minute_at_least() -> None:
    clock = Clock()
    window = RequestWindow(window_s=300, clock=clock)
    clock.now += 2
    for _ in range(5):
        window.record(0.01)
    assert window.summary().per_minute == pytest.approx(5)
    clock.now += 118
    assert window.summary().per_minute == pytest.approx(2.5)


def test_an_empty_window_has_no_latency() -> None:
    summary = RequestWindow().summary()
    assert (summary.total, summary.per_minute, summary.p50_ms, summary.p95_ms) == (0, 0, None, None)


def test_a_full_window_keeps_the_newest_and_rates_over_their_span() -> None:
    clock = Clock()
    window = RequestWindow(window_s=300, capacity=10, clock=clock)
    clock.now += 600
    for _ in range(20):
        window.record(0.5)
        clock.now += 1
    summary = window.summary()
    assert (summary.total, summary.in_window) == (20, 10)
    assert summary.per_minute == pytest.approx(60)  # one a second, as recorded


def test_health_and_monitoring_polls_are_not_traffic() -> None:
    metrics = Metrics()
    for route in ("/health/live", "/health/ready", "/metrics", "/api/stats"):
        metrics.observe_request(route, 0.01)
    metrics.observe_request("/api/conversations", 0.01)
    metrics.observe_request("unmatched", 0.01)
    assert metrics.requests.summary().total == 2
