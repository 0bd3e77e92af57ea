"""Wake-up hints for live readers, sent after appends commit.

NOTIFY inside an append transaction would take a cluster-wide lock at
commit and serialise every committing writer (docs/design.md §4). Instead the
store pokes this notifier after an append returns; a background thread
sends one ``pg_notify`` for any number of appends within ``min_interval``.
Correctness never depends on it: readers poll anyway, and a lost
notification costs only latency.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Final

__all__ = ["DEFAULT_CHANNEL", "Notifier"]

DEFAULT_CHANNEL: Final = "utcp_events"
log = logging.getLogger("eventstore")


class Notifier:
    """Debounced NOTIFY on ``channel`` through ``send`` (called off-thread)."""

    def __init__(self, send: Callable[[], None], *, min_interval: float = 0.02) -> None:
        self._send = send
        self._min_interval = min_interval
        self._pending = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="eventstore-notify", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Something was appended (cheap: sets a flag, once per wake-up)."""
        if not self._pending.is_set():
            self._pending.set()

    def close(self) -> None:
        """Stop the thread; an append it has not announced yet is announced
        now (a short-lived process, `eventstore append`, would lose it)."""
        unsent = self._pending.is_set()
        self._closed.set()
        self._pending.set()
        self._thread.join(timeout=5)
        if unsent:
            self._send_quietly()

    def _send_quietly(self) -> None:
        try:
            self._send()
        except Exception as exc:  # a hint only: readers poll anyway
            log.warning("could not send the wake-up notification: %s", exc)

    def _loop(self) -> None:
        while True:
            self._pending.wait()
            if self._closed.is_set():
                return
            self._pending.clear()
            self._send_quietly()
            self._closed.wait(self._min_interval)
