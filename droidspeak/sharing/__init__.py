"""Sharing: how a request reuses what another model (or itself) stored, safely.

* :mod:`.options`: :class:`ShareOptions` and the plan policies;
* :mod:`.profile`, :mod:`.index`: a pair's profile as a typed value (the one owner of the profile
  file's format) and where profiles are found;
* :mod:`.decide`: which stored prefix a request reuses, and with which plan;
* :mod:`.peers`: which E layers a capture must hold for the models that may read it;
* :mod:`.from_store`: a partial prefill over stored entries, E first while the K/V stream in;
* :mod:`.path`: :func:`prefill_steps`, the one prefill path of the CLI and the server.
"""

from .decide import Decision, PlanFloor, decide, decide_safely
from .index import ProfileIndex, profile_dirs
from .options import POLICIES, Policy, ShareOptions
from .path import capture_length, prefill_hit, prefill_miss, prefill_steps, serve_prefill
from .peers import capture_peers, needed_e_layers
from .profile import PROFILE_FORMAT, Candidate, CostModel, Profile, Quality

__all__ = ["Candidate", "CostModel", "Decision", "POLICIES", "PROFILE_FORMAT", "PlanFloor", "Policy", "Profile",
           "ProfileIndex", "Quality", "ShareOptions", "capture_length", "capture_peers", "decide", "decide_safely",
           "needed_e_layers", "prefill_hit", "prefill_miss", "prefill_steps", "profile_dirs", "serve_prefill"]
