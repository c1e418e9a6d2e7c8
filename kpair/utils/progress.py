"""A count with an estimate on stderr, for kpair's long steps.

`evaluate`, `predict`, `adapt`, `diagnose`, `data import`, `compare` and
`tune` report `label k/n, 12 s elapsed, about 30 s left` here. On a
terminal the line is redrawn in place; elsewhere (a log file, a pipe, a
test's captured output) a plain line is written only once `every` seconds
have passed since the last one (30, or `$KPAIR_PROGRESS_EVERY`), so a short
step writes nothing and an error that follows stays the one line on stderr.
Training has Keras's own bar.
"""

import math
import os
import sys
import time

from kpair.errors import ConfigError

EVERY_VARIABLE = "KPAIR_PROGRESS_EVERY"


def default_every():
    """Float, the seconds between two progress lines off a terminal:
    `$KPAIR_PROGRESS_EVERY` when set (`inf` writes none), else 30."""
    text = os.environ.get(EVERY_VARIABLE, "").strip()
    if not text:
        return 30.0
    try:
        every = float(text)
    except ValueError:
        every = math.nan
    if not every >= 0:
        raise ConfigError(
            f"{EVERY_VARIABLE}={text!r}: expected seconds, a number >= 0 "
            "(inf writes no progress line off a terminal)"
        )
    return every


def _duration(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def estimate(elapsed, done, total):
    """`12 s elapsed, about 30 s left`: the time left assumes that each of
    the `total - done` steps left takes as long as the `done` ones did."""
    text = f"{_duration(elapsed)} elapsed"
    if total and 0 < done < total:
        text += f", about {_duration(elapsed / done * (total - done))} left"
    return text


class Progress:
    """`label k/n, elapsed, ETA` on a stream (default `sys.stderr`).

    Args:
        label: String, what is counted ("evaluating batches", "trial").
        total: Integer, the count when done; `None` if unknown (no ETA).
        stream: Where to write; default `sys.stderr`.
        every: Float, seconds between two lines when `stream` is not a
            terminal; default `default_every()`. A terminal gets its
            line redrawn at most 10 times a second.
        enabled: Boolean; `False` writes nothing.

    Example:

    >>> with Progress("checking rows", len(rows)) as progress:
    ...     for row in rows:
    ...         check(row)
    ...         progress.advance()
    """

    def __init__(self, label, total, stream=None, every=None, enabled=True):
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.every = every if every is not None else default_every()
        self.enabled = enabled
        self.done = 0
        self._started = time.monotonic()
        self._last = self._started
        self._drawn = False
        try:
            self._terminal = self.stream.isatty()
        except (AttributeError, ValueError):
            self._terminal = False

    def line(self, now=None):
        """The progress line as it stands, e.g. `trial 2/5, 40 s elapsed,
        about 1 min 00 s left`."""
        elapsed = (now if now is not None else time.monotonic()) - self._started
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        return f"{self.label} {count}, {estimate(elapsed, self.done, self.total)}"

    def update(self, done):
        """Sets the count to `done` and writes the line when it is time."""
        self.done = done
        if not self.enabled:
            return
        now = time.monotonic()
        finished = self.total is not None and done >= self.total
        if self._terminal:
            if now - self._last >= 0.1 or finished or not self._drawn:
                self.stream.write(f"\r\x1b[K{self.line(now)}")
                self.stream.flush()
                self._last, self._drawn = now, True
        elif now - self._last >= self.every:
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()
            self._last = now

    def advance(self, steps=1):
        """Adds `steps` to the count (see `update`)."""
        self.update(self.done + steps)

    def close(self):
        """Ends a redrawn terminal line, so the next output starts afresh."""
        if self.enabled and self._terminal and self._drawn:
            self.stream.write(f"\r\x1b[K{self.line()}\n")
            self.stream.flush()
            self._drawn = False

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False
