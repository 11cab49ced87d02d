"""Finding a pair's profile among the profile folders (``DROIDSPEAK_PROFILES`` and the repository's
``profiles/``), each file parsed once per version."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import PlanError
from ..paths import REPO_DIR
from .profile import Profile


def profile_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("DROIDSPEAK_PROFILES", "").split(os.pathsep) if p]
    return extra + [REPO_DIR / "profiles"]


@functools.lru_cache(maxsize=512)
def _parsed(path: str, _mtime_ns: int, _size: int) -> Profile | None:
    """A profile file, parsed once per version (keyed by mtime and size); None when unreadable."""
    try:
        return Profile.load(path)
    except PlanError:
        return None


class ProfileIndex:
    """The profiles in the profile folders, listed afresh on every lookup (a new or edited profile
    is seen at once) but parsed only when a file changes."""

    def __init__(self, dirs: list[Path] | None = None):
        self._dirs = dirs

    def all(self) -> Iterator[Profile]:
        for d in self._dirs if self._dirs is not None else profile_dirs():
            for p in sorted(d.glob("*.json")) if d.is_dir() else []:
                try:
                    st = p.stat()
                except OSError:
                    continue
                prof = _parsed(str(p), st.st_mtime_ns, st.st_size)
                if prof is not None:
                    yield prof

    def for_sender(self, family: str, sender_identity: str) -> Iterator[Profile]:
        return (p for p in self.all() if p.family == family and p.sender_identity == sender_identity)

    def find(self, family: str, sender_identity: str, receiver_identity: str) -> Profile | None:
        """A profile made for exactly these two sets of weights, else None."""
        return next((p for p in self.for_sender(family, sender_identity) if p.receiver_identity == receiver_identity),
                    None)
