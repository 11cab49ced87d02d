"""Python next-line completion over long files (metric: edit similarity, as LongBench's LCC).

Files come from the Python standard library of the interpreter running droidspeak. Each file
belongs to exactly one split by a hash of its path (train 60%, calib 20%, held-out 20%), so no
source file is shared between splits; each split also has its own request wording.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path
from typing import Any

from .common import Example, Split, length_for, rng_for

_REQUEST = {
    "train": "Write the next line of this Python file.",
    "calib": "Continue the code above with exactly one more line.",
    "heldout": "Complete the next line of code.",
}


def split_of(relpath: str) -> Split:
    bucket = int(hashlib.sha1(relpath.encode()).hexdigest(), 16) % 10
    return "train" if bucket < 6 else ("calib" if bucket < 8 else "heldout")


def source_files(split: Split) -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        if any(part in rel for part in ("site-packages", "test", "idlelib", "lib2to3", "encodings/")):
            continue
        if split_of(rel) == split and p.stat().st_size > 6_000:
            out.append(p)
    return out


def _good_target(line: str) -> bool:
    s = line.strip()
    return len(s) >= 8 and not s.startswith(("#", '"""', "'''")) and not s.endswith(('"""', "'''"))


def generate(split: Split, n: int, tokenizer: Any, seed: int = 0,
             lengths: tuple[int, int] | None = None) -> list[Example]:
    rng = rng_for(split, seed)
    files = source_files(split)
    rng.shuffle(files)
    rows = []
    for path in files:
        if len(rows) >= n:
            break
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        lines = text.splitlines(keepends=True)
        target = length_for(split, rng, lengths)
        # token count of each line, to cut at a line boundary near the target length
        counts = [len(tokenizer(ln, add_special_tokens=False)["input_ids"]) for ln in lines]
        total, cut = 0, None
        for idx, c in enumerate(counts):
            total += c
            if total >= target:
                cut = idx + 1
                break
        if cut is None or cut >= len(lines):
            continue
        # the first line after the cut that is worth predicting
        nxt = next((j for j in range(cut, min(cut + 12, len(lines))) if _good_target(lines[j])), None)
        if nxt is None:
            continue
        context = "".join(lines[:nxt])
        rows.append(Example(context, _REQUEST[split], lines[nxt].strip(), "code",
                            {"split": split, "file": path.name, "line": nxt + 1, "approx_tokens": total}))
    return rows
