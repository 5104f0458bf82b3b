"""Being polite on poor links: sync windows, a bandwidth cap, data budgets."""

from __future__ import annotations

import threading
import time as _time
from datetime import datetime, time


def in_windows(windows: list[tuple[time, time]], when: datetime | None = None) -> bool:
    """True when ``when`` falls in one of the windows (none configured: always)."""
    if not windows:
        return True
    t = (when or datetime.now()).time()
    for start, end in windows:
        if start <= end:
            if start <= t < end:
                return True
        elif t >= start or t < end:  # wraps past midnight, e.g. 22:00-06:00
            return True
    return False


class RateLimiter:
    """A token bucket shared by all downloads of one sync (bytes per second; 0: no cap)."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = float(rate)
        self.burst = burst if burst is not None else max(self.rate / 4, 16 * 1024)
        self.tokens = self.burst
        self.last = _time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        with self.lock:
            now = _time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            self.tokens -= n
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait > 0:
            _time.sleep(wait)


def parse_rate_kbit(kbit: int) -> float:
    """kbit/s from the configuration -> bytes per second."""
    return max(0, int(kbit)) * 1000 / 8
