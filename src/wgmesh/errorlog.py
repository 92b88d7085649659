"""Logging unexpected exceptions without letting a flood of them fill the log."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("wgmesh.errors")

ERROR_LOG_INTERVAL = 60.0
"""Default seconds between two logged exceptions of one kind."""


class ErrorLog:
    """Logs an unexpected exception (a handler's, or the batch loop's own) with its traceback,
    at most once per ``interval`` seconds: a flood of datagrams that each trip the same bug
    cannot fill the log. The exceptions in between are only counted, and the next line logged
    says how many there were."""

    def __init__(
        self, what: str, interval: float = ERROR_LOG_INTERVAL, logger: logging.Logger = log
    ) -> None:
        self.what = what
        self.log = logger
        """Names the socket in the log line."""
        self.interval = interval
        self.suppressed = 0
        """Exceptions not logged since the last one that was."""
        self._quiet_until = -float("inf")  # time.monotonic()

    def __call__(self, exc: Exception, message: str) -> None:
        now = time.monotonic()
        if now < self._quiet_until:
            self.suppressed += 1
            return
        self._quiet_until = now + self.interval
        more, self.suppressed = self.suppressed, 0
        self.log.error(
            "%s: %s%s",
            self.what,
            message,
            f" ({more} more since the last one logged)" if more else "",
            exc_info=exc,
        )
