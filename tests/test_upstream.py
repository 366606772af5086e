"""
The private parts of Twisted and Autobahn that tcphub relies on (all behind
L{tcphub._upstream}): each still exists and still behaves as the adapter
expects.  A failure here names the upstream symbol an upgrade changed.
"""

from __future__ import annotations

import importlib
import inspect
import re
import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from tcphub._upstream import PRIVATE_SYMBOLS
from tcphub._upstream.twisted_parts import (
    EMFILE_RECOVERY_FORMAT,
    NetstringParser,
    is_emfile_recovery,
    twistd_destination,
    unsent_bytes,
    write_now,
    write_sequence_now,
)


@pytest.mark.parametrize("module, owner, name", PRIVATE_SYMBOLS,
                         ids=[f"{owner}.{name}" for _, owner, name in PRIVATE_SYMBOLS])
def test_every_private_symbol_still_exists(module, owner, name):
    cls = getattr(importlib.import_module(module), owner)
    # Instance fields set in __init__ are found in its source.
    found = hasattr(cls, name) or f"self.{name} =" in inspect.getsource(cls)
    assert found, f"{module}.{owner}.{name} is gone: update tcphub._upstream"


def test_the_emfile_recovery_line_is_the_one_twisted_logs():
    from twisted.internet import tcp

    # Twisted writes the format as adjacent literals; compare without the seams.
    source = re.sub(r'"\s*"', "", inspect.getsource(tcp))
    assert EMFILE_RECOVERY_FORMAT in source, (
        "twisted.internet.tcp no longer logs "
        f"{EMFILE_RECOVERY_FORMAT!r}: descriptor_refusals would stay 0"
    )
    assert is_emfile_recovery({"log_format": EMFILE_RECOVERY_FORMAT, "address": "x"})
    assert not is_emfile_recovery({"log_format": "something else"})


def test_the_twistd_destination_is_an_observer(tmp_path):
    observer = twistd_destination({"logfile": str(tmp_path / "t.log"), "nodaemon": True})
    observer({"log_format": "hello {who}", "who": "there", "log_time": 0.0, "log_system": "-",
              "log_namespace": "test", "log_level": None})
    stop = getattr(observer, "stop", None)
    assert "hello there" in (tmp_path / "t.log").read_text()
    if stop is not None:
        stop()


def test_the_netstring_parser_tells_frames_too_long_and_garbage_apart():
    seen = []
    parser = NetstringParser(5, lambda frame: seen.append(("frame", frame)),
                             lambda: seen.append(("too_long",)), lambda message: seen.append(("bad", message)))
    parser.dataReceived(b"3:abc,2:x")
    assert seen == [("frame", b"abc")] and parser.partial and parser.unfinished() == 1
    parser.dataReceived(b"y,")
    assert not parser.partial and parser.unfinished() == 0
    parser.dataReceived(b"6:abcdef,")
    assert seen[-1] == ("too_long",)

    other = NetstringParser(5, seen.append, lambda: seen.append("too_long"), lambda message: seen.append(message))
    other.dataReceived(b"x:")
    assert isinstance(seen[-1], str) and seen[-1] != "too_long"


def test_unsent_bytes_is_none_for_a_transport_without_buffers():
    assert unsent_bytes(StringTransport()) is None


@pytest_twisted.inlineCallbacks
def test_unsent_bytes_sees_twisteds_buffer_and_the_kernels_send_queue():
    """A peer that never reads: what was written is in the kernel's queue
    and Twisted's buffer, and unsent_bytes finds all of it but what the
    peer's own receive buffer took."""
    accepted: Deferred[Protocol] = Deferred()

    class Accept(Protocol):
        def connectionMade(self) -> None:
            accepted.callback(self)

    port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Accept))
    peer = socket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    room = peer.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    peer.connect(("127.0.0.1", port.getHost().port))
    server = yield accepted
    written = 8 * 1024 * 1024
    server.transport.write(b"x" * written)
    unsent = unsent_bytes(server.transport)
    assert unsent is not None and written - room * 2 <= unsent <= written
    server.transport.abortConnection()
    peer.close()
    yield port.stopListening()
    # Let abortConnection's connectionLost run.
    done: Deferred[None] = Deferred()
    reactor.callLater(0, done.callback, None)
    yield done


