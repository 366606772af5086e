"""Test peers over real sockets, built on Twisted's own receivers (not our framing)."""

from __future__ import annotations

import datetime
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.protocols import basic


class Collector:
    """Keeps what a client received and fires Deferreds at given counts."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: Deferred[None] = Deferred()
        self._waiting: list[tuple[int, Deferred[list[bytes]]]] = []

    def collect(self, message: bytes) -> None:
        self.received.append(message)
        count = len(self.received)
        still = []
        for wanted, d in self._waiting:
            if count >= wanted:
                d.callback(self.received)
            else:
                still.append((wanted, d))
        self._waiting = still

    def when_received(self, count: int) -> Deferred[list[bytes]]:
        d: Deferred[list[bytes]] = Deferred()
        if len(self.received) >= count:
            d.callback(self.received)
        else:
            self._waiting.append((count, d))
        return d


class Int32Client(basic.Int32StringReceiver, Collector):
    MAX_LENGTH = 16 * 1024 * 1024

    def __init__(self) -> None:
        Collector.__init__(self)

    def stringReceived(self, string: bytes) -> None:
        self.collect(string)

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)


class LineClient(basic.LineOnlyReceiver, Collector):
    delimiter = b"\n"

    def __init__(self) -> None:
        Collector.__init__(self)

    def lineReceived(self, line: bytes) -> None:
        self.collect(line)

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)


def connect(port: int, protocol=None, host: str = "127.0.0.1") -> Deferred:
    """Connect a client (an L{Int32Client} by default) to C{host:port}."""
    return connectProtocol(TCP4ClientEndpoint(reactor, host, port), protocol or Int32Client())


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for localhost/127.0.0.1: (key, cert) paths."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path = directory / "key.pem"
    cert_path = directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path
