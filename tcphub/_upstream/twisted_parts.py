"""
Adapters to private parts of Twisted (see L{tcphub._upstream}).
"""

from __future__ import annotations

import array
import fcntl
import socket
import termios
from typing import Any, Callable, Mapping, cast

from twisted.application.internet import ClientService
from twisted.internet import tcp, unix
from twisted.internet.abstract import FileDescriptor
from twisted.logger import ILogObserver, LegacyLogObserverWrapper, Logger
from twisted.protocols import basic

__all__ = ["NetstringParser", "QuietClientService", "is_emfile_recovery", "send_now", "twistd_destination",
           "unsent_bytes", "write_now", "write_sequence_now"]


class QuietClientService(ClientService):
    """
    A C{ClientService} that does not log each retry itself (Twisted's line,
    "Scheduling retry 3 to connect <…TCP4ClientEndpoint object at 0x…> in
    0.79… seconds", names an object's address, not a place, and comes once
    per attempt): its user says what failed, once per burst.
    """

    _log = Logger(observer=cast(ILogObserver, lambda event: None))


def _buffered(transport: FileDescriptor) -> int:
    """Bytes waiting in Twisted's write buffer for C{transport}: C{dataBuffer}
    past C{offset}, and C{_tempDataLen} not yet joined to it."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def send_now(transport: Any, data: bytes) -> bool:
    """
    Hand C{data} to the kernel at once, if the socket takes it whole without
    waiting, for a TCP or UNIX C{transport} with nothing in Twisted's write
    buffer (so that it cannot land inside a message being written): last
    words before an C{abortConnection}, which drops Twisted's buffer.  False
    for any other transport, or if the socket did not take it all.
    """
    if not isinstance(transport, FileDescriptor):
        return False
    sock = getattr(transport, "socket", None)
    if not isinstance(sock, socket.socket) or sock.fileno() < 0:
        return False
    if _buffered(transport):
        return False
    try:
        return sock.send(data, socket.MSG_DONTWAIT) == len(data)
    except OSError:
        return False


_PLAIN_SOCKETS = (tcp.Server, unix.Server)


def _clear_to_send(transport: Any) -> bool:
    """Whether C{write_now} may hand bytes to C{transport}'s socket itself:
    an accepted TCP or UNIX connection, not TLS, open, neither closing (either
    way) nor aborted, with nothing in Twisted's write buffer (so that nothing
    it writes can overtake what waits there)."""
    return (type(transport) in _PLAIN_SOCKETS and not transport.TLS and transport.connected
            and not transport.disconnecting and not transport._writeDisconnecting and not transport._aborting
            and not _buffered(transport))


def write_now(transport: Any, data: bytes) -> None:
    """
    C{transport.write(data)}, with the bytes handed to the kernel at once when
    the socket takes them without waiting, as Node's libuv tries a write
    before it queues one (C{uv_try_write}): that saves the reactor a round
    per write (registering the socket for writing, a poll, the write,
    unregistering).  What the socket does not take, and everything for
    another transport or while Twisted's buffer holds something, goes to
    C{transport.write}, so the order of bytes and Twisted's pausing of a
    producer are as they were.
    """
    if _clear_to_send(transport):
        try:
            sent = transport.socket.send(data)
        except OSError:  # EAGAIN; or a broken connection, which Twisted's own write then finds
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def write_sequence_now(transport: Any, parts: list[bytes]) -> None:
    """C{transport.writeSequence(parts)} as L{write_now} does a write, the
    parts given to the kernel in one C{sendmsg} without joining them."""
    if _clear_to_send(transport):
        try:
            sent = transport.socket.sendmsg(parts)
        except OSError:  # EAGAIN, too many parts for one call, or a broken connection
            sent = 0
        for index, part in enumerate(parts):
            if sent < len(part):
                parts = [part[sent:], *parts[index + 1:]]
                break
            sent -= len(part)
        else:
            return
    transport.writeSequence(parts)


def unsent_bytes(transport: Any) -> int | None:
    """
    Bytes written to a TCP or UNIX C{transport} that its peer has not yet
    acknowledged: Twisted's write buffer (C{FileDescriptor.dataBuffer} past
    C{offset}, plus C{_tempDataLen}) and the kernel's send queue
    (C{SIOCOUTQ}).  C{None} for other transports (TLS, WebSocket, tests'
    doubles), whose buffers say nothing about what the peer received.
    """
    if not isinstance(transport, FileDescriptor):
        return None
    buffered = _buffered(transport)
    sock = getattr(transport, "socket", None)
    if not isinstance(sock, socket.socket) or sock.fileno() < 0:
        return buffered
    queued = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, queued)  # SIOCOUTQ on Linux
    except OSError:
        return buffered
    return buffered + queued[0]


EMFILE_RECOVERY_FORMAT = "EMFILE recovery: Closed socket from {address}"
"""The line C{twisted.internet.tcp.Port.doRead} logs when it closes a
connection it had no descriptor for: its only trace."""


def is_emfile_recovery(event: Mapping[str, Any]) -> bool:
    """Whether a log event is Twisted closing a connection for want of a descriptor."""
    return event.get("log_format") == EMFILE_RECOVERY_FORMAT


def twistd_destination(server_options: Mapping[str, Any]) -> ILogObserver:
    """What twistd itself would log to for C{server_options} (a file with
    SIGUSR1 rotation, stdout, or syslog): its only entry point is
    C{_SomeApplicationRunner.loggerFactory(...)._getLogObserver()}."""
    from twisted.scripts.twistd import _SomeApplicationRunner

    made = _SomeApplicationRunner.loggerFactory(server_options)._getLogObserver()
    return made if ILogObserver.providedBy(made) else LegacyLogObserverWrapper(made)


class NetstringParser(basic.NetstringReceiver):
    """
    Twisted's netstring parser (linear already: it collects a payload in a
    C{BytesIO}), told apart from its private state: L{partial},
    L{unfinished}, and the two ways a stream breaks, C{too_long} and
    C{malformed(message)}.
    """

    _error: basic.NetstringParseError | None = None

    def __init__(self, max_length: int, frame: Callable[[bytes], None],
                 too_long: Callable[[], None], malformed: Callable[[str], None]) -> None:
        self.MAX_LENGTH = max_length
        self._frame = frame
        self._too_long = too_long
        self._malformed = malformed
        self.makeConnection(None)

    @property
    def partial(self) -> bool:
        """A netstring has begun and is not complete."""
        return bool(self._remainingData) or self._state == self._PARSING_PAYLOAD

    def unfinished(self) -> int:
        """The bytes of the netstring begun, dropped if the input ends now."""
        return len(self._remainingData) + self._currentPayloadSize if self.partial else 0

    def stop(self) -> None:
        """Parse nothing more."""
        self.brokenPeer = 1

    def stringReceived(self, string: bytes) -> None:
        self._frame(string)

    def _consumeData(self) -> None:
        # NetstringReceiver swallows the parse error before calling
        # _handleParseError; keep it, to tell an over-long frame from garbage.
        try:
            super()._consumeData()
        except basic.NetstringParseError as error:
            self._error = error
            raise

    def _handleParseError(self) -> None:
        self.brokenPeer = 1
        message = str(self._error)
        if message == self._TOO_LONG % (self.MAX_LENGTH,):
            self._too_long()
        else:
            self._malformed(message)
