"""
The operations port: what an operator of a running hub (or WebSocket handler,
or gateway) reads over HTTP.  It knows the hub and the handler only through
their public API.

  - L{collector}: the Prometheus collector over their counters (C{/metrics});
  - L{views}: the JSON documents (C{/varz}, C{/connz}), pure;
  - L{service}: L{AdminService}, the C{twisted.web} site and its paths.
"""
