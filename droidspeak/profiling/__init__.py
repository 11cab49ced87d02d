"""Profiling a pair offline: the cheapest recompute plan within a quality budget (DroidSpeak's profiler).

* :mod:`.search`: units of layers and which multi-group plans are worth measuring;
* :mod:`.profiler`: :class:`Profiler`, which measures candidates and returns a
  :class:`~droidspeak.sharing.profile.Profile`;
* :mod:`.writer`, :mod:`.plots`: a profile written to disk with its plots; a proven-exact profile.
"""

from .profiler import DEFAULT_BANDWIDTH_GBPS, DEFAULT_BUDGET, DEFAULT_GRANULARITY, Profiler
from .search import boundaries, plan_of_units, propose_multi
from .writer import exact_profile, write_profile

__all__ = ["DEFAULT_BANDWIDTH_GBPS", "DEFAULT_BUDGET", "DEFAULT_GRANULARITY", "Profiler", "boundaries",
           "exact_profile", "plan_of_units", "propose_multi", "write_profile"]
