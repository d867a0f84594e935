"""rayfun configures its own logger only: a worker's root logger (other people's code) is left alone."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from rayfun.logs import parse_level


def test_only_the_rayfun_logger_is_configured_once():
    script = (
        "import logging\nfrom rayfun.logs import configure_logging\n"
        "root_before = (logging.getLogger().level, list(logging.getLogger().handlers))\n"
        "configure_logging('debug'); configure_logging('WARNING')\n"
        "log = logging.getLogger('rayfun')\n"
        "assert (logging.getLogger().level, list(logging.getLogger().handlers)) == root_before\n"
        "assert len(log.handlers) == 1 and log.level == logging.WARNING and not log.propagate\n"
        "logging.getLogger('rayfun.checkpoint').warning('seen once')\n"
        "logging.getLogger('rayfun.checkpoint').info('not seen')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("seen once") == 1 and "not seen" not in out.stderr
    assert "WARNING rayfun.checkpoint: seen once" in out.stderr


def test_levels_by_name_or_number_and_a_clear_error():
    assert parse_level("debug") == logging.DEBUG and parse_level(logging.ERROR) == logging.ERROR
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        parse_level("loud")
