"""The processing rate of a running application, for the benchmarks that time how soon it is back at full
rate (a rescale, a recovery): the shards' counters read every 0.1 s, each with the time the shard read it.
"""

from __future__ import annotations

import bisect
import threading
import time

WINDOW_S = 1.0  # a rate is measured over this window


class RateProbe:
    """Messages processed per second, from the shards' counters read every 0.1 s. Each counter comes with
    the time the shard read it (``taken_at``, its own clock): a rate over the driver's receipt times would
    be off by the replies' queueing (0.1-0.4 s under load, up to 40 % of a 1 s window). A process counts on
    across restores; a replacement or a new shard starts from 0; a retired one stays at its last count."""

    def __init__(self, app) -> None:
        self.app = app
        self.samples: list[tuple[float, int]] = []  # (time, messages so far): the probe's own, for progress
        self.counters: dict[tuple[int, int], list[tuple[float, int]]] = {}  # (index, pid) -> [(taken_at, n)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RateProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                metrics = self.app.shard_metrics()
            except Exception:
                metrics = []
            for m in metrics:
                series = self.counters.setdefault((m["shard"], m["pid"]), [])
                if not series or m["taken_at"] > series[-1][0]:
                    series.append((m["taken_at"], m["processed"]))
            self.samples.append((time.time(), sum(s[-1][1] for s in self.counters.values())))
            time.sleep(0.1)

    def total(self, at: float) -> float:
        """Messages processed by all shards up to ``at``: each shard's counter interpolated between its reads
        (0 before its first, its last count after its last)."""
        done = 0.0
        for series in self.counters.values():
            times = [t for t, _ in series]
            i = bisect.bisect_right(times, at)
            if i == 0:
                continue
            if i == len(series):
                done += series[-1][1]
                continue
            (t0, n0), (t1, n1) = series[i - 1], series[i]
            done += n0 + (n1 - n0) * (at - t0) / (t1 - t0)
        return done

    def mean_rate(self, start: float, end: float) -> float:
        return (self.total(end) - self.total(start)) / (end - start) if end > start else 0.0

    def rate(self, at: float) -> float:
        """The rate over the WINDOW_S that ends at ``at``."""
        return self.mean_rate(at - WINDOW_S, at)

    def first_window(self, since: float, rate: float, until: float) -> float | None:
        """When the first WINDOW_S window that begins at or after ``since`` (in steps of 0.1 s) and runs at
        ``rate`` or more begins."""
        t = since
        while t + WINDOW_S <= until:
            if self.mean_rate(t, t + WINDOW_S) >= rate:
                return t
            t += 0.1
        return None

    def read_until(self, alive_after: float) -> float:
        """The last moment every shard read after ``alive_after`` (a live one) has been read at: a rate up to
        then is measured, past it a guess. Shards retired or killed before then are left out."""
        live = [series[-1][0] for series in list(self.counters.values()) if series[-1][0] > alive_after]
        return min(live) if live else alive_after
