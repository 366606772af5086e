"""
The hub's HTTP server API (C{--api}): an application publishes to rooms,
sends to a member, disconnects one, reads presence and history, with one
authenticated HTTP request from any language.

  - L{keys}: the API keys and their names;
  - L{idempotency}: publishes made once per idempotency key, on one hub or
    across the hubs joined through Redis;
  - L{service}: the site, its bounds (body size, rate per key,
    concurrency), its counts, and the endpoints.
"""
