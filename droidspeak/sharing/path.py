"""Where sharing happens: one entry point that serves a request's prefill, for the CLI and the server.

:func:`prefill_steps` is the only way a request's prefill is served. It looks up the longest stored
prefix of the prompt among every producer of the receiver's family (:func:`~.decide.decide`) and
uses it in one of three ways:

* **same model**: the receiver's own weights wrote it: every layer is reused;
* **exact** (:mod:`droidspeak.models.exact`): another model's weights that provably give the receiver's
  own cache (an activated adapter and its base; a frozen-bottom fine-tune with plan ``K:L``): the
  proven plan, no profile, no quality check;
* **profiled**: another model through the pair's profile (refused unless it was made for exactly
  those weights), with the plan chosen by policy (the profile's own, the lowest predicted TTFT
  over the link, or the paper's load rule).

With nothing usable the receiver prefills the prompt itself, in chunks between which the server
decodes other requests, and stores its K/V (and the E its peers' plans need) for the others. Every
fault on the way (a bad profile, a damaged entry, a store going away) falls back to computing.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable

import torch

from ..core.assemble import CaptureSource, assemble
from ..core.capture import capture_steps, run_to_end
from ..core.plan import RecomputePlan
from ..core.prefill import finish_prefill, full_prefill
from ..core.prompt import PromptTokens
from ..core.result import PrefillResult, ReuseInfo, Timings
from ..kinds import ShareKind
from ..models.exact import WeightSummary, activation_point
from ..models.loaded import LoadedModel
from ..store.cache import CacheStore
from .decide import Decision, PlanFloor, decide_safely
from .from_store import prefill_from_store
from .index import ProfileIndex
from .options import ShareOptions
from .peers import capture_peers, needed_e_layers


def capture_length(receiver: LoadedModel, ids: list[int], block: int) -> int:
    """Tokens of a miss to prefill as a capture (stored for others when there is a store): the
    block-aligned part of the prompt but its last token, and for an activated adapter no further
    than its activation point (a capture is always its base's cache); the rest runs on top."""
    n = (len(ids) - 1) // block * block
    if receiver.activation is not None:
        at = activation_point(ids, receiver.activation)
        if at is not None:
            n = min(n, at // block * block)
    return n


def prefill_hit(receiver: LoadedModel, store: CacheStore, d: Decision, prompt: PromptTokens,
                opts: ShareOptions = ShareOptions(), hosted: Iterable[WeightSummary] = (),
                profiles: ProfileIndex | None = None) -> PrefillResult:
    """The receiver's prefill reusing the decision's stored prefix with its plan. When the receiver's own
    tokens before its activation point are the producer's very cache (the same model, or an activated
    adapter of the producer: every layer reused), the stored prefix is extended by them, so the next turn
    of a conversation finds everything up to its own."""
    assert d.hit is not None
    extend = None
    if d.plan.is_full_reuse() and receiver.capture_weights.identity == d.hit.sender:
        n = capture_length(receiver, prompt.ids, store.block)
        if n > d.hit.tokens:
            extend = (n, needed_e_layers(receiver, capture_peers(receiver, hosted), profiles))
    res = prefill_from_store(receiver, store, d.hit, d.plan, prompt, room=opts.room, kind=d.kind, extend=extend)
    res.info.reason = d.reason
    res.info.profile = d.profile.name if d.profile else None
    res.info.source = d.profile
    store.stats.bump(f"{d.kind.value}_hits")
    return res


def prefill_miss(receiver: LoadedModel, store: CacheStore | None, prompt: PromptTokens, opts: ShareOptions,
                 hosted: Iterable[WeightSummary] = (), profiles: ProfileIndex | None = None,
                 reason: str = "no usable stored prefix", refused: tuple[str, ...] = ()
                 ) -> Generator[int, None, PrefillResult]:
    """The receiver's own prefill as one pass that both answers and is stored: the whole prompt runs in
    chunks on the request's own cache (recording the E its peers need: :mod:`.peers`), the request's own
    tokens in the last chunk, then the stored part of that very cache (its first ``n`` tokens, all before
    an activated adapter acts) goes to the store (one copy into the in-process tier; the byte tiers from
    the writer). The same model with nothing recomputed is exactly its own prefill."""
    ids = prompt.ids
    n = capture_length(receiver, ids, store.block if store is not None else 1)
    if n <= 0:  # nothing worth capturing: the model's own prefill in one step
        res = full_prefill(receiver, ids, opts.room)
        res.info.reason, res.info.missing = reason, refused
        return res
    surface = receiver.surface
    cache = surface.new_cache(len(ids) + opts.room)
    e_layers = needed_e_layers(receiver, capture_peers(receiver, hosted), profiles) if store is not None else []
    if getattr(cache, "kv_buffer", None) is None:  # sliding-window layers keep only their window: capture apart
        return (yield from _miss_with_capture(receiver, store, prompt, opts, n, e_layers, reason, refused))
    at = activation_point(ids, receiver.activation)  # an activated adapter acts from here: the first n are its base's
    parts: dict[int, list[torch.Tensor]] = {}
    step = opts.chunk or len(ids)
    t0 = time.perf_counter()
    for i in range(0, len(ids), step):  # chunks need not end at n: a token's K/V and E do not depend on them
        # E of this request's chunks only, and none of a chunk wholly past the stored part
        with torch.inference_mode(), surface.recording_inputs(e_layers if i < n else (), parts):
            logits = surface.forward_tokens(torch.tensor([ids[i:i + step]]), cache, at)
        if i + step < len(ids):
            yield i + step
    info = ReuseInfo(ShareKind.MISS, reason=reason, missing=refused)
    if store is not None:
        e = {layer: torch.cat(p, dim=1) if len(p) > 1 else p[0] for layer, p in parts.items() if p}  # >= n tokens
        info.stored_tokens = store.put_context(receiver.family, receiver.capture_weights, ids[:n], receiver.num_layers,
                                               lambda layer: (cache.layers[layer]._k[:, :, :n],
                                                              cache.layers[layer]._v[:, :, :n]), e)
        end = _context_end(prompt, at)
        lo = end // store.block * store.block
        if 0 < lo < end and lo <= info.stored_tokens:  # the context's partial last block too, in the in-process tier
            tail = store.put_tail(receiver.family, receiver.capture_weights, ids[:end], receiver.num_layers,
                                  lambda layer: (cache.layers[layer]._k[:, :, lo:end], cache.layers[layer]._v[:, :, lo:end]),
                                  {layer: t[:, lo:end] for layer, t in e.items() if t.shape[1] >= end})
            info.stored_tokens = max(info.stored_tokens, tail)
    t = time.perf_counter() - t0
    return PrefillResult(cache, logits, list(range(receiver.num_layers)), info, Timings(t, t), at)


def _context_end(prompt: PromptTokens, at: int | None) -> int:
    """Where the shared context of a prompt ends (its prefix: every turn but the last), and for an activated
    adapter no further than its activation point (a stored context is always its base's cache)."""
    end = min(len(prompt.prefix), len(prompt.ids) - 1)
    return min(end, at) if at is not None else end


def _miss_with_capture(receiver: LoadedModel, store: CacheStore | None, prompt: PromptTokens, opts: ShareOptions,
                       n: int, e_layers: list[int], reason: str, refused: tuple[str, ...]
                       ) -> Generator[int, None, PrefillResult]:
    """A miss of a model whose cache keeps only a window on some layers: the first ``n`` tokens are
    captured on a cache that keeps every token (what the store holds), then assembled into its own."""
    ids = prompt.ids
    t0 = time.perf_counter()
    cap = yield from capture_steps(receiver, ids[:n], e_layers=e_layers, chunk=opts.chunk)
    t_capture = time.perf_counter() - t0
    at = activation_point(ids, receiver.activation)
    asm = assemble(receiver.surface, ids[:n], RecomputePlan.none(receiver.num_layers), CaptureSource(cap))
    cache, logits, suffix_s = finish_prefill(receiver, asm, ids, opts.room, at)
    info = ReuseInfo(ShareKind.MISS, reason=reason, missing=refused)
    if store is not None:
        info.stored_tokens = store.put(cap)
    return PrefillResult(cache, logits, list(range(receiver.num_layers)), info,
                         Timings(time.perf_counter() - t0, t_capture, suffix_s), at)


def prefill_steps(receiver: LoadedModel, store: CacheStore | None, prompt: PromptTokens,
                  opts: ShareOptions = ShareOptions(), hosted: Iterable[WeightSummary] = (),
                  profiles: ProfileIndex | None = None,
                  guard: PlanFloor | None = None) -> Generator[int, None, PrefillResult]:
    """Serve one request's prefill, sharing through ``store`` where it safely can: a generator that
    yields between prefill chunks and returns the :class:`PrefillResult` (the one path for the CLI
    and the server). ``hosted``: the other models served beside the receiver (a server's), whose
    plans a miss's capture serves besides the registered ones'."""
    reason, refused = "no store", ()
    if store is not None:
        d = decide_safely(receiver, store, prompt, opts, profiles, guard)
        if d.hit is not None:
            return prefill_hit(receiver, store, d, prompt, opts, hosted, profiles)
        reason, refused = d.reason, d.refused
    return (yield from prefill_miss(receiver, store if opts.store_on_miss else None, prompt, opts, hosted, profiles,
                                    reason, refused))


def serve_prefill(receiver: LoadedModel, store: CacheStore | None, prompt: PromptTokens,
                  opts: ShareOptions = ShareOptions(), **kw) -> PrefillResult:
    """:func:`prefill_steps` run to its end (for callers that do not interleave other work)."""
    return run_to_end(prefill_steps(receiver, store, prompt, opts, **kw))
