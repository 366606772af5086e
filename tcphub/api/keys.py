"""L{ApiKeys}: who may use the HTTP API, read from C{--api-key-file}."""

from __future__ import annotations

import hmac
from typing import Any

from tcphub._secrets import read_secret_file

__all__ = ["ApiKeys"]


class ApiKeys:
    """
    The API keys of a file: one a line, C{NAME KEY} (the name is who
    publishes, as members see it, and the key is the secret), or C{KEY}
    alone (named C{api}); blank lines and C{#} comments are skipped.  A
    request gives its key as C{Authorization: Bearer KEY} or C{X-API-Key:
    KEY}; every key is compared, in constant time.
    """

    def __init__(self, path: str) -> None:
        self._keys: list[tuple[bytes, str]] = []
        for number, line in enumerate(read_secret_file("api-key-file", path).splitlines(), 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) > 2:
                raise ValueError(f"--api-key-file {path!r} line {number}: NAME KEY, or KEY")
            name, key = (fields[0], fields[1]) if len(fields) == 2 else ("api", fields[0])
            if len(key) < 16:
                raise ValueError(f"--api-key-file {path!r} line {number}: a key has at least 16 characters")
            self._keys.append((key.encode("utf-8"), name))
        if not self._keys:
            raise ValueError(f"--api-key-file {path!r}: no key in it")

    @classmethod
    def of(cls, keys: dict[str, str]) -> ApiKeys:
        """Keys given in code, C{{name: key}} (a tac file's, a test's)."""
        made = cls.__new__(cls)
        made._keys = [(key.encode("utf-8"), name) for name, key in keys.items()]
        return made

    def name_of(self, headers: Any) -> str | None:
        """The name of the key C{headers} (a C{twisted.web} C{Headers}) carry; None if none is ours."""
        given = headers.getRawHeaders(b"x-api-key", [b""])[0]
        if not given:
            scheme, _, token = headers.getRawHeaders(b"authorization", [b""])[0].partition(b" ")
            given = token.strip() if scheme.lower() == b"bearer" else b""
        found = None
        for key, name in self._keys:  # every one compared: the time says nothing
            if hmac.compare_digest(key, given) and given:
                found = name
        return found
