"""The receiver's prefill: its own full prefill, and DroidSpeak's partial prefill over a capture.

A partial prefill assembles the receiver's context cache from the sender's capture and a plan
(:func:`droidspeak.core.assemble.assemble`), writes it into a cache preallocated for the whole request
(:func:`finish_prefill`), then runs the receiver's own suffix through all of its layers on that
cache; decoding goes on in place. When the prompt is exactly the shared prefix, the context's last
token is left out of the cache and replayed through every layer to produce the first logits.

NOTE: with every layer recomputed, the result equals the receiver's own full prefill; with
sender == receiver and nothing recomputed, it equals it too. tests/test_partial.py checks both.
"""

from __future__ import annotations

import time

import torch

from ..errors import DroidspeakError
from ..kinds import ShareKind
from ..models.exact import activation_point
from ..models.family import require_compatible
from ..models.loaded import LoadedModel
from .assemble import Assembly, CaptureSource, assemble
from .capture import SenderCapture
from .plan import RecomputePlan
from .result import PrefillResult, ReuseInfo, Timings

DEFAULT_ROOM = 256  # tokens a prefill's cache keeps free for decoding unless told otherwise


@torch.inference_mode()
def finish_prefill(receiver: LoadedModel, assembly: Assembly, prompt_ids: list[int], room: int = DEFAULT_ROOM,
                   activation_at: int | None = None, cache: object | None = None,
                   record_e: dict[int, list[torch.Tensor]] | None = None) -> tuple[object, torch.Tensor, float]:
    """Write an assembled context into a cache preallocated for the prompt and ``room`` more tokens
    (or into ``cache``, a preallocated one reused: reset, then written in place, so its buffers keep
    their addresses for CUDA graphs), then run the rest of the prompt on it (``record_e``: the E
    entering these layers is appended, for the rest's tokens). Returns the cache, the last prompt
    token's logits ``[vocab]`` and the seconds the rest took."""
    surface = receiver.surface
    n = assembly.tokens
    rest = list(prompt_ids[n:])
    keep = n if rest else n - 1  # prompt == context: leave its last token out and replay it
    if not rest:
        rest = [prompt_ids[n - 1]]
    if cache is None:
        cache = surface.new_cache(len(prompt_ids) + room)
    else:
        cache.reset()
    for layer in range(receiver.num_layers):
        k, v = assembly.kv[layer]
        surface.write_kv(cache, layer, k[:, :, :keep], v[:, :, :keep])
    t = time.perf_counter()
    with surface.recording_inputs(record_e or {}, record_e if record_e is not None else {}):
        logits = surface.forward_tokens(torch.tensor([rest]), cache, activation_at)
    return cache, logits, time.perf_counter() - t


@torch.inference_mode()
def full_prefill(model: LoadedModel, prompt_ids: list[int], room: int = DEFAULT_ROOM) -> PrefillResult:
    """The model's own prefill of the whole prompt (the baseline DroidSpeak is measured against)."""
    surface = model.surface
    at = activation_point(prompt_ids, model.activation)
    cache = surface.new_cache(len(prompt_ids) + room)
    t0 = time.perf_counter()
    logits = surface.forward_tokens(torch.tensor([list(prompt_ids)]), cache, at)
    dt = time.perf_counter() - t0
    return PrefillResult(cache, logits, list(range(model.num_layers)), ReuseInfo(ShareKind.MISS),
                         Timings(prefill_s=dt, recompute_s=dt), at)


@torch.inference_mode()
def partial_prefill(receiver: LoadedModel, cap: SenderCapture, plan: RecomputePlan,
                    suffix_ids: list[int] | tuple[int, ...] = (), room: int = DEFAULT_ROOM,
                    kind: ShareKind = ShareKind.PROFILED, assemble_all: bool = False,
                    cache: object | None = None) -> PrefillResult:
    """Build the receiver's cache from the sender's capture and ``plan``, then run ``suffix_ids``.

    A plan that recomputes every layer reuses nothing: it is the receiver's own prefill of the
    whole prompt, run as one forward (``assemble_all`` forces the layer-by-layer assembly, which
    gives the same cache: the tests check both)."""
    require_compatible(cap.family, receiver.family, "the capture's model", receiver.name)
    if plan.num_layers != receiver.num_layers:
        raise DroidspeakError(f"plan is for {plan.num_layers} layers, receiver has {receiver.num_layers}")
    if plan.is_full_recompute() and not assemble_all and cap.num_tokens:
        res = full_prefill(receiver, list(cap.token_ids) + list(suffix_ids), room)
        res.info = ReuseInfo(kind, 0, cap.sender_identity, str(plan))
        return res
    missing = cap.missing(plan.reused_layers, plan.transition_layers)
    if missing:
        raise DroidspeakError(f"sender capture lacks {', '.join(missing[:4])}{'...' if len(missing) > 4 else ''}")
    if cap.num_tokens == 0:
        raise DroidspeakError("cannot reuse an empty context")
    bad = cap.shape_errors(plan.reused_layers, plan.transition_layers)
    if bad:  # never run on a cache that does not belong to these tokens
        raise DroidspeakError(f"sender capture is inconsistent: {bad[0]}")
    ids = list(cap.token_ids) + list(suffix_ids)
    at = activation_point(ids, receiver.activation)
    t0 = time.perf_counter()
    asm = assemble(receiver.surface, cap.token_ids, plan, CaptureSource(cap))
    cache, logits, suffix_s = finish_prefill(receiver, asm, ids, room, at, cache)
    info = ReuseInfo(kind, cap.num_tokens, cap.sender_identity, str(plan))
    return PrefillResult(cache, logits, asm.recomputed, info,
                         Timings(time.perf_counter() - t0, asm.compute_s, suffix_s), at)
