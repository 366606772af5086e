"""
The defaults of WebSocket members, apart from the modules that load
Autobahn: the plugin's options read them without loading it.
"""

from __future__ import annotations

from typing import Final

DEFAULT_PING_INTERVAL: Final = 30.0
"""Seconds between the hub's pings to a member."""
DEFAULT_PING_TIMEOUT: Final = 30.0
"""Seconds a member has to answer a ping."""
DEFAULT_CLOSE_TIMEOUT: Final = 5.0
"""Seconds a closing handshake may take before TCP is dropped."""
DEFAULT_HTTP_TIMEOUT: Final = 30.0
"""Seconds an HTTP connection may stay silent before the upgrade (a
slowloris holding connections open with half-sent requests)."""
