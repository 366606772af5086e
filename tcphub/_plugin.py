"""What the two twistd plugins share: option coercion and process behaviour."""

from __future__ import annotations

import atexit
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol
from urllib.parse import urlparse

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized

from tcphub import _checks
from tcphub.errors import ListenFailed

class Listener(Protocol):
    """A service that binds ports: the hub, the operations port."""

    def when_listening(self) -> Deferred[None]: ...


if TYPE_CHECKING:
    from tcphub.api.service import ApiService
    from tcphub.bus.redis import RedisBus
    from tcphub.web.service import WebSocketMembers
    from tcphub.hub.service import TcpServer
    from tcphub.ops.service import AdminService
    from tcphub.ws.handler import WebSocketHandler


def number(option: str, kind: type[int] | type[float], **limits: float) -> Callable[[str], int | float]:
    """A C{usage.Options} coercer whose error names the option and what it
    takes; C{limits} are those of L{tcphub._checks.number}."""
    what = "a whole number" if kind is int else "a number"

    def coerce(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"--{option} takes {what}, not {text!r}") from None
        try:
            return _checks.number(f"--{option}", value, integer=kind is int, **limits)
        except TypeError as error:
            raise ValueError(str(error)) from None

    coerce.coerceDoc = f"({what})"  # type: ignore[attr-defined]
    return coerce


def choice(option: str, choices: Iterable[str]) -> Callable[[str], str]:
    """A C{usage.Options} coercer that takes one of C{choices}."""
    names = tuple(choices)

    def coerce(text: str) -> str:
        if text not in names:
            raise ValueError(f"--{option} must be one of {', '.join(names)}, not {text!r}")
        return text

    return coerce


LOG_OPTIONS = [
    ["log-level", None, "info",
     "lowest level logged: debug (one line per connection), info, warn, error, critical",
     choice("log-level", ("debug", "info", "warn", "error", "critical"))],
    ["log-format", None, "text", "text, or json (one object per line)", choice("log-format", ("text", "json"))],
]
"""The options both plugins take for their logs (under twistd; `twist` has its own)."""

ADMIN_OPTIONS = [
    ["admin", None, None,
     "serve the operations port (/metrics, /healthz, /readyz, /varz, /connz, a live page) "
     "on this Twisted endpoint, e.g. tcp:9100:interface=127.0.0.1 [default: off]"],
    ["admin-token", None, None,
     "require 'Authorization: Bearer TOKEN' on the operations port (but for /healthz, /readyz and the "
     "page); ps shows it: prefer --admin-token-file or $TCPHUB_ADMIN_TOKEN"],
    ["admin-token-file", None, None, "the admin token, read from this file (one trailing newline dropped)"],
]
"""The options both plugins take for the operations port."""


def log_observer(config: Any) -> ILogObserver | None:
    """The observer for --log-level and --log-format, when run by twistd
    (whose options are the plugin options' parent); None otherwise."""
    server_options = getattr(config, "parent", None)
    if server_options is None or "logfile" not in server_options:
        return None
    from tcphub._logging import twistd_observer

    return twistd_observer(server_options, config["log-format"], config["log-level"])


def server_endpoint(option: str, description: str) -> str:
    """Return C{description} if it parses as a Twisted server endpoint, else
    raise the usage error that names C{--option}."""
    from twisted.internet.endpoints import serverFromString

    from tcphub._reactor import default_reactor

    try:
        serverFromString(default_reactor(), description)
    except Exception as error:
        raise usage.UsageError(f"--{option} {description!r}: {error}") from None
    return description


SECRET_OPTIONS = frozenset({"admin-token", "redis-password", "redis-sentinel-password", "api-keys", "tls-options",
                            "upstream-tls-options"})
"""The options (as read from the command line, a file or the environment)
that /varz leaves out."""

ADMIN_TOKEN_VARIABLE = "TCPHUB_ADMIN_TOKEN"
"""The environment variable the admin token is read from when no option gives it."""


def check_admin(config: dict[str, Any]) -> None:
    """Refuse an --admin endpoint that does not parse, and a token without
    --admin; set C{config["admin-token"]} from whichever source gives it."""
    from tcphub._secrets import secret_from
    from tcphub.errors import SecretUnreadable

    if config["admin"] is None:
        if config["admin-token"] is not None or config["admin-token-file"] is not None:
            raise usage.UsageError("--admin-token goes with --admin")
        return
    server_endpoint("admin", config["admin"])
    try:
        config["admin-token"] = secret_from("admin-token", given=config["admin-token"],
                                            path=config["admin-token-file"], variable=ADMIN_TOKEN_VARIABLE)
    except SecretUnreadable as error:
        raise usage.UsageError(str(error)) from None


