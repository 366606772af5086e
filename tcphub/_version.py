"""The installed version, for what tcphub tells others (a user agent, /varz)."""

from __future__ import annotations

import importlib.metadata


def version() -> str:
    try:
        return importlib.metadata.version("tcphub")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
