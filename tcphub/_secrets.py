"""
Secrets in URLs kept out of sight: L{redact_url} shows a URL with its
password and any secret-looking query parameter as C{***}, for C{/varz},
logs and error messages.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["SECRET_PARAMETERS", "redact_url"]

SECRET_PARAMETERS = frozenset({"api_key", "apikey", "key", "token", "access_token", "auth",
                               "password", "pass", "secret", "signature", "sig"})
"""Query parameters whose values are shown as C{***} (compared without case)."""

_HIDDEN = "***"


def redact_url(url: str) -> str:
    """C{url} with its password and secret query values replaced by C{***}
    (a user name stays: it says who, not how to get in)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return _HIDDEN
    netloc, changed = parts.netloc, False
    if password is not None:
        changed = True
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{_HIDDEN}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(name.lower() in SECRET_PARAMETERS for name, _ in pairs):
            changed = True
            query = urlencode([(name, _HIDDEN if name.lower() in SECRET_PARAMETERS else value)
                               for name, value in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query)) if changed else url
