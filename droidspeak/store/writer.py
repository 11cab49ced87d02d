"""The background writer: a node's contexts go to the disk and Redis tiers off the request's critical path.

A bounded queue of contexts (their tensors, by reference: a miss's K/V are views of the request's own
cache, whose first tokens never change) and one thread that encodes and writes them, entries first
and the index last, so a reader never finds a half-written context. A full queue drops the write
(counted), never the request; a failing write is logged and leaves nothing indexed.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("droidspeak.store")


class Writer:
    def __init__(self, write: Callable[[Any], int], capacity: int):
        self._write = write
        self._q: queue.Queue = queue.Queue(maxsize=capacity)
        self.dropped = self.failed = self.written = 0
        self._thread = threading.Thread(target=self._run, name="droidspeak-writer", daemon=True)
        self._thread.start()

    def submit(self, job: Any) -> bool:
        """Queue a write; False (and nothing queued) when the queue is full."""
        try:
            self._q.put_nowait(job)
            return True
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("store writer behind: %d write(s) dropped so far (the requests were served)", self.dropped)
            return False

    def _run(self) -> None:
        while True:
            job = self._q.get()
            try:
                if self._write(job):
                    self.written += 1
                else:
                    self.failed += 1
            except Exception as e:  # noqa: BLE001 - a failed write is a miss for a later reader, never a crash
                self.failed += 1
                log.warning("store write failed: %s", e)
            finally:
                del job
                self._q.task_done()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued is written or dropped (True), or ``timeout`` passes (False)."""
        done = threading.Event()

        def wait() -> None:
            self._q.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout)
