"""The process environment droidspeak runs in: the one place that sets it.

:func:`configure` is called once, first thing, by the command line (``droidspeak ...``); a library
user may call it too. It keeps everything offline (``HF_HUB_OFFLINE``; loaders also pass
``local_files_only``), keeps tokenizers single-threaded per process and transformers quiet.
Importing droidspeak sets nothing.
"""

from __future__ import annotations

import os

DEFAULTS = {
    "HF_HUB_OFFLINE": "1",  # every model is read from a local folder; no hub is ever contacted
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def configure() -> None:
    """Set the environment defaults above (a value already set wins) and quiet transformers' warnings."""
    for k, v in DEFAULTS.items():
        os.environ.setdefault(k, v)


def quiet() -> None:
    """Silence library warnings and progress bars (a command's own output and one-line errors stay)."""
    import warnings

    warnings.filterwarnings("ignore")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass
