"""SIGTERM and SIGINT for the commands that run until stopped (``tail
--follow``, ``project catch-up | run | rebuild``)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["FollowStop", "GracefulStop", "Stopped", "handling_signals", "interrupt"]

Handler = Callable[[int, FrameType | None], None]


class Stopped(BaseException):
    """SIGTERM while following: leave the poll loop like Ctrl-C does."""


@contextmanager
def handling_signals(handler: Handler) -> Iterator[None]:
    """``handler`` for SIGTERM, and for SIGINT where it is not ignored (a
    shell's background job ignores it); the previous handlers afterwards."""
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, handler)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def interrupt(signum: int, frame: FrameType | None) -> None:
    """Stop at once (``project rebuild``: nothing is swapped)."""
    raise KeyboardInterrupt


class FollowStop:
    """SIGTERM / SIGINT while following (``tail --follow``).

    A signal that arrives while a page is being read only asks to stop: the
    loop ends once that page is printed, and the connection goes back to the
    pool clean. While sleeping between polls, or on a second signal, it
    stops at once (:class:`Stopped`).
    """

    def __init__(self) -> None:
        self.requested = False
        self.sleeping = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.sleeping or self.requested:
            raise Stopped
        self.requested = True

    def sleep(self, seconds: float) -> None:
        self.sleeping = True
        try:
            if not self.requested:
                time.sleep(seconds)
        finally:
            self.sleeping = False


class GracefulStop:
    """SIGTERM / SIGINT for the projection workers: the first asks to stop
    after the current batch (``event``); a second stops at once
    (KeyboardInterrupt; the batch's transaction rolls back, the checkpoint
    stays consistent).

    The event is set from a helper thread: a handler runs between two
    bytecodes of the main thread, which may hold the event's own lock."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signals = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals > 1:
            raise KeyboardInterrupt
        threading.Thread(target=self.event.set, daemon=True).start()
