"""What every benchmark script records: the command, the date, the machine; and how it writes."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The CPU's model name and the vector extensions that matter to torch on it (read, not assumed)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    ext = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(ext) or 'no AVX2'})"


def provenance(**machine_extra: Any) -> dict[str, Any]:
    import torch

    return {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(),
                        "cores": os.cpu_count(), "torch": torch.__version__} | machine_extra}


def write_result(path: str | Path, data: dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=1))
    print(f"wrote {p}")


ROOT = Path(__file__).resolve().parent.parent


def trained_with(name: str | None) -> dict[str, Any] | None:
    """What a shipped adapter in adapters/ was trained with (its droidspeak.json's recipe): steps,
    rank and the training contexts' token range; None when it is not shipped."""
    p = ROOT / "adapters" / str(name) / "droidspeak.json"
    if not name or not p.is_file():
        return None
    r = json.loads(p.read_text())["recipe"]
    return {"steps": r.get("steps"), "rank": r.get("rank"), "contexts": tuple(r.get("train_lengths") or ("?", "?"))}


def same_recipe(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two adapters saw the same data budget (steps and context lengths; the rank may differ by kind)."""
    return a is not None and b is not None and (a["steps"], a["contexts"]) == (b["steps"], b["contexts"])


def variant_kinds(names: list[str]) -> tuple[str | None, str | None, str | None]:
    """A task's standard LoRA, activated LoRA and top:20 LoRA among ``names`` (by the suffix
    ``droidspeak variants train`` gives each kind)."""
    alora = next((n for n in names if n.endswith("-alora")), None)
    top = next((n for n in names if n.endswith("-top20")), None)
    lora = next((n for n in names if not n.endswith(("-alora", "-top20"))), None)
    return lora, alora, top
