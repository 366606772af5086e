"""
Scale-out: several hub processes, on one machine or several, as one hub.
It knows the hub through its public API and its L{Relay} interface.

  - L{codec}: what goes over the bus, and how it is written, pure;
  - L{resp}: a small Redis client protocol (RESP2, bytes in and out);
  - L{redis}: L{RedisBus}, the bus on Redis pub/sub or a Redis Stream, with presence;
  - L{reuseport}: the C{reuseport:} endpoint, so that several processes
    share one listening port.
"""
