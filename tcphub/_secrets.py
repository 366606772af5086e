"""
Secrets kept out of sight: L{redact_url} shows a URL with its password and
any secret-looking query parameter as C{***}, for C{/varz}, logs and error
messages; L{secret_from} takes a secret from a file or the environment, so
that it need not be on the command line, where C{ps} shows it.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tcphub.errors import SecretUnreadable

__all__ = ["SECRET_HEADERS", "SECRET_PARAMETERS", "MAX_SECRET_FILE", "read_secret_file", "redact_headers",
           "redact_url", "secret_from"]

SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key",
                            "x-auth-token", "x-access-token"})
"""Headers whose values are shown as C{***} wherever the headers are shown
(compared without case)."""

MAX_SECRET_FILE = 64 * 1024
"""The largest file a secret is read from (a key, a token, a list of tokens)."""


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


def read_secret_file(option: str, path: str) -> str:
    """The UTF-8 text of the file C{--option} names, at most
    L{MAX_SECRET_FILE} bytes; else L{SecretUnreadable}, naming the file."""
    try:
        with open(path, "rb") as file:
            content = file.read(MAX_SECRET_FILE + 1)
    except OSError as error:
        raise SecretUnreadable(f"--{option} {path!r}: {error.strerror or error}") from None
    if len(content) > MAX_SECRET_FILE:
        raise SecretUnreadable(f"--{option} {path!r}: larger than {MAX_SECRET_FILE} bytes")
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretUnreadable(f"--{option} {path!r}: not UTF-8 text") from None


def redact_headers(headers: Mapping[str, str], secret: Iterable[str] = ()) -> dict[str, str]:
    """C{headers} with the values of L{SECRET_HEADERS} and of the names in
    C{secret} shown as C{***}."""
    hidden = SECRET_HEADERS | {name.lower() for name in secret}
    return {name: _HIDDEN if name.lower() in hidden else value for name, value in headers.items()}


def secret_from(name: str, *, given: str | None, path: str | None, variable: str | None = None,
                environ: Mapping[str, str] | None = None) -> str | None:
    """
    The secret C{--name} (C{given} on the command line), C{--name-file}
    (C{path}: its content, one trailing newline dropped), or the environment
    variable C{variable}, in that order; None if none is set.  Raises
    L{SecretUnreadable} if both the option and the file are given, or the
    file cannot be read, or the secret is empty.
    """
    if given is not None and path is not None:
        raise SecretUnreadable(f"--{name} and --{name}-file are one secret: give one of them")
    if path is not None:
        secret = read_secret_file(f"{name}-file", path)
        secret = secret[:-1] if secret.endswith("\n") else secret
        secret = secret[:-1] if secret.endswith("\r") else secret
        where = f"--{name}-file {path!r}"
    elif given is not None:
        secret, where = given, f"--{name}"
    elif variable is not None and variable in (os.environ if environ is None else environ):
        secret, where = (os.environ if environ is None else environ)[variable], f"${variable}"
    else:
        return None
    if not secret:
        raise SecretUnreadable(f"{where} is empty")
    return secret
