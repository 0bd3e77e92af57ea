"""One projection rebuild in a process of its own, so its peak memory
(ru_maxrss) is the rebuild's: ``python -m bench.rebuild_child DSN [--decoded]``.

Prints one JSON line: events read, seconds of the rebuild pass (reading,
decoding and applying the log into the shadow tables, before the pause,
compare and swap), total seconds, and the peak resident set in MiB.
``--decoded`` reads payloads decoded into dicts and converts them (the
path before raw reads), for a before/after in one run.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

from eventstore import EventStore, Settings
from projections.rebuild import rebuild
from trading import trading_registry


def main(argv: list[str]) -> int:
    dsn = argv[0]
    decoded = "--decoded" in argv
    marks: dict[str, float] = {}

    def progress(phase: str, done: int, total: int) -> None:
        marks.setdefault(phase, time.perf_counter())
        if phase == "rebuild":
            marks["rebuild_done"] = done

    with EventStore.open(dsn, Settings(), registry=trading_registry()) as store:
        if decoded:
            original = store.read_all

            def read_all(**kwargs: Any) -> Any:
                kwargs.pop("raw", None)
                return original(**kwargs)

            store.read_all = read_all  # type: ignore[method-assign]
        started = time.perf_counter()
        report = rebuild(store, dsn, progress=progress, batch_size=1000)
    pass_seconds = marks.get("pause", time.perf_counter()) - marks.get("rebuild", started)
    print(
        json.dumps(
            {
                "events": int(marks.get("rebuild_done", report.events)),
                "seconds": pass_seconds,
                "total_seconds": report.seconds,
                "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "ok": report.ok or report.swapped,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
