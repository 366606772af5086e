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
MAX_FRAGMENTS: Final = 128
"""Frames of one message (a browser sends one); more closes the member with
1008, counted in C{protocol_errors}."""
MAX_FRAMES_PER_SECOND: Final = 2000
"""Frames a member may send a second (burst as many), data and control
alike; past it the member is dropped (1008, C{protocol_errors})."""
MAX_PINGS_PER_SECOND: Final = 10
"""Pings a member may send a second (burst as many); past it the member is
dropped (1008, C{protocol_errors})."""
