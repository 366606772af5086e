"""
The process's open-file limit (C{RLIMIT_NOFILE}, C{ulimit -n}): every client
connection takes one descriptor, and a hub that runs out of them has its
connections closed by Twisted's EMFILE recovery before it sees them.
"""

from __future__ import annotations

import resource


def limit() -> tuple[int, int]:
    """The soft and hard open-file limits (C{RLIM_INFINITY} as a large int)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _finite(soft), _finite(hard)


def raise_limit(wanted: int) -> int:
    """Raise the soft limit toward C{wanted}, as far as the hard limit allows;
    return the soft limit in force afterwards (never lowered)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if _finite(soft) >= wanted:
        return _finite(soft)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return _finite(soft)
    return target


def _finite(value: int) -> int:
    return 2**62 if value == resource.RLIM_INFINITY else value
