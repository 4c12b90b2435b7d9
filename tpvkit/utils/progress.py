"""Progress that reads well on a terminal and in a log file.

On a terminal (stderr is a tty) a tqdm bar redraws itself in place. In a log file the same bar
would write its carriage-return redraws onto the lines of the log messages around it, so there
a plain line (`desc: 12/40 unit (30%), 0:45 elapsed`) is written every `log_every` seconds and
at the end instead, or nothing where the caller logs its own lines (the training loop).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO


def interactive(stream: TextIO | None = None) -> bool:
    """Whether `stream` (default stderr, where bars go) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def _clock(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """A counter with tqdm's small interface (update, set_postfix, close, the rate).

    `log_every` None keeps a non-terminal silent; a number of seconds writes a plain line at
    most that often, and one at close. `enabled` False shows nothing anywhere.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        *,
        initial: int = 0,
        enabled: bool = True,
        log_every: float | None = 15.0,
        stream: TextIO | None = None,
        **tqdm_options: Any,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self._initial = initial
        self._stream = stream
        self._start = time.monotonic()
        self._last_line = self._start
        self._last_n = -1  # the count the last plain line reported
        self._log_every = log_every if enabled else None
        self._bar: Any = None
        if enabled and interactive(stream):
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, initial=initial, desc=desc, unit=unit, file=stream, **tqdm_options
            )

    @property
    def rate(self) -> float:
        """Units per second since the start (0 before the first)."""
        elapsed = time.monotonic() - self._start
        done = self.n - self._initial
        return done / elapsed if elapsed > 0 and done > 0 else 0.0

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._log_every is not None:
            now = time.monotonic()
            if now - self._last_line >= self._log_every:
                self._last_line = now
                self._line()

    def set_postfix(self, **values: Any) -> None:
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def _line(self) -> None:
        stream = sys.stderr if self._stream is None else self._stream
        if self.total:
            count = f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            count = f"{self.n} {self.unit}"
        self._last_n = self.n
        elapsed = _clock(time.monotonic() - self._start)
        print(f"{self.desc}: {count}, {elapsed} elapsed", file=stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._log_every is not None:
            self._log_every = None
            if self._last_n != self.n:  # the final count, unless the last line said it
                self._line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(
    iterable: Iterable[Any],
    total: int | None,
    desc: str,
    unit: str = "it",
    enabled: bool = True,
    log_every: float | None = 15.0,
    **tqdm_options: Any,
) -> Iterator[Any]:
    """Iterate `iterable` under a Progress."""
    options = {"enabled": enabled, "log_every": log_every, **tqdm_options}
    with Progress(total, desc, unit, **options) as progress:
        for item in iterable:
            yield item
            progress.update(1)
