"""The token bucket behind the hub's C{max_rate} and C{max_burst}."""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """
    C{rate} tokens a second, at most C{burst} saved up: a client may send
    C{burst} messages at once, then C{rate} a second.  Pure: the caller
    passes the time, from its own clock.
    """

    __slots__ = ("rate", "burst", "_tokens", "_at")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> float:
        """Take a token: C{0.0} if one was there, else (taking none) the
        seconds until one is due."""
        tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return 0.0
        self._tokens = tokens
        return (1.0 - tokens) / self.rate

    def has_token(self, now: float) -> bool:
        """Whether a token is there at C{now} (none is taken)."""
        return self._tokens + (now - self._at) * self.rate >= 1.0

    def full(self, now: float) -> bool:
        """Whether the whole burst is saved up again at C{now}."""
        return self._tokens + (now - self._at) * self.rate >= self.burst