def admin_service(config: Mapping[str, Any], reactor: Any, *, hub: TcpServer | None = None,
                  upstream: WebSocketHandler | None = None, bus: RedisBus | None = None,
                  web: WebSocketMembers | None = None, api: ApiService | None = None) -> list[AdminService]:
    """The operations port the options ask for, as a list of none or one service."""
    if config["admin"] is None:
        return []
    from tcphub.ops.service import AdminService

    from tcphub._secrets import redact_headers

    shown = {key: value for key, value in config.items() if key not in SECRET_OPTIONS}
    for headers, secret in (("header", "secret-headers"), ("upstream-header", "upstream-secret-headers")):
        if headers in shown:
            shown[headers] = redact_headers(shown[headers], shown.pop(secret, ()))
    admin = AdminService(config["admin"], hub=hub, upstream=upstream, bus=bus, web=web, api=api,
                         token=config["admin-token"], options=shown, reactor=reactor)
    admin.setName("admin")
    return [admin]


def ws_url(option: str) -> Callable[[str], str]:
    """A C{usage.Options} coercer that takes a ws:// or wss:// URL."""

    def coerce(text: str) -> str:
        if urlparse(text).scheme not in ("ws", "wss"):
            raise ValueError(f"--{option} must be a ws:// or wss:// URL, not {text!r}")
        return text

    return coerce


EXIT_GAVE_UP = 1
"""The exit status of a twistd whose WebSocket side gave up (C{EX_}-free: a
supervisor's "restart on failure" only needs it to be non-zero)."""


def stop_when_given_up(handler: WebSocketHandler, reactor: Any) -> None:
    """A daemon whose upstream gave up has nothing left to do: stop twistd
    (the handler has logged why), and exit with L{EXIT_GAVE_UP} so that a
    supervisor restarts it."""

    from tcphub.ws.handler import HandlerState

    def stop(error: Exception, context: object) -> None:
        # Whatever made it give up (out of retries, a fatal close code, a
        # handshake refused for good), the handler is in GIVEN_UP by now.
        if handler.state is HandlerState.GIVEN_UP:
            exit_status_after_twistd(EXIT_GAVE_UP)
            reactor.stop()

    handler.on("error", stop)


def exit_when_given_up(given_up: Deferred[Any], reactor: Any) -> None:
    """When C{given_up} fires (a part that cannot go on, and has logged why:
    a bus whose node id another process holds), stop twistd and exit 1."""

    def stop(_: object) -> None:
        exit_status_after_twistd(1)
        reactor.stop()

    given_up.addCallback(stop)


def exit_status_after_twistd(status: int) -> None:
    """Make the process exit with C{status} once twistd (or twist) has shut
    down cleanly: neither has a way to exit non-zero after C{reactor.stop()}.
    Registered last, this exit handler runs first and ends the process."""

    def exit_now() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

    atexit.register(exit_now)


