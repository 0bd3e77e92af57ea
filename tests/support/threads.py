"""Running a test's concurrent callers."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import IO


def run_threads(count: int, target: Callable[[int], None]) -> None:
    """Run ``target(i)`` in ``count`` threads; re-raise the first failure."""
    errors: list[BaseException] = []

    def wrapped(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive(), "a thread hung"
    if errors:
        raise errors[0]


def line_queue(pipe: IO[str] | None) -> queue.Queue[str]:
    """The lines of ``pipe`` (a subprocess's output) as they come, read by a
    daemon thread, for ``get(timeout=…)``: a bounded wait for each line."""
    assert pipe is not None
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in pipe:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines
