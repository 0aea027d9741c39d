"""A small in-process circuit breaker, one circuit per (provider, model).

Closed: calls go through; `failures` retryable failures in a row open it. Open: calls are
skipped until `cooldown_seconds` have passed; then it is half-open and lets exactly one
trial call through (concurrent callers keep skipping): a success closes it, a failure opens
it for another cool-down. An answer that is not a failure of the provider (a refusal, a
rejected request) shows it is up, and counts as a success.

Written here rather than taken from a library: `aiobreaker` has had no release since 2021;
`purgatory` (maintained) counts every exception raised in its context unless configured
per type, raises instead of telling the caller to skip, and reads the wall clock, where the
chain needs "may I try this one?" per key, a half-open slot held across an await, and an
injected clock for its tests. It is shared by every task of one worker (one event loop, so
no lock is needed: nothing here awaits).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Key = tuple[str, str]  # (provider, model)
State = Literal["closed", "open", "half-open"]


@dataclass
class _Circuit:
    consecutive_failures: int = 0
    opened_at: float | None = None
    trial_running: bool = False


class CircuitBreaker:
    def __init__(
        self,
        failures: int = 5,
        cooldown_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1:
            raise ValueError("failures must be at least 1")
        self.failures = failures
        self.cooldown_seconds = cooldown_seconds
        self._clock = clock
        self._circuits: dict[Key, _Circuit] = {}

    def state(self, key: Key) -> State:
        circuit = self._circuits.get(key)
        if circuit is None or circuit.opened_at is None:
            return "closed"
        if circuit.trial_running or self._clock() - circuit.opened_at >= self.cooldown_seconds:
            return "half-open"
        return "open"

    def allow(self, key: Key) -> bool:
        """May a call to `key` go ahead now? A True from a half-open circuit is its one trial:
        the caller must report `succeeded`, `failed` or `released` afterwards."""
        circuit = self._circuits.setdefault(key, _Circuit())
        if circuit.opened_at is None:
            return True
        if circuit.trial_running:
            return False
        if self._clock() - circuit.opened_at < self.cooldown_seconds:
            return False
        circuit.trial_running = True
        return True

    def succeeded(self, key: Key) -> None:
        self._circuits[key] = _Circuit()

    def failed(self, key: Key) -> None:
        circuit = self._circuits.setdefault(key, _Circuit())
        circuit.consecutive_failures += 1
        if circuit.trial_running or circuit.consecutive_failures >= self.failures:
            circuit.opened_at = self._clock()
        circuit.trial_running = False

    def released(self, key: Key) -> None:
        """The call ended without a verdict (cancelled): a trial slot goes back unused."""
        circuit = self._circuits.get(key)
        if circuit is not None:
            circuit.trial_running = False
