"""Where droidspeak keeps files.

``DROIDSPEAK_HOME`` (default ``~/.cache/droidspeak``) holds converted models and generated data;
the repository's ``adapters/`` folder holds the shipped variants.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


def home() -> Path:
    """Root of droidspeak's cache (converted models, generated data)."""
    return Path(os.environ.get("DROIDSPEAK_HOME", Path.home() / ".cache" / "droidspeak")).expanduser()


def adapters_dir() -> Path:
    """Folder of the shipped LoRA adapters (``DROIDSPEAK_ADAPTERS`` overrides it)."""
    env = os.environ.get("DROIDSPEAK_ADAPTERS")
    return Path(env).expanduser() if env else REPO_DIR / "adapters"
