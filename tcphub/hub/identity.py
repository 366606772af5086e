"""
Who a member is, and what it may do: an L{Identity} (a user, a display
name, the rooms it may join and publish to), the L{Authenticator}
interface that turns a token into one, and two authenticators: signed JWTs
(L{JwtAuthenticator}, checked by PyJWT) and a file of static tokens
(L{TokenFile}).  No I/O but reading the key or token file at start; the
time a token is checked against is the hub's clock's.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, Iterable, Protocol, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from tcphub._secrets import read_secret_file
from tcphub.errors import AuthRefused
from tcphub.hub.rate import TokenBucket
from tcphub.hub.rooms import MAX_ROOM_NAME

__all__ = ["ALGORITHMS", "DEFAULT_AUTH_URL_TIMEOUT", "FailedAttempts", "MAX_PATTERNS", "MAX_TOKEN", "Authenticator", "Identity", "JwtAuthenticator",
           "RoomPatterns", "TokenFile"]

MAX_TOKEN = 8 * 1024
"""The longest token checked, in characters: a longer one is refused unread."""
MAX_PATTERNS = 256
"""The most room patterns one identity may carry."""
DEFAULT_AUTH_URL_TIMEOUT = 1.0
"""Seconds an auth backend (L{tcphub.hub.auth_backend}) has to answer, connection included."""
ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "EdDSA")
"""The JWT algorithms a key may be given for (never C{none})."""


def _glob(pattern: str, name: str) -> bool:
    """Whether C{name} matches C{pattern}, where C{*} is any run of
    characters: the two-pointer match, O(len(pattern) * len(name)) at worst
    (a regular expression may backtrack far longer on C{a*a*a*…b})."""
    p = n = 0
    star, mark = -1, 0
    while n < len(name):
        if p < len(pattern) and pattern[p] != "*" and pattern[p] == name[n]:
            p += 1
            n += 1
        elif p < len(pattern) and pattern[p] == "*":
            star, mark = p, n
            p += 1
        elif star >= 0:
            p = star + 1
            mark += 1
            n = mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


class RoomPatterns:
    """
    Room patterns: C{*} matches any run of characters (C{team-*}, C{*}); a
    pattern that begins with C{!} denies what it matches, and a denial wins
    over any grant.  Bounded: at most L{MAX_PATTERNS} patterns, each at
    most one room name long.
    """

    __slots__ = ("_allow", "_deny", "patterns")

    def __init__(self, patterns: Iterable[object]) -> None:
        listed = list(patterns)
        if len(listed) > MAX_PATTERNS:
            raise ValueError(f"at most {MAX_PATTERNS} room patterns, not {len(listed)}")
        for pattern in listed:
            if not isinstance(pattern, str) or not pattern.lstrip("!") or len(pattern) > MAX_ROOM_NAME + 1:
                raise ValueError(f"a room pattern is a string of 1 to {MAX_ROOM_NAME} characters, "
                                 f"not {pattern!r:.80}")
        self.patterns: tuple[str, ...] = tuple(listed)  # type: ignore[arg-type]
        self._allow = tuple(each for each in self.patterns if not each.startswith("!"))
        self._deny = tuple(each[1:] for each in self.patterns if each.startswith("!"))

    def allows(self, room: str) -> bool:
        if any(_glob(pattern, room) for pattern in self._deny):
            return False
        return any(_glob(pattern, room) for pattern in self._allow)


@dataclass(frozen=True)
class Identity:
    """Who a member is: C{user} (unique, e.g. a JWT's C{sub}), C{name} (shown
    to others), the C{rooms} it may join and publish to, and when its
    credentials expire (C{expires}, the hub clock's seconds; None: never)."""

    user: str
    name: str
    rooms: RoomPatterns
    expires: float | None = None

    def may_enter(self, room: str) -> bool:
        return self.rooms.allows(room)


class Authenticator(Protocol):
    """What turns a member's token into an L{Identity}: implement
    C{authenticate} to plug in a check of your own (a database, a backend)."""

    def authenticate(self, token: str, peer: str) -> Deferred[Identity]:
        """Fire with the identity C{token} proves, for a member connected
        from C{peer}; errback with L{AuthRefused} (its C{code} says why)."""


def _name(claim: object, user: str) -> str:
    if claim is None:
        return user
    if not isinstance(claim, str) or not claim or len(claim) > 64:
        raise AuthRefused("invalid_token", "the name claim is a string of 1 to 64 characters")
    return claim


class JwtAuthenticator:
    """
    Signed JWTs, checked by PyJWT against C{key} (an HMAC secret, or a PEM
    public key for RS*/ES*/EdDSA) for the C{algorithms} named only (a
    token with C{alg: none}, or any other algorithm, is refused), and
    C{audience} if given.  Claims: C{sub} (the user), C{name} (default
    C{sub}), C{rooms} (patterns; absent: C{default_rooms}), C{exp}, C{nbf},
    checked against C{clock}.
    """

    def __init__(self, key: str | bytes, *, algorithms: Sequence[str] = ("HS256",), audience: str | None = None,
                 default_rooms: Sequence[str] = ("*",), clock: IReactorTime) -> None:
        import jwt

        unknown = [each for each in algorithms if each not in ALGORITHMS]
        if not algorithms or unknown:
            raise ValueError(f"JWT algorithms are some of {', '.join(ALGORITHMS)}, not {list(algorithms)!r}")
        for algorithm in algorithms:
            try:
                jwt.get_algorithm_by_name(algorithm).prepare_key(key)
            except (jwt.PyJWTError, ValueError, TypeError) as error:
                raise ValueError(f"the key cannot check {algorithm} tokens: "
                                 f"{type(error).__name__}: {error}".split("\n")[0]) from None
        self._jwt = jwt
        self._key = key
        self._algorithms = list(algorithms)
        self._audience = audience
        self._default_rooms = RoomPatterns(default_rooms)
        self._clock = clock

    def authenticate(self, token: str, peer: str) -> Deferred[Identity]:
        try:
            return succeed(self._check(token))
        except AuthRefused as refused:
            return fail(refused)

    def _check(self, token: str) -> Identity:
        jwt = self._jwt
        if len(token) > MAX_TOKEN:
            raise AuthRefused("invalid_token", f"a token is at most {MAX_TOKEN} characters")
        try:
            # exp and nbf are checked below, on the hub's clock.
            claims: dict[str, Any] = jwt.decode(
                token, self._key, algorithms=self._algorithms, audience=self._audience,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                         "require": ["sub"] + (["aud"] if self._audience is not None else [])})
        except jwt.InvalidAudienceError:
            raise AuthRefused("invalid_token", "the token is for another audience") from None
        except jwt.InvalidSignatureError:
            raise AuthRefused("invalid_token", "the token's signature does not match the key") from None
        except jwt.InvalidAlgorithmError:
            raise AuthRefused("invalid_token",
                              f"the token's algorithm is not one of {', '.join(self._algorithms)}") from None
        except jwt.MissingRequiredClaimError as error:
            raise AuthRefused("invalid_token", f"the token has no {error.claim} claim") from None
        except jwt.PyJWTError as error:
            raise AuthRefused("invalid_token", f"the token is not a valid JWT ({type(error).__name__})") from None
        now = self._clock.seconds()
        expires = _time_claim(claims, "exp")
        not_before = _time_claim(claims, "nbf")
        if expires is not None and now >= expires:
            raise AuthRefused("expired_token", "the token has expired")
        if not_before is not None and now < not_before:
            raise AuthRefused("invalid_token", "the token is not valid yet")
        user = claims["sub"]
        if not isinstance(user, str) or not user or len(user) > 256:
            raise AuthRefused("invalid_token", "the sub claim is a string of 1 to 256 characters")
        rooms = self._default_rooms
        if "rooms" in claims:
            try:
                rooms = RoomPatterns(_listed(claims["rooms"]))
            except ValueError as error:
                raise AuthRefused("invalid_token", f"rooms claim: {error}") from None
        return Identity(user=user, name=_name(claims.get("name"), user), rooms=rooms, expires=expires)


