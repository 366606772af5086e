"""
What deploy/ ships matches what tcphub is: every metric the dashboard and
the alert rules name is on a live hub's /metrics, and the systemd unit's
command line is one the plugin takes.  (.ci/run also runs `promtool check
rules` on the rules and `systemd-analyze verify` on the unit.)
"""

from __future__ import annotations

import json
import re
import shlex
import urllib.request
from pathlib import Path

from tcphub.tap import Options
from tests.processes import REPO, RedisServer, Twistd

DEPLOY = REPO / "deploy"
METRIC = re.compile(r"\b((?:tcphub|process|python)_[a-z_]+)\b")


def named_in_deploy() -> dict[str, set[str]]:
    """The metric names each file's expressions use."""
    dashboard = json.loads((DEPLOY / "grafana" / "tcphub.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    alerts = [line for line in (DEPLOY / "prometheus" / "alerts.yml").read_text().splitlines()
              if not line.lstrip().startswith(("#", "summary", "description"))]
    return {"dashboard": {name for expr in expressions for name in METRIC.findall(expr)},
            "alerts": {name for line in alerts for name in METRIC.findall(line)}}


def test_every_metric_the_dashboard_and_the_alerts_name_is_on_a_live_hub(tmp_path):
    redis = RedisServer(tmp_path)
    keys = tmp_path / "keys"
    keys.write_text("deploy-test 0123456789abcdef0123\n")
    hub = Twistd("tcphub", "--port", "0", "--mode", "hub", "--redis", redis.url, "--node-id", "d",
                 "--admin", "tcp:0:interface=127.0.0.1", "--api", "tcp:0:interface=127.0.0.1",
                 "--api-key-file", str(keys), "--websocket", "tcp:0:interface=127.0.0.1")
    try:
        admin = int(hub.wait_for(r"tcphub admin listening on [^ ]+:(\d+)")[1])
        api = int(hub.wait_for(r"tcphub api listening on [^ ]+:(\d+)")[1])
        hub.wait_for("bus: node d subscribed")
        request = urllib.request.Request(f"http://127.0.0.1:{api}/api/rooms",
                                         headers={"X-API-Key": "0123456789abcdef0123"})
        urllib.request.urlopen(request, timeout=30).close()  # so that the API's answers have a sample
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=30) as response:
            exposed = {line.split("{")[0].split(" ")[0] for line in response.read().decode().splitlines()
                       if line and not line.startswith("#")}
        hub.shutdown()
    finally:
        hub.kill()
        redis.kill()
    for where, names in named_in_deploy().items():
        assert names, f"no metric found in the {where}"
        assert names <= exposed, f"the {where} names metrics no hub exposes: {sorted(names - exposed)}"


def test_the_units_command_line_is_one_the_plugin_takes(tmp_path):
    unit = (DEPLOY / "systemd" / "tcphub.service").read_text().replace("\\\n", " ")
    [command] = [line.partition("=")[2] for line in unit.splitlines() if line.startswith("ExecStart=")]
    (tmp_path / "admin-token").write_text("a-token-from-the-credentials-directory\n")
    words = shlex.split(command.replace("${CREDENTIALS_DIRECTORY}", str(tmp_path)))
    assert words[0].endswith("/twistd") and "--nodaemon" in words
    options = Options()
    options.parseOptions(words[words.index("tcphub") + 1:])
    assert options["admin-token"] == "a-token-from-the-credentials-directory"
    assert options["log-format"] == "json"
