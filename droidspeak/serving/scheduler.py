"""What runs next: the waiting queue, the one request being prefilled, and the decode groups.

Per engine step: one prefill step of the request at the head of the queue (a store hit is one
step; a miss runs in chunks, so a long prompt never holds the others for more than a chunk), then
one decode step of every group (running requests of one model, decoded together). Background work
(the quality guard's shadow checks) runs only in a step where nothing waits and nothing prefills.

The scheduler owns where every request is: it moves requests between the queue, the prefill slot
and the groups, and their :class:`~.request.Status` with them; the engine asks, never edits.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from .request import QueueFull, Request, Status


class DecodeGroup:
    """Running requests of one decode group (a base and its adapters, or one model of its own), decoded
    together from one left-padded cache, each row with its own adapter.

    NOTE: ``width`` is the number of cache columns in use; row ``i``'s own tokens are its last
    ``reqs[i].length`` columns (the rest, on the left, is padding the mask hides). The runner owns
    the cache fields; the membership changes only at a rebuild (:meth:`regroup`).
    """

    def __init__(self, key: str):
        self.key = key
        self.reqs: list[Request] = []
        self.pending: list[Request] = []  # prefilled, waiting to join at the next rebuild
        self.leaving: set[str] = set()  # ids of members that leave at the next rebuild
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

    def regroup(self, limit: int) -> tuple[list[Request], dict[str, int]]:
        """Drop the leaving members, let in pending ones up to ``limit`` in all; the new members, and
        the old members' rows by id (where their K/V sit in the old batch cache)."""
        old = {r.id: i for i, r in enumerate(self.reqs)}
        keep = [r for r in self.reqs if r.id not in self.leaving]
        admit = max(0, limit - len(keep))
        joining, self.pending = self.pending[:admit], self.pending[admit:]
        self.reqs, self.leaving = keep + joining, set()
        return self.reqs, old


@dataclass(slots=True)
class PrefillTurn:
    """What :meth:`Scheduler.next_prefill` hands the engine."""

    request: Request | None  # the request to run a prefill step of (None: nothing to prefill)
    starting: bool = False  # its first step: it has just left the queue
    skipped: list[Request] = field(default_factory=list)  # cancelled while queued: to finish as aborted


class Scheduler:
    """The queue and the groups; ``cond`` guards what other threads touch (waiting, stopping)."""

    def __init__(self, max_waiting: int):
        self.max_waiting = max_waiting
        self.waiting: deque[Request] = deque()
        self.prefilling: Request | None = None
        self._groups: dict[str, DecodeGroup] = {}
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
                "running": sum(g.size for g in self._groups.values())}

    # ------------------------------------------------------------------ the engine thread
    def running(self) -> bool:
        return any(g.reqs or g.pending for g in self._groups.values())

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

    def next_prefill(self) -> PrefillTurn:
        """The request to prefill: the one in progress, else the head of the queue (it moves to
        ``prefilling``); requests cancelled while queued are skipped and handed back."""
        if self.prefilling is not None:
            return PrefillTurn(self.prefilling)
        skipped: list[Request] = []
        with self.cond:
            while self.waiting:
                r = self.waiting.popleft()
                if r.cancelled:
                    skipped.append(r)
                    continue
                r.move_to(Status.PREFILLING)
                self.prefilling = r
                return PrefillTurn(r, True, skipped)
        return PrefillTurn(None, False, skipped)

    def prefill_ended(self, req: Request) -> None:
        """The prefill slot is free; a request still running joins its decode group (at the
        group's next rebuild), one that finished meanwhile goes nowhere."""
        assert req is self.prefilling
        self.prefilling = None
        if req.status == Status.PREFILLING:
            req.move_to(Status.DECODING)
            self._groups.setdefault(req.group, DecodeGroup(req.group)).pending.append(req)

    def decode_groups(self) -> list[DecodeGroup]:
        return list(self._groups.values())

    def leave(self, group: DecodeGroup, req: Request) -> None:
        """``req`` (finished or cancelled) leaves ``group`` at its next rebuild."""
        group.leaving.add(req.id)

    def idle(self) -> bool:
        """Nothing waits and nothing prefills: background work may run (never ahead of real work)."""
        return not self.waiting and self.prefilling is None

    def take_all_running(self) -> list[Request]:
        """After a failed step: every request prefilling or in a group, removed from the scheduler."""
        out = [self.prefilling] if self.prefilling is not None else []
        self.prefilling = None
        for g in self._groups.values():
            out += g.reqs + g.pending
        self._groups.clear()
        return out

    def drain(self) -> list[Request]:
        """On shutdown: every request still queued (to be finished as aborted)."""
        with self.cond:
            out = list(self.waiting)
            self.waiting.clear()
        return out
