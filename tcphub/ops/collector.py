"""
A Prometheus collector over the hub's and the handler's counters, read when
scraped (on the reactor thread: the site renders it there), named after
Prometheus conventions: C{tcphub_<field>_total} for counts, gauges for what
goes up and down, seconds for durations.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.internet.interfaces import IReactorTime

from tcphub._metric_fields import counters, gauges
from tcphub._site import HttpCounters
from tcphub.hub.metrics import Metrics, Traffic

if TYPE_CHECKING:
    from tcphub.api.service import ApiCounters
    from tcphub.bus.redis import RedisBus
    from tcphub.hub.factory import HubFactory
    from tcphub.ws.handler import WebSocketHandler

__all__ = ["TcpHubCollector"]

# Metrics fields that go up and down, or are not counts.
_GAUGES = {
    "connections": "Clients connected now.",
    "rooms": "Rooms with at least one member.",
    "room_members": "Memberships across all rooms.",
    "sessions_parked": "Sessions of dropped members waiting to be resumed.",
}


_NONE = Traffic()


def _kinds(seen: Mapping[str, Any]) -> list[str]:
    """The member kinds to label, in order: those seen, and always tcp and
    websocket (a series that is there from the start, at 0)."""
    return sorted(set(seen) | {"tcp", "websocket"})


def _build_info() -> Metric:
    """C{tcphub_build_info}: 1, labelled with what runs (as Prometheus's own C{*_build_info})."""
    import platform
    from importlib.metadata import version as installed

    from tcphub._version import version

    info = GaugeMetricFamily("tcphub_build_info", "What runs: tcphub's version, Twisted's, Autobahn's, Python's.",
                             labels=["version", "twisted", "autobahn", "python"])
    # Read from the installed metadata: a hub without WebSocket never imports Autobahn.
    info.add_metric([version(), installed("twisted"), installed("autobahn"), platform.python_version()], 1)
    return info


def _help(name: str) -> str:
    return f"{name.replace('_', ' ').capitalize()} since the hub started."


class TcpHubCollector:
    """C{collect()} yields the current values; register it on a
    C{prometheus_client.CollectorRegistry}."""

    def __init__(self, hub: HubFactory | None, upstream: WebSocketHandler | None,
                 clock: IReactorTime, bus: RedisBus | None = None, web: Any = None,
                 http: Mapping[str, HttpCounters] | None = None, api: ApiCounters | None = None) -> None:
        self._hub = hub
        self._upstream = upstream
        self._clock = clock
        self._bus = bus
        self._web = web
        """The members' port's counters (a dataclass of counter fields), if any."""
        self._http = dict(http or {})
        """Each HTTP port's own counters, by the port's name (the C{port} label)."""
        self._api = api
        """The HTTP API's answers by endpoint and status, if it runs."""

    def collect(self) -> Iterator[Metric]:
        yield _build_info()
        if self._hub is not None:
            yield from self._hub_metrics(self._hub.get_metrics())
        if self._upstream is not None:
            yield from self._upstream_metrics()
        if self._bus is not None:
            yield from self._bus_metrics()
        if self._web is not None:
            for name in counters(type(self._web)):
                yield CounterMetricFamily(f"tcphub_{name}", _help(name), value=getattr(self._web, name))
        if self._http:
            yield from self._http_metrics()
        if self._api is not None:
            family = CounterMetricFamily("tcphub_api_requests", "HTTP API answers, by endpoint and status.",
                                         labels=["endpoint", "status"])
            for (endpoint, status), count in sorted(self._api.answers.items()):
                family.add_metric([endpoint, str(status)], count)
            yield family

    def _http_metrics(self) -> Iterator[Metric]:
        for name in counters(HttpCounters):
            family = CounterMetricFamily(f"tcphub_http_{name}", f"HTTP {name.replace('_', ' ')}, by port.",
                                         labels=["port"])
            for port, counted in self._http.items():
                family.add_metric([port], getattr(counted, name))
            yield family

    def _bus_metrics(self) -> Iterator[Metric]:
        assert self._bus is not None
        status = self._bus.status()
        yield GaugeMetricFamily("tcphub_bus_connected", "1 while publishes flow to Redis.",
                                value=int(status.publisher == "flowing"))
        yield GaugeMetricFamily("tcphub_bus_subscribed", "1 while this node takes the others' messages.",
                                value=int(status.subscribed))
        for name, text in gauges(type(status)):
            yield GaugeMetricFamily(f"tcphub_bus_{name}", f"Bus: {text}", value=getattr(status, name))
        for name in counters(type(status)):
            yield CounterMetricFamily(f"tcphub_bus_{name}", f"Bus {name.replace('_', ' ')}.",
                                      value=getattr(status, name))

    def _hub_metrics(self, metrics: Metrics) -> Iterator[Metric]:
        assert self._hub is not None
        by_kind = GaugeMetricFamily("tcphub_connections_by_kind", "Clients connected now, by what carries them.",
                                    labels=["kind"])
        counts = self._hub.connections_by_kind()
        for kind in _kinds(counts):
            by_kind.add_metric([kind], counts.get(kind, 0))
        yield by_kind
        traffic = self._hub.traffic_by_kind()
        for field in fields(Traffic):
            family = CounterMetricFamily(f"tcphub_{field.name}_by_kind",
                                         f"{field.name.replace('_', ' ').capitalize()}, by what carries the clients.",
                                         labels=["kind"])
            for kind in _kinds(traffic):
                family.add_metric([kind], getattr(traffic.get(kind, _NONE), field.name))
            yield family
        for field in fields(Metrics):
            value = getattr(metrics, field.name)
            if field.name in _GAUGES:
                yield GaugeMetricFamily(f"tcphub_{field.name}", _GAUGES[field.name], value=value)
            elif field.name == "uptime":
                yield GaugeMetricFamily("tcphub_uptime_seconds", "Seconds since the hub started listening.",
                                        value=value)
            else:
                yield CounterMetricFamily(f"tcphub_{field.name}", _help(field.name), value=value)

    def _upstream_metrics(self) -> Iterator[Metric]:
        assert self._upstream is not None
        status = self._upstream.get_status()
        yield GaugeMetricFamily("tcphub_upstream_connected", "1 while the upstream connection is open.",
                                value=int(status.connected))
        for name, text in gauges(type(status)):
            yield GaugeMetricFamily(f"tcphub_upstream_{name}", f"Upstream: {text}", value=getattr(status, name))
        for name in counters(type(status)):
            yield CounterMetricFamily(f"tcphub_upstream_{name}", f"Upstream {name.replace('_', ' ')}.",
                                      value=getattr(status, name))
        if status.last_ping is not None:
            yield GaugeMetricFamily(
                "tcphub_upstream_seconds_since_last_ping",
                "Seconds since the last ping or pong from the upstream.",
                value=max(0.0, self._clock.seconds() - status.last_ping),
            )
