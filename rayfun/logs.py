"""rayfun's logging: the ``rayfun`` logger and its children only, never the root logger of a process.

A shard or coordinator actor runs in a Ray worker process that may also run other people's code; calling
``logging.basicConfig`` there (as rayfun once did) changed how everything in that worker logs. Instead the
actors give the ``rayfun`` logger one handler of its own (to stderr, which Ray collects into the worker's
log and, with ``log_to_driver``, shows on the driver) and the level the application asked for.
"""

from __future__ import annotations

import logging
import os

__all__ = ["DEFAULT_LEVEL", "configure_logging", "parse_level"]

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
