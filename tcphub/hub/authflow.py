"""
L{Authentication}: one member's way to an identity, the same whatever it
speaks (the structured protocol's C{hub.auth}, the chat's C{/auth}): the
deadline to present a token, one check at a time, the address's allowance
of failures, the token's expiry and its grace, and the counting and
logging of refusals.  Its protocol says what the member is told, through
the L{AuthOwner} methods.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from tcphub.errors import AuthRefused
from tcphub.hub.identity import Identity

__all__ = ["AuthOwner", "Authentication", "refuses_room"]

AWAITING: Final = "awaiting"
"""The hub asks for a token and none has been taken yet."""
CHECKING: Final = "checking"
"""A token is being checked (the first, or a fresh one)."""
KNOWN: Final = "known"
"""The member has an identity."""
CLOSED: Final = "closed"
"""The connection is gone: late answers are dropped."""


def refuses_room(hub: Any, identity: Identity, room: str) -> bool:
    """Whether C{identity} may not enter C{room}; a refusal is counted
    (C{forbidden}) and logged once per burst."""
    if identity.may_enter(room):
        return False
    count = hub.counters.add("forbidden")
    hub.repeats.emit("forbidden", LogLevel.info, "refused {user} room {room!r} ({count} so far)",
                     user=identity.user, room=room[:80], count=count)
    return True


class AuthOwner(Protocol):
    """What a protocol does when its member's authentication settles."""

    def auth_taken(self, identity: Identity, context: Any) -> None:
        """A token was taken (C{context} is what L{Authentication.present} was given)."""

    def auth_refused(self, refused: AuthRefused, context: Any, closing: bool) -> None:
        """Tell the member C{refused}; if C{closing}, close it once told."""


class Authentication:
    """
    One member's authentication on C{hub} (a L{HubFactory} whose C{auth} is
    set), for C{owner}, the member C{client_id} connected from C{host}
    (C{address}: host and port, for logs).  L{start} arms the deadline; L{present} checks a
    token; L{stop} when the connection is lost.
    """

    def __init__(self, hub: Any, owner: AuthOwner, client_id: str, host: str | None, address: str) -> None:
        self._hub = hub
        self._owner = owner
        self._client_id = client_id
        self._host = host
        self._address = address
        self.state = AWAITING
        self.identity: Identity | None = None
        self._deadline: IDelayedCall | None = None
        self._expiry: IDelayedCall | None = None

    def start(self) -> None:
        self._deadline = self._hub.clock.callLater(self._hub.auth_timeout, self._timed_out)

    def stop(self) -> None:
        self.state = CLOSED
        for call in (self._deadline, self._expiry):
            if call is not None and call.active():
                call.cancel()
        self._deadline = self._expiry = None

    def present(self, token: object, context: Any) -> None:
        """Check C{token}; the owner hears of the result."""
        hub = self._hub
        if not isinstance(token, str) or not token:
            self._refuse(AuthRefused("invalid_token", "a token is a non-empty string"), context)
            return
        if self.state == CHECKING:
            hub.counters.add("bad_requests")
            self._owner.auth_refused(AuthRefused("busy", "a token is being checked already"), context, False)
            return
        if hub.auth_attempts.blocked(self._host, hub.clock.seconds()):
            self._refuse(AuthRefused("too_many_attempts",
                                     "too many failed attempts from this address: try again later"), context)
            return
        known, self.state = self.state == KNOWN, CHECKING
        checked = maybeDeferred(hub.auth.authenticate, token, self._address)
        checked.addCallbacks(self._taken, self._failed, callbackArgs=(context,), errbackArgs=(context, known))

    def refuse_unauthenticated(self, reason: str, context: Any) -> None:
        """The member did something else before authenticating."""
        self._refuse(AuthRefused("unauthenticated", reason), context)

    def resumed(self, identity: Identity) -> None:
        """The member took back a session (its identity, known already):
        no token is awaited; the identity's expiry holds."""
        self._know(identity)

    def _taken(self, identity: Identity, context: Any) -> None:
        if self.state == CLOSED:
            return
        if self.identity is not None and identity.user != self.identity.user:
            self.state = KNOWN
            self._hub.counters.add("forbidden")
            self._owner.auth_refused(AuthRefused("forbidden", "a fresh token is for the same user"), context, False)
            return
        self._know(identity)
        self._owner.auth_taken(identity, context)

    def _know(self, identity: Identity) -> None:
        self.state, self.identity = KNOWN, identity
        hub = self._hub
        for call in (self._deadline, self._expiry):
            if call is not None and call.active():
                call.cancel()
        self._deadline = self._expiry = None
        if identity.expires is not None:
            left = max(0.0, identity.expires - hub.clock.seconds()) + hub.auth_grace
            self._expiry = hub.clock.callLater(left, self._expired)

    def _failed(self, failure: Failure, context: Any, known: bool) -> None:
        if self.state == CLOSED:
            return
        self.state = KNOWN if known else AWAITING
        if failure.check(AuthRefused):
            refused: AuthRefused = failure.value  # type: ignore[assignment]
        else:
            self._hub.handler_failed("the authenticator", failure, self._client_id)
            refused = AuthRefused("auth_unavailable", "the credentials could not be checked")
        self._refuse(refused, context)

    def _refuse(self, refused: AuthRefused, context: Any) -> None:
        """Count and log a refusal, tell the member; close it unless it has an identity."""
        hub = self._hub
        if refused.code not in ("auth_unavailable", "too_many_attempts"):
            hub.auth_attempts.failed(self._host, hub.clock.seconds())
        count = hub.counters.add("auth_failed")
        hub.repeats.emit("auth_failed", LogLevel.info, "refused the credentials of {peer}: {code} ({count} so far)",
                         peer=self._address, code=refused.code, count=count)
        self._owner.auth_refused(refused, context, self.identity is None)

    def _timed_out(self) -> None:
        self._deadline = None
        hub = self._hub
        count = hub.counters.add("auth_timeouts")
        hub.repeats.emit("auth_timeouts", LogLevel.info,
                         "closed {peer}: no credentials within {timeout:g} s ({count} so far)",
                         peer=self._address, timeout=hub.auth_timeout, count=count)
        self._owner.auth_refused(AuthRefused("auth_timeout", f"no credentials within {hub.auth_timeout:g} s"),
                                 None, True)

    def _expired(self) -> None:
        self._expiry = None
        hub = self._hub
        count = hub.counters.add("auth_failed")
        hub.repeats.emit("auth_expired", LogLevel.info, "closed {peer}: its token expired ({count} so far)",
                         peer=self._address, count=count)
        self._owner.auth_refused(AuthRefused("expired_token", "the token expired"), None, True)
