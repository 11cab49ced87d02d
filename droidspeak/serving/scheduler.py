"""What runs next: the waiting queue, the one request being prefilled, and the decode groups.

Per engine step: one prefill step of the request at the head of the queue (a store hit is one
step; a miss runs in chunks, so a long prompt never holds the others for more than a chunk), then
one decode step of every group (running requests of one model, decoded together). Background work
(the quality guard's shadow checks) runs only in a step where nothing waits and nothing prefills.
"""

from __future__ import annotations

import threading
from collections import deque

from .request import QueueFull, Request


class DecodeGroup:
    """Running requests of one model, decoded together from one left-padded cache.

    NOTE: ``width`` is the number of cache columns in use; row ``i``'s own tokens are its last
    ``reqs[i].length`` columns (the rest, on the left, is padding the mask hides).
    """

    def __init__(self, model: str):
        self.model = model
        self.reqs: list[Request] = []
        self.pending: list[Request] = []  # prefilled, waiting to join at the next rebuild
        self.leaving: set[str] = set()
        self.cache = None
        self.mask = None  # [B, width]
        self.width = 0
        self.room = 0  # free columns left in the batch cache

    @property
    def size(self) -> int:
        return len(self.reqs) + len(self.pending)

    def needs_rebuild(self, max_batch: int) -> bool:
        running = len(self.reqs) - len(self.leaving)
        return bool(self.leaving) or (bool(self.pending) and running < max_batch) or (bool(self.reqs) and self.room < 1)


class Scheduler:
    """The queue and the groups; ``cond`` guards what other threads touch (waiting, stopping)."""

    def __init__(self, max_waiting: int):
        self.max_waiting = max_waiting
        self.waiting: deque[Request] = deque()
        self.prefilling: Request | None = None
        self.groups: dict[str, DecodeGroup] = {}
        self.cond = threading.Condition()
        self.stopping = False

    # ------------------------------------------------------------------ other threads
    def add(self, req: Request) -> None:
        with self.cond:
            if self.stopping:
                raise QueueFull("server is shutting down")
            if len(self.waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self.waiting)} requests already waiting")
            self.waiting.append(req)
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def load(self) -> dict[str, int]:
        return {"waiting": len(self.waiting) + (self.prefilling is not None),
                "running": sum(g.size for g in self.groups.values())}

    # ------------------------------------------------------------------ the engine thread
    def running(self) -> bool:
        return any(g.reqs or g.pending for g in self.groups.values())

    def busy(self) -> bool:
        """Real work to do: a request waiting, prefilling or decoding."""
        return bool(self.waiting) or self.prefilling is not None or self.running()

    def wait_for_work(self, timeout: float, background: bool = False) -> bool:
        """Block until there is work (or background work is pending); False when the engine should stop."""
        with self.cond:
            while not self.busy() and not background:
                if self.stopping:
                    return False
                self.cond.wait(timeout)
            return not (self.stopping and not self.busy())

    def next_prefill(self) -> tuple[Request | None, list[Request]]:
        """The request to prefill (the one in progress, else the head of the queue), and the
        cancelled requests skipped on the way (to be finished as aborted)."""
        skipped: list[Request] = []
        if self.prefilling is None:
            with self.cond:
                while self.waiting:
                    r = self.waiting.popleft()
                    if r.cancelled:
                        skipped.append(r)
                        continue
                    self.prefilling = r
                    break
        return self.prefilling, skipped

    def prefill_done(self) -> None:
        self.prefilling = None

    def join(self, req: Request) -> None:
        """A prefilled request waits to join its model's decode group."""
        self.groups.setdefault(req.model, DecodeGroup(req.model)).pending.append(req)

    def idle(self) -> bool:
        """Nothing waits and nothing prefills: background work may run (never ahead of real work)."""
        return not self.waiting and self.prefilling is None

    def drain(self) -> list[Request]:
        """On shutdown: every request still queued (to be finished as aborted)."""
        with self.cond:
            out = list(self.waiting)
            self.waiting.clear()
        return out
