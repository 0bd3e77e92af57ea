"""Progress of a long command on stderr (``project catch-up | rebuild``,
``verify``): a bar redrawn in place on a terminal, a line every few
seconds elsewhere."""

from __future__ import annotations

import sys
import time
from typing import ClassVar, Final, TextIO

from .output import number

__all__ = ["ProgressDisplay", "progress_line"]

PROGRESS_WIDTH: Final = 10
#: Progress on a terminal is redrawn this often; elsewhere, one line per period.
TTY_REDRAW_SECONDS: Final = 0.1
LOG_LINE_SECONDS: Final = 2.0


def progress_line(done: int, total: int, rate: float, width: int = PROGRESS_WIDTH) -> str:
    """``[#####     ] 52% 12,345/23,456 events  4,321 ev/s``"""
    fraction = 1.0 if total <= 0 else min(done / total, 1.0)
    filled = int(fraction * width)
    return (
        f"[{'#' * filled}{' ' * (width - filled)}] {int(fraction * 100)}% "
        f"{number(done)}/{number(total)} events  {rate:,.0f} ev/s"
    )


class ProgressDisplay:
    """Events applied so far, on stderr: a bar redrawn in place on a
    terminal, a plain line every few seconds otherwise (logs, pipes)."""

    #: A bar drawn on a terminal and not finished: an error ends its line first.
    unfinished: ClassVar[ProgressDisplay | None] = None

    @classmethod
    def end_line(cls) -> None:
        """End an unfinished bar's line (before an error message)."""
        if cls.unfinished is not None:
            cls.unfinished.stream.write("\n")
            cls.unfinished.stream.flush()
            cls.unfinished = None

    def __init__(self, label: str, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = TTY_REDRAW_SECONDS if self.tty else LOG_LINE_SECONDS
        self.started = time.monotonic()
        self.done = 0
        self.total = 0
        self.shown_at: float | None = None
        self.shown: tuple[int, int] | None = None
        self.width = 0

    def update(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        now = time.monotonic()
        if self.shown_at is None or now - self.shown_at >= self.interval:
            self._show(now)

    def finish(self) -> None:
        """Show the final count and end the line."""
        if self.shown != (self.done, self.total) and (self.done or self.tty):
            self._show(time.monotonic())
        if self.tty and self.shown is not None:
            self.stream.write("\n")
            self.stream.flush()
        self.shown = None
        self.shown_at = None
        self.width = 0
        if ProgressDisplay.unfinished is self:
            ProgressDisplay.unfinished = None

    def _show(self, now: float) -> None:
        self.shown_at = now
        if self.shown == (self.done, self.total):
            return
        self.shown = (self.done, self.total)
        elapsed = now - self.started
        line = progress_line(self.done, self.total, self.done / elapsed if elapsed > 0 else 0.0)
        if self.tty:
            padding = " " * max(0, self.width - len(line))
            self.width = len(line)
            self.stream.write(f"\r{line}{padding}")
            ProgressDisplay.unfinished = self
        else:
            self.stream.write(f"{self.label}: {line}\n")
        self.stream.flush()
