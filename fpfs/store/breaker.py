"""A circuit breaker in front of an object store, so that a store that stopped answering
costs each read at most one deadline, and most reads nothing at all.

Closed (the store answers): every request goes out. When a caller gives up on a request
at the deadline (the store does not answer at all: frozen, a black-holed link) the
breaker opens; a store that answers with errors (refused connections, 5xx) fails each
request within its retries anyway and opens nothing. Open: one request at a time - the
probe - goes out, at most one per `cooldown` seconds, and every other request fails with
StoreUnavailable (EIO through the mount): at once, or - while a probe is out - once the
probe has had `cooldown` seconds to get an answer (so the reads that arrive together with
a probe of a store that is back go through with it). The first request that succeeds
closes the breaker, so reads resume as soon as the store is back (within `cooldown`). A
log line marks each change of state."""
from __future__ import annotations

import logging
import threading
import time

from ..errors import StoreError

log = logging.getLogger("fpfs.store")
DEFAULT_COOLDOWN = 1.0


class StoreUnavailable(StoreError):
    """The breaker is open: the store failed recently and a probe is already out."""


class CircuitBreaker:
    def __init__(self, name: str, cooldown: float = DEFAULT_COOLDOWN):
        self.name = name
        self.cooldown = cooldown
        self._lock = threading.Lock()
        self._closed = threading.Condition(self._lock)
        self._open = False
        self._probing = False
        self._next_probe = 0.0
        self._last_error = ""
        self.trips = 0                  # how often it opened (metrics)

    @property
    def is_open(self) -> bool:
        return self._open

    def before(self, what: str) -> bool:
        """Call before a request: raises StoreUnavailable while open, unless this request
        is to be the probe. Returns True for the probe (pass it to success/failure)."""
        if not self._open:
            return False
        with self._lock:
            if self._open and not self._probing and time.monotonic() >= self._next_probe:
                self._probing = True
                return True
            if self._open and self._probing:
                self._closed.wait(self.cooldown)    # the probe's answer, briefly
            if not self._open:
                return False
            raise self._refusal(what)

    def check(self, what: str) -> None:
        """Raise StoreUnavailable now if a request would be refused (no probe due), without
        taking the probe: for callers that queue the request before sending it."""
        if self._open and (self._probing or time.monotonic() < self._next_probe):
            raise self._refusal(what)

    def _refusal(self, what: str) -> StoreUnavailable:
        return StoreUnavailable(f"{what}: the store is not answering ({self._last_error}); "
                                f"failing fast until it does")

    def success(self, probe: bool = False) -> None:
        if not self._open:
            return
        with self._lock:
            if self._open:
                self._open = self._probing = False
                self._closed.notify_all()
                log.warning("store %s answers again: reads resume", self.name)

    def failure(self, error: BaseException, probe: bool = False) -> None:
        with self._lock:
            self._last_error = str(error)[:200]
            self._next_probe = time.monotonic() + self.cooldown
            if probe:
                self._probing = False
            if not self._open:
                self._open = True
                self.trips += 1
                log.error("store %s is not answering (%s): reads fail at once (EIO) until a "
                          "probe every %g s gets an answer", self.name, self._last_error,
                          self.cooldown)

    def abandon(self, probe: bool) -> None:
        """A probe that ended neither way (the object changed, a 404): let another go."""
        if probe:
            with self._lock:
                self._probing = False
