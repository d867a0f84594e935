"""rayfun's logging: the ``rayfun`` logger and its children only, never the root logger of a process.

A shard or coordinator actor runs in a Ray worker process that may also run other people's code; calling
``logging.basicConfig`` there (as rayfun once did) changed how everything in that worker logs. Instead the
actors give the ``rayfun`` logger one handler of its own (to stderr, which Ray collects into the worker's
log and, with ``log_to_driver``, shows on the driver) and the level the application asked for.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Hashable

from .constants import LOG_EVERY_S

__all__ = ["DEFAULT_LEVEL", "RateLimitedLog", "configure_logging", "parse_level"]

DEFAULT_LEVEL = os.environ.get("RAYFUN_LOG_LEVEL", "INFO")
_FORMAT = "%(levelname)s %(name)s: %(message)s"
_HANDLER_NAME = "rayfun"


def parse_level(level: int | str) -> int:
    """A logging level from a name (``"debug"``, ``"INFO"``) or number; ValueError naming the choices."""
    if isinstance(level, int):
        return level
    value = logging.getLevelName(str(level).upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


def configure_logging(level: int | str = DEFAULT_LEVEL) -> logging.Logger:
    """Give the ``rayfun`` logger its level and (once per process) its own stderr handler; returns it."""
    logger = logging.getLogger("rayfun")
    logger.setLevel(parse_level(level))
    if not any(getattr(h, "name", None) == _HANDLER_NAME for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.name = _HANDLER_NAME
        handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(handler)
        logger.propagate = False  # the handler above prints it; the root logger's would print it twice
    return logger


class RateLimitedLog:
    """Logs a repeated line at most once per key per ``every`` seconds, so that a failure that repeats for
    minutes (a remote function answering 500 while it is retried) is visible without flooding the log.
    The first line after a quiet spell says how many were suppressed since the previous one."""

    def __init__(
        self,
        logger: logging.Logger,
        every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.every = LOG_EVERY_S if every is None else every
        self.clock = clock
        self._last: dict[Hashable, float] = {}  # key -> when its last line was logged
        self._suppressed: dict[Hashable, int] = {}

    def log(self, level: int, key: Hashable, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless ``key`` logged one less than ``every`` seconds ago; True if logged."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            msg += " (%d similar line%s suppressed in the last %.0f s)"
            args = (*args, suppressed, "" if suppressed == 1 else "s", now - last if last is not None else 0.0)
        self.logger.log(level, msg, *args)
        return True

    def warning(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)
