"""Time to parse one SMEMBERS reply of 20,000 and 100,000 items arriving in
1,460-byte reads (a TCP segment each), as the bus reads presence: run it with
`.venv/bin/python bench/resp_parse.py`."""

import time
from tcphub.bus import resp
class T:
    def write(self, d): pass
    def abortConnection(self): pass
for size in (20_000, 100_000):
    p = resp.RedisProtocol(lambda p: None, lambda: None)
    p.transport = T()
    out = []
    p.command(b"SMEMBERS", b"x").addCallback(out.append)
    items = [b"member-%06d" % n for n in range(size)]
    wire = b"*%d\r\n" % len(items) + b"".join(b"$%d\r\n%s\r\n" % (len(i), i) for i in items)
    t = time.perf_counter()
    for at in range(0, len(wire), 1460):
        p.dataReceived(wire[at:at + 1460])
    print(size, "items:", round((time.perf_counter() - t) * 1000, 1), "ms", len(out[0]))