class PluginProcess(MultiService):
    """
    What twistd runs for a plugin: its service, plus the process's behaviour
    around it: a port that cannot be bound ends twistd with one line (exit
    status 1, no traceback); SIGHUP (the terminal closed, or a C{kill -HUP})
    shuts down with the drain, as SIGTERM does; during the drain, a second
    SIGINT exits at once.
    """

    _log = Logger()

    def __init__(self, service: IService, reactor: Any, *beside: IService,
                 log_observer: ILogObserver | None = None,
                 listeners: Iterable[Listener] = (), on_interrupt: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._reactor = reactor
        self._on_interrupt = on_interrupt
        """Called as an interrupt (SIGINT) stops the process: a stop in a hurry."""
        self._log_observer = log_observer
        self._listeners = tuple(listeners)
        for each in (service, *beside):
            each.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        # twistd hands its Application here before it starts logging, and
        # logs to the application's ILogObserver component if it has one
        # (unless twistd --logger is given): the place for --log-level and
        # --log-format.
        if self._log_observer is not None and isinstance(parent, Componentized):
            if parent.getComponent(ILogObserver, None) is None:
                parent.setComponent(ILogObserver, self._log_observer)
        super().setServiceParent(parent)

    _interrupted = False

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except ListenFailed as error:
            raise SystemExit(f"twistd: {error}") from None

    def startService(self) -> None:
        super().startService()
        # Under twistd the ports are bound already (a failure ended it in
        # privilegedStartService); `twist` binds them only now.
        for listener in self._listeners:
            listener.when_listening().addErrback(self._listen_failed)
        self._reactor.addSystemEventTrigger("before", "shutdown", self._arm_second_interrupt)
        self._reactor.callWhenRunning(self._watch_interrupt)
        if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
            signal.signal(signal.SIGHUP, self._hangup)
        if signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL:
            signal.signal(signal.SIGUSR2, self._drain)

    def _listen_failed(self, failure: object) -> None:
        # The service has logged why; a process that listens nowhere exits 1.
        # (Under `twist` this runs while the reactor starts: stop on its next turn.)
        exit_status_after_twistd(1)
        self._reactor.callLater(0, self._reactor.stop)

    def _hangup(self, signum: int, frame: object) -> None:
        self._log.info("Received SIGHUP, shutting down (queued output is drained first).")
        if self._on_interrupt is not None:  # the terminal is gone: no load balancer's grace
            self._on_interrupt()
        # Not a normal stop: a supervisor (systemd's Restart=on-failure) sees 129, as for a shell.
        exit_status_after_twistd(128 + signal.SIGHUP)
        self._reactor.callFromThread(self._reactor.stop)

    def _drain(self, signum: int, frame: object) -> None:
        self._log.info("Received SIGUSR2, draining: shutting down as for SIGTERM.")
        self._reactor.callFromThread(self._reactor.stop)

    def _watch_interrupt(self) -> None:
        # The reactor installs its SIGINT handler as it starts: note an
        # interrupt on the way to it, so that only an interrupt is told of the second.
        previous = signal.getsignal(signal.SIGINT)
        if not callable(previous):
            return

        def interrupted(signum: int, frame: Any) -> None:
            self._interrupted = True
            if self._on_interrupt is not None:
                self._on_interrupt()
            previous(signum, frame)

        signal.signal(signal.SIGINT, interrupted)

    def _arm_second_interrupt(self) -> None:
        signal.signal(signal.SIGINT, self._exit_now)
        if self._interrupted:
            self._log.info("shutting down; interrupt again to exit at once")

    def _exit_now(self, signum: int, frame: object) -> None:
        sys.stderr.write("second interrupt: exiting without waiting for the drain\n")
        sys.stderr.flush()
        os._exit(128 + signal.SIGINT)


def header_line(where: str, line: str, show: bool = True) -> tuple[str, str]:
    """C{(name, value)} of a C{Name: value} line; a usage error (showing
    the line only if C{show}: a header file's lines may be secrets) if none."""
    name, colon, value = line.partition(":")
    if not colon or not name.strip():
        raise usage.UsageError(f"{where} takes 'Name: value'" + (f", not {line!r}" if show else ""))
    return name.strip(), value.strip()


def add_header_file(config: Any, option: str, path: str, headers: str = "header",
                    secret: str = "secret-headers") -> None:
    """Add the headers of the file C{--option} names ('Name: value' a line,
    blank lines and # comments skipped) to C{config[headers]}, each a secret
    (C{config[secret]}: /varz shows ***)."""
    from tcphub._secrets import read_secret_file
    from tcphub.errors import SecretUnreadable

    try:
        text = read_secret_file(option, path)
    except SecretUnreadable as error:
        raise usage.UsageError(str(error)) from None
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            name, value = header_line(f"--{option} {path!r} line {number}", line, show=False)
            config[headers][name] = value
            config[secret].add(name)


def trusting(url: str, ca_file: str | None, option: str) -> Any:
    """TLS options for C{url}'s host that trust the CAs of C{ca_file} (C{--option})."""
    if ca_file is None:
        return None
    from urllib.parse import urlparse

    from twisted.internet.ssl import Certificate, optionsForClientTLS

    try:
        with open(ca_file, "rb") as pem:
            trust = Certificate.loadPEM(pem.read())
    except (OSError, ValueError) as error:
        raise usage.UsageError(f"--{option} {ca_file!r}: {error}") from None
    return optionsForClientTLS(urlparse(url).hostname or "", trustRoot=trust)