def _listed(value: object) -> list[object]:
    if not isinstance(value, list):
        raise ValueError("a list of room patterns")
    return value


def _time_claim(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AuthRefused("invalid_token", f"the {name} claim is a number of seconds")
    return float(value)


class TokenFile:
    """
    Static tokens for small deployments, from a file: one a line,
    C{TOKEN USER [ROOM-PATTERN ...]} (no patterns: C{default_rooms});
    blank lines and C{#} comments are skipped.  Tokens are compared in
    constant time.
    """

    def __init__(self, path: str, *, default_rooms: Sequence[str] = ("*",)) -> None:
        self._tokens: list[tuple[bytes, Identity]] = []
        default = RoomPatterns(default_rooms)
        for number, line in enumerate(read_secret_file("auth-tokens", path).splitlines(), 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) < 2:
                raise ValueError(f"--auth-tokens {path!r} line {number}: TOKEN USER [ROOM-PATTERN ...]")
            try:
                rooms = RoomPatterns(fields[2:]) if len(fields) > 2 else default
            except ValueError as error:
                raise ValueError(f"--auth-tokens {path!r} line {number}: {error}") from None
            self._tokens.append((fields[0].encode("utf-8"),
                                 Identity(user=fields[1], name=fields[1], rooms=rooms)))
        if not self._tokens:
            raise ValueError(f"--auth-tokens {path!r}: no token in it")

    def authenticate(self, token: str, peer: str) -> Deferred[Identity]:
        given = token.encode("utf-8")[:MAX_TOKEN]
        found = None
        for known, identity in self._tokens:  # every one compared: the time says nothing
            if hmac.compare_digest(known, given):
                found = identity
        if found is None:
            return fail(AuthRefused("invalid_token", "unknown token"))
        return succeed(found)


class FailedAttempts:
    """
    Failed authentications by address: an address may fail C{burst} times
    at once, then C{rate} times a second; past that its attempts are
    refused unchecked until it may fail again (a guesser's cost, and the
    backend's or the CPU's, stays bounded).  At most C{max_addresses} are
    remembered: those whose allowance is whole again go first, then the oldest.
    """

    def __init__(self, rate: float = 1.0, burst: int = 10, max_addresses: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_addresses = max_addresses
        self._buckets: dict[str | None, TokenBucket] = {}

    def blocked(self, host: str | None, now: float) -> bool:
        """Whether C{host} has used up its failures for now."""
        bucket = self._buckets.get(host)
        return bucket is not None and not bucket.has_token(now)

    def failed(self, host: str | None, now: float) -> None:
        """C{host} failed once more."""
        bucket = self._buckets.get(host)
        if bucket is None:
            if len(self._buckets) >= self.max_addresses:
                self._forget(now)
            bucket = self._buckets[host] = TokenBucket(self.rate, self.burst, now)
        bucket.take(now)

    def _forget(self, now: float) -> None:
        for host in [host for host, bucket in self._buckets.items() if bucket.full(now)]:
            del self._buckets[host]
        while len(self._buckets) >= self.max_addresses:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)
