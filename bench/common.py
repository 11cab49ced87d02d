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


def trained_with(name: str | None, result: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """How an adapter was trained: its kind, steps, rank, requests per context and the training contexts' token
    range. From the evaluation ``result``'s own record where it has one (``variants eval`` writes it), else from
    the shipped adapter's droidspeak.json in adapters/; None when neither knows it."""
    from droidspeak.training.variants import record_of

    if not name:
        return None
    rec = ((result or {}).get("trained") or {}).get(name)
    p = ROOT / "adapters" / name / "droidspeak.json"
    if not rec and p.is_file():
        rec = record_of(json.loads(p.read_text()))
    return rec | {"contexts": tuple(rec.get("contexts") or ("?", "?"))} if rec else None


def recipe_words(t: dict[str, Any] | None) -> str:
    """How an adapter was trained, in words: steps, requests per context (when recorded), context lengths."""
    if not t:
        return "unknown"
    q, lr = t.get("questions"), _lr(t)
    return (f"{t['steps']} steps" + (f", {q} request{'s' * (q != 1)} per context" if q else "")
            + f", contexts of {t['contexts'][0]}-{t['contexts'][1]} tokens"
            + (f", learning rate {lr:g}" if lr != _lr({}) else ""))


def _lr(t: dict[str, Any]) -> float:
    """An adapter's learning rate; evaluations recorded before ``--lr`` existed trained at the recipes' default."""
    from droidspeak.training.variants import Recipe

    return float(t.get("lr") or Recipe.__dataclass_fields__["lr"].default)


def same_recipe(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two adapters saw the same data budget (steps, requests per context and context lengths) at the same
    learning rate; the rank may differ by kind."""
    key = lambda t: (t["steps"], t.get("questions"), t["contexts"], _lr(t))  # noqa: E731
    return a is not None and b is not None and key(a) == key(b)


def _kind(name: str, result: dict[str, Any] | None) -> str:
    """An adapter's kind (lora, alora, top:K) from how it was trained, else from the suffix that
    ``droidspeak variants train`` gives each kind."""
    own = trained_with(name, result)
    if own:
        return own["adapter"]
    return "alora" if name.endswith("-alora") else "top:20" if name.endswith("-top20") else "lora"


def variant_kinds(names: list[str], result: dict[str, Any] | None = None) -> tuple[str | None, str | None, str | None]:
    """A task's standard LoRA, activated LoRA and top:20 LoRA among ``names``: of each kind, the one named as
    ``droidspeak variants train`` names it (``NAME``, ``NAME-alora``, ``NAME-top20``), else the first; of
    several standard LoRAs, the one trained with the activated one's data budget (like for like)."""
    def pick(kind: str, suffix: str) -> str | None:
        of_kind = [n for n in names if _kind(n, result) == kind]
        return next((n for n in of_kind if n.endswith(suffix)), of_kind[0] if of_kind else None)

    alora, top = pick("alora", "-alora"), pick("top:20", "-top20")
    loras = [n for n in names if _kind(n, result) == "lora"]
    ref = trained_with(alora or top, result)
    lora = next((n for n in loras if same_recipe(trained_with(n, result), ref)), loras[0] if loras else None)
    return lora, alora, top


def binder_document(tokenizer, tokens: int, seed: int) -> tuple[str, dict]:
    """The fleet benchmarks' workload: one long document of held-out rows (a staff registry, an order log and,
    last, a Python file), and one request per task (qa, toolcall, code) about it."""
    from droidspeak import tasks

    qa = tasks.generate("qa", "heldout", 1, tokenizer, seed=seed, lengths=(int(tokens * .3),) * 2)[0]
    tc = tasks.generate("toolcall", "heldout", 1, tokenizer, seed=seed, lengths=(int(tokens * .3),) * 2)[0]
    code = tasks.generate("code", "heldout", 1, tokenizer, seed=seed, lengths=(int(tokens * .35),) * 2)[0]
    doc = ("Project binder\n\nPart 1. Staff registry\n" + qa.context + "\n\nPart 2. Order log\n" + tc.context
           + "\n\nPart 3. Source file under review\n" + code.context)
    return doc, {"qa": qa, "toolcall": tc, "code": code}
