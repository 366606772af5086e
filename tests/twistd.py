"""
Run C{twistd} as a subprocess, exactly as the README does, and wait for the
lines it prints instead of sleeping.
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


class Twistd:
    """A running twistd; its output is read line by line on a thread."""

    def __init__(self, *args: str, cwd: Path | str = REPO) -> None:
        self.args = [twistd_command(), "--pidfile=", "-n", *args]
        self.process = subprocess.Popen(
            self.args,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.process.stdout:
            self._queue.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str | re.Pattern, timeout: float = STARTUP_TIMEOUT) -> re.Match:
        """Return the match of the first output line (already read or new) matching C{pattern}."""
        regex = re.compile(pattern)
        for line in self.lines:
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

    def wait_listening(self) -> tuple[str, int]:
        match = self.wait_for(LISTENING)
        return match["host"], int(match["port"])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        self.drain()
        return code

    def shutdown(self, sig: int = signal.SIGTERM) -> None:
        """Stop twistd as an operator would, and check that it shut down cleanly."""
        code = self.stop(sig)
        # After a clean shutdown twistd re-raises the signal that stopped it.
        assert code == -sig, f"twistd exited with {code}:\n{self.output}"
        assert "Server Shut Down." in self.output, self.output

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

    def __enter__(self) -> Twistd:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
