"""Which E layers a capture must hold: what the plans of the models that may read it need.

A capture's readers are its *peers*: every registered model of its base (the shipped variants,
wherever the capture is written: the CLI, the demo or a server) and, on a server, every hosted
model besides. The E a capture stores is the union of the transitions of every plan its profiles
may pick and the first layer above a frozen bottom it shares exactly with a peer; so which E layers
get stored never depends on who wrote the entry.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..core.plan import RecomputePlan
from ..errors import DroidspeakError
from ..kinds import ModelKind
from ..models.exact import WeightSummary, exactness
from ..models.loaded import LoadedModel
from ..models.loading import shipped_adapter_summaries
from .index import ProfileIndex


def capture_peers(model: LoadedModel, hosted: Iterable[WeightSummary] = ()) -> list[WeightSummary]:
    """Weight summaries of the models that may read ``model``'s captures: its base and the registered
    adapters made for it (when ``model`` is a shipped base or an adapter), and ``hosted`` (a server's
    models); never ``model`` itself."""
    base = model.base if model.base is not None else model.weights if model.kind == ModelKind.BASE else None
    out = {} if base is None else {s.identity: s for s in shipped_adapter_summaries(base)} | {base.identity: base}
    out.update((s.identity, s) for s in hosted)
    out.pop(model.identity, None)
    return list(out.values())


def needed_e_layers(model: LoadedModel, peers: Iterable[WeightSummary] = (),
                    profiles: ProfileIndex | None = None) -> list[int]:
    """E layers other models need from ``model``'s captures: the transitions of every plan its
    profiles may pick, and the first layer above a frozen bottom it shares with a peer."""
    producer = model.capture_weights
    assert producer is not None
    out: set[int] = set()
    for prof in (profiles or ProfileIndex()).for_sender(model.family.digest, producer.identity):
        try:
            out |= prof.transition_layers(model.num_layers)
        except DroidspeakError:
            continue
    for peer in peers:
        ex = exactness(producer, peer)
        if ex.plan:
            out |= set(RecomputePlan.parse(ex.plan, model.num_layers).transition_layers)
    return sorted(out)
