"""Exactness from the weights: how much of a receiver's context cache provably equals a producer's.

The family check (:mod:`droidspeak.models.family`) says whether two models *may* exchange caches at all;
this module says when an exchange is *exact*, i.e. the receiver would compute bit-identical K/V for
those layers itself, so no profile and no quality check are needed. It is a pure function over
:class:`WeightSummary` values (per-tensor digests and adapter configs, no model needed), so a
receiver can decide from what a store's manifest says about the weights that wrote an entry.

Three ways to be exact:

* **identical**: the same weights (a same-model prefix hit). Plan ``none``.
* **activated**: the receiver is an activated adapter (PEFT aLoRA, ``alora_invocation_tokens``)
  whose context cache, before its activation point, is its base's on every layer; the producer is
  that base (or another activated adapter of it, whose shared captures are its base's). Plan
  ``none``, valid only when the receiver's activation point (the last occurrence of its invocation
  sequence in the prompt) lies at or after the end of the reused prefix: checked per request.
* **frozen-bottom**: bit-identical embedding and decoder layers ``[0, K)`` (a LoRA restricted with
  ``layers_to_transform`` to layers >= K, or a fine-tune that froze its lower layers). The
  producer's E entering layer K is the receiver's own, so plan ``K:L`` is exact.

NOTE: exactness is judged on the weights that *produced* a cache. An activated adapter never
writes activated tokens into a shared capture, so its captures are produced by its base's weights
and carry the base's summary.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..kinds import ExactKind


@dataclass(frozen=True, slots=True)
class WeightSummary:
    """What the context cache of a model depends on, as digests."""

    identity: str  # the whole model's content identity
    embed: str  # digest of the token embedding
    layers: tuple[str, ...]  # digest of every decoder layer, in order
    context_identity: str = ""  # whose cache this model has for tokens before its activation (aLoRA: its base's)
    activation: tuple[int, ...] | None = None  # aLoRA invocation tokens

    def __post_init__(self) -> None:
        if not self.context_identity:
            object.__setattr__(self, "context_identity", self.identity)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def to_dict(self) -> dict:
        return {"identity": self.identity, "embed": self.embed, "layers": list(self.layers),
                "context_identity": self.context_identity,
                "activation": list(self.activation) if self.activation is not None else None}

    @classmethod
    def from_dict(cls, d: dict) -> "WeightSummary":
        act = d.get("activation")
        return cls(str(d["identity"]), str(d["embed"]), tuple(str(x) for x in d["layers"]),
                   str(d.get("context_identity") or d["identity"]), tuple(int(x) for x in act) if act else None)


@dataclass(frozen=True, slots=True)
class Exactness:
    """The answer of :func:`exactness`."""

    kind: ExactKind
    exact_layers: int  # layers [0, exact_layers) of the receiver's context cache equal the producer's
    plan: str | None  # the proven plan ("none", "K:L"), or None when nothing is proven
    reason: str
    needs_activation_after_context: bool = False  # activated: holds only when the receiver's activation
    #                                                point lies at or after the end of the reused prefix

    @property
    def exact(self) -> bool:
        return self.plan is not None

    def to_dict(self) -> dict:
        return {"kind": self.kind.value, "exact_layers": self.exact_layers, "plan": self.plan, "reason": self.reason,
                "needs_activation_after_context": self.needs_activation_after_context}


def exactness(producer: WeightSummary, receiver: WeightSummary) -> Exactness:
    """How much of ``receiver``'s context cache provably equals what ``producer``'s weights wrote.

    Pure and total: compares digests only, never raises. Assumes the two are of one family
    (:func:`droidspeak.family.compatibility` decides that first).
    """
    L = receiver.num_layers
    if producer.identity == receiver.identity:
        return Exactness(ExactKind.IDENTICAL, L, "none", "the same weights")
    if producer.identity == receiver.context_identity and receiver.activation is not None:
        return Exactness(ExactKind.ACTIVATED, L, "none",
                         "the receiver is an activated adapter of the producer's weights: before its invocation "
                         "its cache is theirs on every layer", needs_activation_after_context=True)
    if producer.num_layers != L:
        return Exactness(ExactKind.NONE, 0, None, f"layer counts differ ({producer.num_layers} vs {L})")
    if receiver.activation is not None:
        return Exactness(ExactKind.NONE, 0, None, "an activated adapter shares exactly only with its own base's caches")
    if producer.embed != receiver.embed:
        return Exactness(ExactKind.NONE, 0, None, "the token embeddings differ")
    k = 0
    while k < L and producer.layers[k] == receiver.layers[k]:
        k += 1
    if k == 0:
        return Exactness(ExactKind.NONE, 0, None, "layer 0 differs: no layer is provably shared")
    if k == L:  # every layer equal but another identity (e.g. a different lm_head): the context cache is the same
        return Exactness(ExactKind.FROZEN_BOTTOM, L, "none", "embedding and every decoder layer are bit-identical")
    return Exactness(ExactKind.FROZEN_BOTTOM, k, f"{k}:{L}",
                     f"embedding and layers 0-{k - 1} are bit-identical: the producer's E entering layer {k} is the "
                     f"receiver's own, so recomputing {k}:{L} is exact")


def activation_point(ids: list[int] | tuple[int, ...], invocation: tuple[int, ...] | None) -> int | None:
    """Where an activated adapter starts acting in ``ids``: the start of the last occurrence of its
    invocation sequence; None when the sequence does not occur (then PEFT applies it nowhere)."""
    if not invocation:
        return None
    n, m = len(ids), len(invocation)
    first = invocation[0]
    for i in range(n - m, -1, -1):
        if ids[i] == first and tuple(ids[i:i + m]) == tuple(invocation):
            return i
    return None


def exact_after(activation_at: int | None, prefix_tokens: int) -> bool:
    """An activated receiver may take ``prefix_tokens`` of its base's cache as its own exactly when
    its activation point is at or after them (or absent: then the adapter acts nowhere)."""
    return activation_at is None or activation_at >= prefix_tokens
