"""What a model is to droidspeak: its layout, its family, its identity, and how it is loaded.

* :mod:`.surface`: the only place that knows how a transformers model is laid out;
* :mod:`.family`: who may share caches at all (one pure function over family fingerprints);
* :mod:`.identity`, :mod:`.exact`: content identities, per-layer digests, and how exactly two
  models' context caches agree (one pure function over weight summaries);
* :mod:`.registry`, :mod:`.gguf`, :mod:`.loading`, :mod:`.loaded`: which models exist, and the one
  factory that loads them as :class:`LoadedModel`.
"""

from .loaded import LoadedModel
from .loading import (
                      adapter_summary,
                      attach_adapters,
                      check_adapter_base,
                      load_model,
                      shipped_adapter_summaries,
                      summarize_adapter,
)
from .registry import BASE_ALIASES, BASE_NAME, BASES, ModelSpec, registry, resolve, shipped_variants

__all__ = ["BASES", "BASE_ALIASES", "BASE_NAME", "LoadedModel", "ModelSpec", "adapter_summary", "attach_adapters",
           "check_adapter_base", "load_model", "registry", "resolve", "shipped_adapter_summaries", "shipped_variants",
           "summarize_adapter"]
