"""A remote function that keeps failing is visible: each failing attempt is a WARNING naming the function,
id, URL, HTTP status and attempt, at most one line per endpoint per ``LOG_EVERY_S`` (rayfun.logs)."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import threading
import time
import uuid

import pytest

from rayfun.logs import RateLimitedLog
from rayfun.remote import HttpEndpoint, RemoteFunctionClient, RemoteFunctionError
from tests.remote.bad_server import HITS, make_bad_app, running_app
from tests.remote.conftest import run
from tests.remote.test_remote_failures import CALL, STATES

pytestmark = pytest.mark.timeout(120)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))


@pytest.fixture
def captured():
    """The lines of the ``rayfun.remote`` logger (a handler of its own: the ``rayfun`` logger may not
    propagate to the root logger that caplog listens on)."""
    logger, handler = logging.getLogger("rayfun.remote"), _Lines()
    level, logger.level = logger.level, logging.DEBUG
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_rate_limited_log_counts_what_it_suppressed(captured):
    now = [100.0]
    limited = RateLimitedLog(logging.getLogger("rayfun.remote"), every=10, clock=lambda: now[0])
    assert limited.warning("a", "first %d", 1)
    now[0] += 1
    assert not limited.warning("a", "second")
    assert limited.warning("b", "other endpoint")  # keys are independent
    now[0] += 2
    assert not limited.warning("a", "third")
    now[0] += 8  # 11 s after the first line of "a"
    assert limited.warning("a", "fourth %s", "x")
    now[0] += 10
    assert limited.warning("a", "fifth")  # nothing suppressed since: no count
    assert captured == [
        (logging.WARNING, "first 1"),
        (logging.WARNING, "other endpoint"),
        (logging.WARNING, "fourth x (2 similar lines suppressed in the last 11 s)"),
        (logging.WARNING, "fifth"),
    ]


async def _always_500(every: float):
    app = make_bad_app()
    async with running_app(app) as base:
        client = RemoteFunctionClient(HttpEndpoint("example/*", f"{base}/always500", call_timeout=1.6))
        client.attempt_log.every = every
        try:
            with pytest.raises(RemoteFunctionError) as caught:
                await client.invoke("example/greeter", "bob", STATES, CALL)
        finally:
            await client.close()
        return caught.value, app[HITS]["always500"], base


def test_failing_attempts_are_warnings_once_per_endpoint_per_interval(captured):
    err, hits, base = run(_always_500(every=0.5))
    assert err.attempts == hits > 5
    warnings = [text for level, text in captured if level == logging.WARNING]
    assert 2 <= len(warnings) <= 5 < hits  # about one per 0.5 s of the 1.6 s budget, not one per attempt
    first = warnings[0]
    assert first.startswith(f"remote function example/greeter (id 'bob') at {base}/always500: attempt 1 failed: ")
    assert "HTTP 500 Internal Server Error: the function is broken; retrying" in first
    attempts = [int(text.split(": attempt ")[1].split()[0]) for text in warnings]
    assert attempts == sorted(attempts) and attempts[-1] <= err.attempts
    for before, after, text in zip(attempts, attempts[1:], warnings[1:]):  # each says what it skipped
        skipped = after - before - 1
        assert (f"({skipped} similar line" in text) if skipped else ("suppressed" not in text)
    assert any("similar lines suppressed" in text for text in warnings)


def test_the_default_interval_gives_one_line_per_call_budget(captured):
    err, hits, _ = run(_always_500(every=10))
    assert hits > 5 and len([1 for level, _ in captured if level == logging.WARNING]) == 1


def _worker_log_lines(pattern: str) -> list[str]:
    import ray

    logs = pathlib.Path(ray._private.worker._global_node.get_logs_dir_path())
    return [
        line
        for path in logs.glob("worker-*.err")
        for line in path.read_text(errors="replace").splitlines()
        if pattern in line
    ]


def _restarted_after_attempts(typename: str) -> bool:
    lines = _worker_log_lines(f"remote function {typename}")
    return any(": attempt 1 failed" in line for line in lines) and any("rolling back" in line for line in lines)


def test_a_shard_retrying_a_500_logs_it_on_restart(ray_session):
    """``on_failure="restart"`` retries for the whole call budget, rolls back, sends again: the shard's own
    log (its worker's stderr) shows the attempts instead of minutes of silence."""
    import rayfun

    with serving(make_bad_app()) as base:
        typename = f"bad{uuid.uuid4().hex[:6]}/fn"
        endpoint = HttpEndpoint(f"{typename.split('/')[0]}/*", f"{base}/always500", call_timeout=2)
        app = rayfun.start(rayfun.StatefulFunctions(), shards=1, standby=False, endpoints=[endpoint])
        try:
            app.send(typename, "k", "hello")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not _restarted_after_attempts(typename):
                time.sleep(0.5)
        finally:
            app.stop()
    lines = _worker_log_lines(f"remote function {typename}")  # the shard's and the coordinator's files, any order
    attempt = (
        f"WARNING rayfun.remote: remote function {typename} (id 'k') at {base}/always500: attempt 1 failed: HTTP 500"
    )
    assert any(attempt in line for line in lines), lines
    assert any("rolling back to the last checkpoint (on_failure='restart')" in line for line in lines)


class serving:
    """An aiohttp app on a free loopback port, in a thread of its own (the shards call it from Ray workers)."""

    def __init__(self, app) -> None:
        self.app = app

    def __enter__(self) -> str:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.context = running_app(self.app)
        return asyncio.run_coroutine_threadsafe(self.context.__aenter__(), self.loop).result(10)

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.context.__aexit__(*exc), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
