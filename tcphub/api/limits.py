"""The HTTP API's default bounds (the plugin shows them without loading twisted.web)."""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_IDEMPOTENCY_WINDOW", "DEFAULT_MAX_BODY", "DEFAULT_MAX_CONCURRENT", "DEFAULT_MAX_RATE"]

DEFAULT_MAX_BODY: Final = 1024 * 1024
"""The largest request body, in bytes: a larger one is a 413 before it is read."""
DEFAULT_MAX_RATE: Final = 1000.0
"""Requests a second one key may make (its burst is as many): past it, a 429."""
DEFAULT_MAX_CONCURRENT: Final = 256
"""Requests the port answers at once: more are a 503."""
DEFAULT_IDEMPOTENCY_WINDOW: Final = 300.0
"""Seconds an idempotency key is remembered."""
