"""What every benchmark script records: the command, the date, the machine; and how it writes."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any


def provenance(**machine_extra: Any) -> dict[str, Any]:
    import torch

    return {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                        "cores": os.cpu_count(), "torch": torch.__version__} | machine_extra}


def write_result(path: str | Path, data: dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=1))
    print(f"wrote {p}")
