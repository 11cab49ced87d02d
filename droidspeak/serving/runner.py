"""Running model code for the engine: a prefill step, a batched decode step, sampling.

Prefill goes through the one sharing path (:func:`droidspeak.sharing.path.prefill_steps`), so the
server and the CLI decide and assemble caches the same way. Decode batches the running requests
of one decode group (a base and all its adapters: each row runs as its own adapter): their caches
are stacked left-padded into one cache with room to decode into
(:meth:`droidspeak.models.surface.ModelSurface.stack`), rebuilt only when a request joins or leaves or the
room runs out. A model with sliding-window layers decodes each request from its own cache.
"""

from __future__ import annotations

import torch

from ..core.result import PrefillResult
from ..sharing.decide import PlanFloor
from ..sharing.path import prefill_steps
from ..store.cache import CacheStore
from .config import Settings
from .host import Hosted, ModelHost
from .request import Request
from .scheduler import DecodeGroup


class ModelRunner:
    def __init__(self, host: ModelHost, store: CacheStore | None, settings: Settings, guard: PlanFloor | None = None):
        self.host, self.store, self.settings = host, store, settings
        self.guard = guard

    # ------------------------------------------------------------------ prefill
    def start_prefill(self, r: Request, waiting: int) -> None:
        opts = self.settings.share_options(waiting, room=r.max_tokens + 1)
        r.steps = prefill_steps(self.host.get(r.model).loaded, self.store, r.prompt, opts, hosted=self.host.weights(),
                                guard=self.guard)

    def warm_up(self, tokens: int) -> None:
        """Before the first request: one model of each decode group prefills a throwaway prompt of ``tokens``
        tokens the way a miss does (in chunks, its context captured into a throwaway in-process store, then
        dropped). The first long prefill of a process pays one-time costs (on 2K tokens here, a server's
        first miss ran over a second slower than its next ones); they land here, before /health says ok."""
        if tokens <= 0:
            return
        from ..core.prompt import PromptTokens
        from ..sharing.path import serve_prefill
        from ..store.node import open_store

        groups: dict[str, Hosted] = {}
        for name, h in self.host.models.items():  # the group's base where it is served, else its first member
            key = self.host.group_of(name)
            if key not in groups or h.adapter is None and groups[key].adapter is not None:
                groups[key] = h
        for h in groups.values():
            m = h.loaded
            limit = getattr(getattr(m.model, "config", None), "max_position_embeddings", None) or tokens + 2
            n = max(2, min(tokens, self.settings.max_model_len, limit) - 2)
            vocab = max(16, m.family.vocab_size - 8)
            ids = [8 + (i * 31) % vocab for i in range(n)]
            serve_prefill(m, open_store("memory:1GB"), PromptTokens(tuple(ids[:-1]), (ids[-1],)),
                          self.settings.share_options(0, room=2), hosted=self.host.weights())

    def prefill_step(self, r: Request) -> PrefillResult | None:
        """Advance ``r``'s prefill by one step; its result when it ends, else None."""
        try:
            next(r.steps)
            return None  # more chunks to go
        except StopIteration as done:
            r.steps = None
            return done.value

    # ------------------------------------------------------------------ decode
    def decode(self, g: DecodeGroup) -> list[tuple[Request, torch.Tensor]]:
        """One decode step for every running request of the group, in one forward whatever adapter
        each runs as: ``(request, logits)`` pairs."""
        surface = self.host.group_surface(g.key)
        if g.needs_rebuild(self.settings.max_batch):
            self._rebuild(g, surface)
        if not g.reqs:
            return []
        with torch.inference_mode():
            if len(g.reqs) == 1 and g.cache is None:  # one request: its own cache, no padding
                r = g.reqs[0]
                own = self.host.get(r.model).loaded.surface
                logits = own.forward(torch.tensor([[r.out[-1]]]), r.cache, 1, r.activation_at)
                out = [(r, logits[-1])]
            else:
                hosted = [self.host.get(r.model) for r in g.reqs]
                activated = [h.loaded.activation is not None for h in hosted]
                # an activated adapter acts on the new token when its invocation occurred
                offsets = ([int(a and r.activation_at is not None) for a, r in zip(activated, g.reqs)]
                           if any(activated) else None)
                ids = torch.tensor([[r.out[-1]] for r in g.reqs])
                pos = torch.tensor([[r.length] for r in g.reqs])
                mask = torch.cat([g.mask, torch.ones(len(g.reqs), 1, dtype=torch.long)], dim=1)
                logits = surface.decode_step(ids, pos, mask, g.cache, [h.adapter for h in hosted], offsets)
                g.mask, g.width, g.room = mask, g.width + 1, g.room - 1
                out = list(zip(g.reqs, logits))
        for r in g.reqs:
            r.length += 1
        return out

    def _rebuild(self, g: DecodeGroup, surface) -> None:
        """Drop the leaving requests, let in pending ones (up to ``max_batch``), and restack.

        A group of one decodes from the request's own cache (no padding, no copy); a group of
        several from one left-padded batch cache with room for the longest remaining request."""
        was_batched = g.cache is not None
        limit = 1 if "sliding_attention" in surface.layer_kinds else self.settings.max_batch
        members, old = g.regroup(limit)

        def kv_of(r: Request):
            if r.cache is not None:  # alone or just prefilled: its own cache
                return surface.request_kv(r.cache)
            return surface.unstack(g.cache, old[r.id], r.length, g.width)

        if len(members) >= 2:
            parts = [kv_of(r) for r in members]
            room = max(self._left(r) for r in members) + 1
            g.cache, g.mask = surface.stack(parts, [r.length for r in members], room)
            g.width, g.room = max(r.length for r in members), room
            for r in members:
                r.cache = None
        elif members:
            r = members[0]
            if r.cache is None and was_batched:  # it leaves a batch: back to a cache of its own
                kv = dict(enumerate(kv_of(r)))
                r.cache = surface.cache_from(kv, max_tokens=r.length + self._left(r) + 1)
            g.cache, g.mask, g.width, g.room = None, None, r.length, self._left(r) + 1
        else:
            g.cache, g.mask, g.width, g.room = None, None, 0, 0

    def _left(self, r: Request) -> int:
        """Tokens ``r`` may still generate."""
        return max(0, min(r.max_tokens - len(r.out), self.settings.max_model_len - r.length))

    # ------------------------------------------------------------------ sampling
    @staticmethod
    def sample(r: Request, logits: torch.Tensor) -> int:
        """The next token of ``r``: under its grammar if it has one (disallowed tokens at -inf before
        temperature and top-p), with its log-probability noted when the client asked for them."""
        if r.constraint is not None:
            logits = r.constraint.mask(logits)
        tok = _draw(r, logits)
        if r.logprobs is not None:
            r.sampled_logprob = _logprob(logits, tok, r.logprobs)
        if r.constraint is not None:
            r.constraint.advance(tok)
        return tok


def _draw(r: Request, logits: torch.Tensor) -> int:
    if r.temperature < 1e-4:  # greedy (also for temperatures so small that they overflow)
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.double() / r.temperature, dim=-1)
    if not torch.isfinite(probs).all() or probs.sum() <= 0:
        return int(torch.argmax(logits))
    if r.top_p < 1.0:
        sp, si = torch.sort(probs, descending=True)
        keep = torch.cumsum(sp, 0) - sp < r.top_p
        probs = torch.zeros_like(probs).scatter(0, si[keep], sp[keep])
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=r.rng))


def _logprob(logits: torch.Tensor, tok: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The chosen token's log-probability and the ``top`` most likely tokens', from the model's
    distribution at temperature 1 (after a grammar's mask, as vLLM reports processed logprobs)."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    alts: list[tuple[int, float]] = []
    if top:
        vals, idx = torch.topk(lp, top)
        alts = [(int(i), float(v)) for i, v in zip(idx, vals) if torch.isfinite(v)]
    chosen = float(lp[tok])
    return (chosen if chosen > -9999.0 else -9999.0), alts  # JSON has no -inf; OpenAI writes -9999.0
