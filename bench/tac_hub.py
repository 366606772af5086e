"""
A twistd hub for the benchmarks, run from any checkout (a worktree of an
older commit, to compare before and after): a .tac file that puts the
checkout first on the path, the plugin's own options, and the ports it
says it listens on.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

TAC = """
import sys
sys.path.insert(0, {repo!r})
from twisted.application.service import Application
from tcphub.tap import Options, makeService
options = Options()
options.parseOptions({options!r})
application = Application("bench")
makeService(options).setServiceParent(application)
"""


def start_hub(repo: Path, directory: Path, options: list[str], listening: list[str]) -> tuple[subprocess.Popen, list[int]]:
    """twistd -ny on a tac with C{options}; returns it and the port each of
    C{listening} (e.g. "tcphub admin") says it listens on, in order."""
    tac = directory / "hub.tac"
    tac.write_text(TAC.format(repo=str(repo.resolve()), options=options))
    log = directory / "hub.log"
    process = subprocess.Popen([str(Path(sys.executable).with_name("twistd")), "-ny", str(tac),
                                "--pidfile", "", "--logfile", str(log)], cwd=directory)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        found = [re.search(rf"{re.escape(name)} listening on 127\.0\.0\.1:(\d+)", text) for name in listening]
        if all(found):
            return process, [int(match[1]) for match in found if match]
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"the hub did not start:\n{log.read_text() if log.exists() else ''}")
