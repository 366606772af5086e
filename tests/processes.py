"""
Subprocesses the tests talk to, whose printed lines they wait for instead of
sleeping: C{twistd} run exactly as the README does, and a WebSocket server
that is not our code.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 60.0
LISTENING = re.compile(r"tcphub listening on (?P<host>[^ ]+):(?P<port>\d+)")


def twistd_command() -> str:
    """The twistd of the environment running the tests (the README installs it there)."""
    beside_python = Path(sys.executable).with_name("twistd")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("twistd")
    if found is None:
        raise RuntimeError("twistd is not installed: run the README's install command")
    return found


class OutputProcess:
    """A running subprocess whose output is read line by line on a thread."""

    def __init__(self, args: list[str], cwd: Path | str = REPO, preexec_fn=None) -> None:
        self.args = args
        self.process = subprocess.Popen(
            self.args,
            cwd=cwd,
            preexec_fn=preexec_fn,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self.process.stdout:
            self._queue.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self._queue.put(None)

    def wait_for(
        self, pattern: str | re.Pattern, timeout: float = STARTUP_TIMEOUT, since: int = 0
    ) -> re.Match:
        """Return the match of the first output line from line C{since} on
        (already read or new) matching C{pattern}; C{len(self.lines)} as
        C{since} waits for a line not read yet."""
        regex = re.compile(pattern)
        for line in self.lines[since:]:
            if match := regex.search(line):
                return match
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {regex.pattern!r} in:\n{self.output}") from None
            if line is None:
                raise AssertionError(
                    f"twistd exited ({self.process.wait()}) before printing "
                    f"{regex.pattern!r}:\n{self.output}"
                )
            self.lines.append(line)
            if match := regex.search(line):
                return match

    def mark(self) -> int:
        """Take in what the process has printed so far and return its line
        count: C{wait_for(..., since=mark())} waits for a line printed later."""
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return len(self.lines)
            if line is None:  # the end of the output: leave it for wait_for
                self._queue.put(None)
                return len(self.lines)
            self.lines.append(line)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        self.drain()
        return code

    def drain(self) -> None:
        """Collect the rest of the output once the process has exited."""
        while True:
            try:
                line = self._queue.get(timeout=10)
            except queue.Empty:
                return
            if line is None:
                return
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        # The reader stops at the end of the output; closing the pipe under it
        # would fail its read.
        self._reader.join(timeout=30)
        self.process.stdout.close()


class Twistd(OutputProcess):
    """C{twistd -n ARGS}, with no pid file.  The C{tcphub} plugin stops
    without its lame duck's grace and spread (C{--drain-grace 0
    --drain-spread 0}) unless the test gives them: a test that stops a hub
    waits for events, not for load balancers."""

    def __init__(self, *args: str, cwd: Path | str = REPO, preexec_fn=None) -> None:
        if args and args[0] == "tcphub":
            given = set(args)
            args = (args[0], *(("--drain-grace", "0") if "--drain-grace" not in given else ()),
                    *(("--drain-spread", "0") if "--drain-spread" not in given else ()), *args[1:])
        super().__init__([twistd_command(), "--pidfile=", "-n", *args], cwd=cwd, preexec_fn=preexec_fn)

    def wait_listening(self) -> tuple[str, int]:
        match = self.wait_for(LISTENING)
        return match["host"], int(match["port"])

    def shutdown(self, sig: int = signal.SIGTERM) -> None:
        """Stop twistd as an operator would, and check that it shut down cleanly."""
        code = self.stop(sig)
        # After a clean shutdown twistd re-raises the signal that stopped it.
        assert code == -sig, f"twistd exited with {code}:\n{self.output}"
        assert "Server Shut Down." in self.output, self.output


class WebSocketServer(OutputProcess):
    """The C{websockets} package's server (tests/ws_server.py) on 127.0.0.1."""

    def __init__(self, *options: str, port: int = 0) -> None:
        self.options = options
        super().__init__(
            [sys.executable, str(REPO / "tests" / "ws_server.py"), "--port", str(port), *options]
        )
        self.port = int(self.wait_for(r"listening on (\d+)")[1])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def restart(self) -> WebSocketServer:
        """Stop this server and start the same one on the same port."""
        self.stop(signal.SIGKILL)
        self.kill()
        return WebSocketServer(*self.options, port=self.port)

    def pause(self) -> None:
        """Freeze the server: it answers nothing, pings included."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)


REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"


def require_program(path: str, package: str) -> None:
    """Skip off CI when C{path} is missing; on CI, where .ci/run installs
    Debian's C{package}, fail: a skipped test proves nothing there."""
    if not os.path.exists(path):
        if os.environ.get("CI"):
            raise AssertionError(f"{path} is missing: .ci/run installs Debian's {package}")
        import pytest

        pytest.skip(f"{path} is not installed (apt-get install {package})")


class RedisServer(OutputProcess):
    """A real Redis server on a UNIX socket in C{directory} (no TCP port, no
    persistence); killed and started again on the same socket by L{restart}."""

    def __init__(self, directory: Path, *options: str) -> None:
        require_program(REDIS_SERVER, "redis-server")
        self.directory = directory
        self.options = options
        self.socket = directory / "redis.sock"
        super().__init__([REDIS_SERVER, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
                          "--save", "", "--appendonly", "no", "--dir", str(directory), *options])
        self.wait_for("Ready to accept connections|ready to accept connections")

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def cli(self, *args: str) -> str:
        """What C{redis-cli} (not our code) says to C{args} on this server."""
        require_program(REDIS_CLI, "redis-tools")
        done = subprocess.run([REDIS_CLI, "-s", str(self.socket), *args], capture_output=True, timeout=30,
                              check=True)
        return done.stdout.decode()

    def restart(self) -> RedisServer:
        """Start the same server again (this one is killed if it still runs)."""
        self.kill()
        return RedisServer(self.directory, *self.options)
