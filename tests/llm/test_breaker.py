from __future__ import annotations

from concilium.llm.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock: Clock, changes: list[BreakerState] | None = None) -> CircuitBreaker:
    return CircuitBreaker(
        "b",
        failure_threshold=5,
        reset_seconds=30,
        clock=clock,
        on_change=(lambda _n, s: changes.append(s)) if changes is not None else None,
    )


def test_opens_after_five_consecutive_failures_only() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(4):
        breaker.record_failure()
    breaker.record_success()  # resets the count
    for _ in range(4):
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()


def test_half_open_after_reset_delay_lets_one_trial_through() -> None:
    clock = Clock()
    changes: list[BreakerState] = []
    breaker = _breaker(clock, changes)
    for _ in range(5):
        breaker.record_failure()
    clock.now += 29.9
    assert not breaker.allow()
    assert 0 < breaker.retry_in() <= 0.1 + 1e-9
    clock.now += 0.1
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow()  # one trial at a time
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_failed_trial_reopens_for_a_full_delay() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(5):
        breaker.record_failure()
    clock.now += 30
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 29
    assert not breaker.allow()


def test_released_trial_frees_the_half_open_slot() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(5):
        breaker.record_failure()
    clock.now += 30
    assert breaker.allow()
    breaker.release()
    assert breaker.allow()
