"""
The TCP hub; it knows nothing of WebSocket.

  - L{framing}: how a byte stream is cut into messages (int32, line, netstring, raw);
  - L{outbox}: each client's output, and the per-read write batch;
  - L{protocol}: L{HubProtocol}, one client, and the hooks a subclass overrides;
  - L{factory}: L{HubFactory}, the client table, send and broadcast, events;
  - L{service}: L{TcpServer}, listening, descriptor limits, the drain at stop;
  - L{metrics}: the counters and the snapshots handed out;
  - L{modes}: ready-made protocols (echo, broadcast, chat);
  - L{rooms}: who is in which room, pure;
  - L{rate}: the token bucket of C{max_rate};
  - L{messages}: members whose transport carries whole messages (WebSocket);
  - L{relay}: what a hub joined with others (a bus) tells them;
  - L{descriptors}: the process's open-file limit.

The public names are importable from C{tcphub}.
"""
