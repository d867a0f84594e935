"""Where remote functions live and how to call them: ``HttpEndpoint`` (StateFun's http endpoint spec).

An endpoint serves every function type its ``functions`` pattern matches (``ns/*`` or one ``ns/name``) at
``url_path_template``, with ``{function.name}`` standing for the name part of the typename. The timeouts
follow StateFun's async transport: ``call_timeout`` is the budget of one call *including* its retries.
What happens when that budget is spent is ``on_failure``: ``"restart"`` (StateFun: the job fails over to
its last checkpoint) or ``"dead-letter"`` (rayfun: the batch goes to ``rayfun/dead-letters`` with the
error, and the function moves on).

The dataclass is frozen and picklable: it travels to every shard inside the app config.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeAlias
from urllib.parse import urlsplit

from ..types import validate_typename

__all__ = ["ON_FAILURE_MODES", "Duration", "HttpEndpoint", "parse_duration"]

Duration: TypeAlias = timedelta | int | float | str  # as given; an HttpEndpoint holds seconds (float)

ON_FAILURE_MODES = ("restart", "dead-letter")

# Flink's TimeUtils units (org.apache.flink.util.TimeUtils.TimeUnit), in seconds.
_UNITS: dict[str, float] = {}
for _names, _seconds in (
    (("d", "day", "days"), 86400.0),
    (("h", "hour", "hours"), 3600.0),
    (("min", "m", "minute", "minutes", "mins"), 60.0),
    (("s", "sec", "secs", "second", "seconds"), 1.0),
    (("ms", "milli", "millis", "millisecond", "milliseconds"), 1e-3),
    (("us", "µs", "micro", "micros", "microsecond", "microseconds"), 1e-6),
    (("ns", "nano", "nanos", "nanosecond", "nanoseconds"), 1e-9),
):
    for _name in _names:
        _UNITS[_name] = _seconds

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zµ]*)\s*$", re.IGNORECASE)


def parse_duration(value: Duration, what: str = "duration") -> float:
    """Seconds from a timedelta, a number of seconds, or a Flink duration string (``"1 min"``, ``"20s"``).

    A string without a unit is milliseconds, as in Flink; a Python number is seconds.
    """
    if isinstance(value, bool):
        raise TypeError(f"{what}: expected a duration, got {value!r}")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if m is None:
            raise ValueError(f"{what}: cannot parse duration {value!r} (write e.g. '2 min', '20s', '500ms')")
        number, unit = m.groups()
        unit = unit.lower()
        if unit and unit not in _UNITS:
            raise ValueError(f"{what}: unknown time unit {unit!r} in {value!r}; use one of ms, s, sec, min, m, h, d")
        seconds = float(number) * (_UNITS[unit] if unit else 1e-3)
    else:
        raise TypeError(f"{what}: expected a timedelta, seconds or a string like '1 min', got {type(value).__name__}")
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"{what}: a duration must not be negative, got {value!r}")
    return seconds


def _optional_duration(value: Duration | None, what: str) -> float | None:
    return None if value is None else parse_duration(value, what)


@dataclass(frozen=True, init=False)
class HttpEndpoint:
    """A remote-function endpoint (StateFun ``io.statefun.endpoints.v2/http``); durations in seconds.

    ``read_timeout`` bounds one attempt (None: only the remaining call budget does).
    ``max_retries`` bounds the retries of one call (None: retry until ``call_timeout`` is spent).
    ``max_concurrent_requests`` bounds the requests in flight per endpoint per shard (backpressure).
    TLS: ``verify`` the server certificate (against ``ca_file`` if given, else the system CAs), and
    present ``client_cert``/``client_key`` for mutual TLS.

    The durations are given as any ``Duration`` and held as seconds, so ``__init__`` is written out (the
    generated one would take only what the fields hold); the defaults are its defaults.
    """

    functions: str
    url_path_template: str
    call_timeout: float
    connect_timeout: float
    read_timeout: float | None
    max_num_batch_requests: int
    max_retries: int | None
    on_failure: str
    max_concurrent_requests: int
    verify: bool
    ca_file: str | None
    client_cert: str | None
    client_key: str | None
    client_key_password: str | None = field(repr=False)
    pool_size: int
    pool_ttl: float
    payload_max_bytes: int

    def __init__(
        self,
        functions: str,
        url_path_template: str,
        call_timeout: Duration = 120.0,
        connect_timeout: Duration = 20.0,
        read_timeout: Duration | None = None,
        max_num_batch_requests: int = 1000,
        max_retries: int | None = None,
        on_failure: str = "restart",
        max_concurrent_requests: int = 1024,
        verify: bool = True,
        ca_file: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        client_key_password: str | None = None,
        pool_size: int = 1024,
        pool_ttl: Duration = 15.0,
        payload_max_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("functions", functions)
        put("url_path_template", url_path_template)
        put("max_num_batch_requests", max_num_batch_requests)
        put("max_retries", max_retries)
        put("on_failure", on_failure)
        put("max_concurrent_requests", max_concurrent_requests)
        put("verify", verify)
        put("ca_file", ca_file)
        put("client_cert", client_cert)
        put("client_key", client_key)
        put("client_key_password", client_key_password)
        put("pool_size", pool_size)
        put("payload_max_bytes", payload_max_bytes)

        where = f"endpoint {self.functions!r}"
        if not isinstance(self.functions, str):
            raise TypeError(f"endpoint functions must be a str like 'ns/*' or 'ns/name', got {self.functions!r}")
        namespace, name = validate_typename(self.functions)
        if "*" in namespace or ("*" in name and name != "*"):
            raise ValueError(f"{where}: '*' may only stand for the whole function name ('ns/*')")
        if not isinstance(self.url_path_template, str) or not self.url_path_template:
            raise ValueError(
                f"{where}: url_path_template must be a URL such as "
                f"'http://host:8000/statefun' or 'http://host:8000/{{function.name}}'"
            )
        url = urlsplit(self.url_path_template.replace("{function.name}", "fn"))
        if url.scheme in ("http+unix", "https+unix"):
            raise ValueError(f"{where}: unix-socket URLs ({url.scheme}://) are not supported; use http(s)://")
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ValueError(
                f"{where}: url_path_template {self.url_path_template!r} must be an absolute http:// or https:// URL"
            )

        put("call_timeout", parse_duration(call_timeout, f"{where}: call_timeout"))
        put("connect_timeout", parse_duration(connect_timeout, f"{where}: connect_timeout"))
        put("read_timeout", _optional_duration(read_timeout, f"{where}: read_timeout"))
        put("pool_ttl", parse_duration(pool_ttl, f"{where}: pool_ttl"))
        if self.call_timeout <= 0:
            raise ValueError(f"{where}: call_timeout must be positive")
        for key in ("connect_timeout", "read_timeout"):  # each attempt is also bounded by the call budget
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ValueError(f"{where}: {key} must be positive, got {value:g}s")

        for key, low in (
            ("max_num_batch_requests", None),
            ("max_concurrent_requests", 1),
            ("pool_size", 1),
            ("payload_max_bytes", 1),
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
                need = "an int" if low is None else f"an int >= {low}"
                raise ValueError(f"{where}: {key} must be {need}, got {value!r}")
        if self.max_retries is not None and (
            isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0
        ):
            raise ValueError(
                f"{where}: max_retries must be None (retry within call_timeout) or an int >= 0, "
                f"got {self.max_retries!r}"
            )
        if self.on_failure not in ON_FAILURE_MODES:
            raise ValueError(f"{where}: on_failure must be one of {ON_FAILURE_MODES}, got {self.on_failure!r}")
        if not isinstance(self.verify, bool):
            raise TypeError(f"{where}: verify must be a bool")
        if self.client_key and not self.client_cert:
            raise ValueError(f"{where}: client_key needs client_cert")
        if url.scheme == "http" and (self.ca_file or self.client_cert):
            raise ValueError(f"{where}: ca_file/client_cert need an https:// url_path_template")

    @property
    def is_namespace(self) -> bool:
        """True for a ``ns/*`` endpoint."""
        return self.functions.endswith("/*")

    def matches(self, typename: str) -> bool:
        """Whether this endpoint serves the function type ``typename``."""
        if self.functions.endswith("/*"):
            namespace, sep, name = typename.rpartition("/")
            return bool(sep and name) and namespace == self.functions[:-2]
        return typename == self.functions

    def url_for(self, typename: str) -> str:
        """The URL a batch for ``typename`` is POSTed to (``{function.name}`` = the name part only)."""
        return self.url_path_template.replace("{function.name}", typename.rpartition("/")[2])

    def __str__(self) -> str:
        return f"{self.functions} -> {self.url_path_template}"