class _Peer(Protocol):
    """A client that reads nothing until told, then collects C{expected} bytes."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.expected:
            self.done.callback(bytes(self.received))


@pytest_twisted.inlineCallbacks
def _connected(expected: int):
    """An accepted connection's server protocol and a peer that does not read yet."""
    accepted: Deferred[Protocol] = Deferred()

    class Accept(Protocol):
        def connectionMade(self) -> None:
            self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
            self.transport.setTcpNoDelay(True)
            accepted.callback(self)

    port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Accept))
    peer = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), _Peer(expected))
    server = yield accepted
    return port, server, peer


@pytest_twisted.inlineCallbacks
def _read_all_and_close(port, server, peer):
    peer.transport.resumeProducing()
    received = yield peer.done
    lost: Deferred[None] = Deferred()
    server.connectionLost = lambda reason: lost.callback(None)
    peer.transport.loseConnection()
    yield lost
    yield port.stopListening()
    return received


@pytest.mark.parametrize("write", ["write_now", "write_sequence_now"])
@pytest_twisted.inlineCallbacks
def test_write_now_gives_the_kernel_what_it_takes_at_once_and_twisted_the_rest_in_order(write):
    """The first write goes to the kernel whole, with no reactor round (the
    socket is not registered for writing); a write the kernel takes only
    part of leaves the rest in Twisted's buffer; a write after it waits
    behind that rest.  The peer gets every byte, in order."""
    first, big, last = b"a" * 1000, bytes(range(256)) * 4096, b"z" * 1000
    port, server, peer = yield _connected(len(first) + len(big) + len(last))
    transport = server.transport

    def give(*parts: bytes) -> None:
        if write == "write_now":
            write_now(transport, b"".join(parts))
        else:
            write_sequence_now(transport, list(parts))

    give(first[:500], first[500:])
    assert transport._tempDataLen == 0 and transport not in reactor.getWriters()
    give(big[:1000], big[1000:])
    assert 0 < transport._tempDataLen < len(big) and transport in reactor.getWriters()
    waiting = transport._tempDataLen
    give(last)
    assert transport._tempDataLen == waiting + len(last), "behind what waits, not past it"
    received = yield _read_all_and_close(port, server, peer)
    assert received == first + big + last


@pytest_twisted.inlineCallbacks
def test_write_now_leaves_to_twisted_what_a_full_kernel_buffer_refuses():
    port, server, peer = yield _connected(0)
    transport, filled = server.transport, bytearray()
    for _ in range(10_000):  # the kernel's buffers, filled behind Twisted's back
        try:
            filled += b"f" * transport.socket.send(b"f" * 65536)
        except BlockingIOError:
            break
    else:
        pytest.fail("the kernel took 640 MB from a peer that does not read")
    assert transport._tempDataLen == 0, "Twisted's buffer is empty, so write_now tries the socket"
    write_now(transport, b"refused")
    assert transport._tempDataLen == len(b"refused") and transport in reactor.getWriters()
    peer.expected = len(filled) + len(b"refused")
    received = yield _read_all_and_close(port, server, peer)
    assert received == bytes(filled) + b"refused"


@pytest_twisted.inlineCallbacks
def test_write_now_sends_nothing_once_the_connection_is_aborted():
    port, server, peer = yield _connected(0)
    lost: Deferred[None] = Deferred()
    peer.connectionLost = lambda reason: lost.callback(None)
    server.transport.abortConnection()
    write_now(server.transport, b"after the abort")
    peer.transport.resumeProducing()
    yield lost
    assert peer.received == b""
    yield port.stopListening()
