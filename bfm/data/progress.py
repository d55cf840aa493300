"""Progress reporting that suits both terminals and cluster logs.

``progress(...)`` returns a tqdm bar when stderr is a terminal, and otherwise a ``LineProgress``
that writes one plain line at most every ``interval_s`` seconds (and one at the end): a SLURM or
``nohup`` log then holds a readable line a minute instead of a carriage-return update every
0.1 s. Both take the same calls: iteration, ``update(n)``, ``set_postfix(**values)``, ``close()``
and use as a context manager. ``BFM_PROGRESS=bar`` / ``line`` forces either kind.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

INTERVAL_S = 60.0  # seconds between two lines of a LineProgress
ENV_VAR = "BFM_PROGRESS"


def _seconds(value: float) -> str:
    value = int(max(value, 0))
    hours, rest = divmod(value, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class LineProgress:
    """A progress report of plain lines, at most one every ``interval_s`` seconds, plus the last.

    A line reads ``desc: 4000/30000 upd (13 %), 35.2 upd/s, ETA 0:12:18, eval_iqm=215.3``; the
    rate is over the time since the previous line. ``unit_scale`` shows byte counts in KiB / MiB.
    """

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        initial: int = 0,
        desc: str = "",
        unit: str = "it",
        unit_scale: bool = False,
        interval_s: float = INTERVAL_S,
        stream: TextIO | None = None,
        clock: Any = time.monotonic,
        **_ignored: Any,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.n = iterable, total, initial
        self.desc, self.unit, self.unit_scale = desc, unit, unit_scale
        self.interval_s, self.stream, self.clock = interval_s, stream, clock
        self.postfix = ""
        self._last = (clock(), initial)  # (time, count) of the previous line
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None, "LineProgress(iterable) to iterate"
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self._last[0] >= self.interval_s:
            self._emit()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n != self._last[1]:
                self._emit()

    def _amount(self, n: float, *, rate: bool = False) -> str:
        """``n`` with its unit: ``4000 upd``, ``35.2 upd/s``, ``12.3 MiB``, ``4.5 MiB/s``."""
        suffix = "/s" if rate else ""
        if not self.unit_scale:
            if rate and 0 < n < 1:
                return f"{1 / n:.1f} s/{self.unit}"  # slow loops read better as seconds per item
            return f"{n:.1f} {self.unit}{suffix}" if rate else f"{n:g} {self.unit}"
        for prefix in ("", "Ki", "Mi", "Gi"):
            if abs(n) < 1024 or prefix == "Gi":
                return f"{n:.1f} {prefix}{self.unit}{suffix}"
            n /= 1024
        raise AssertionError  # unreachable

    def line(self) -> str:
        """The line the next report would write (without moving the rate's reference point)."""
        rate = (self.n - self._last[1]) / max(self.clock() - self._last[0], 1e-9)
        if self.total is None:
            parts = [self._amount(self.n)]
        elif self.unit_scale:
            parts = [
                f"{self._amount(self.n)} of {self._amount(self.total)} ({100 * self.n / max(self.total, 1):.0f} %)"
            ]
        else:
            parts = [f"{self.n}/{self.total} {self.unit} ({100 * self.n / max(self.total, 1):.0f} %)"]
        parts.append(self._amount(rate, rate=True))
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {_seconds((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        return (f"{self.desc}: " if self.desc else "") + ", ".join(parts)

    def _emit(self) -> None:
        stream = self.stream or sys.stderr
        stream.write(self.line() + "\n")
        stream.flush()
        self._last = (self.clock(), self.n)


def use_bar(stream: TextIO | None = None) -> bool:
    """True for a tqdm bar: ``BFM_PROGRESS=bar``, or stderr is a terminal (and not ``=line``)."""
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced in ("bar", "line"):
        return forced == "bar"
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress(iterable: Iterable[Any] | None = None, *, disable: bool = False, **kwargs: Any) -> Any:
    """A tqdm bar on a terminal, else a ``LineProgress``; the same arguments as tqdm's.

    ``disable=True`` returns a silent tqdm (it still counts and iterates).
    """
    if disable or use_bar():
        return tqdm(iterable, disable=disable, **kwargs)
    return LineProgress(iterable, **kwargs)
