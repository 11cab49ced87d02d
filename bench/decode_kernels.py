"""What a decode step's projections cost on this machine's kernels, by batch rows: the CLI's weight
layout (``nn.Linear``, MKL), the server's (few rows split over the threads,
``droidspeak/models/layout.py``), and the server's with the copy packed for oneDNN that
``DROIDSPEAK_PACKED_WEIGHTS=true`` keeps (one row still split, 2-16 rows packed), side by side in one run.

Every projection of SmolLM2 (each layer's seven, then the LM head: 538 MB of fp32 weights, more than
this CPU's caches, so each is read from memory as a step reads it) applied by its own module to
``rows`` tokens, in order, nothing else; the median of the repeats, beside the weight-read bound (the
weights' bytes over the read bandwidth measured in the same run).

    .venv/bin/python bench/decode_kernels.py --out bench/results/decode_kernels.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import provenance, write_result  # noqa: E402
from fleet_engine import projections, read_bandwidth, time_projections  # noqa: E402

LAYOUTS = ("cli", "server", "server, packed")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default="bench/results/decode_kernels.json")
    args = ap.parse_args()
    from droidspeak.models import load_model
    from droidspeak.models.layout import can_pack, relayout

    model = load_model("smollm2-135m-instruct")
    mods = projections(model)
    weight_bytes = sum({m.weight.data_ptr(): m.weight.numel() * m.weight.element_size() for m in mods}.values())
    ms: dict[str, dict[str, float]] = {k: {} for k in LAYOUTS}
    for layout in LAYOUTS:
        if layout != "cli":
            relayout(model.model, packed=layout == "server, packed")
        for rows in args.rows:
            ms[layout][str(rows)] = time_projections(mods, rows, args.repeats) * 1000
    bw = read_bandwidth()
    bound_ms = weight_bytes / bw * 1000
    out = provenance() | {"weight_bytes": weight_bytes, "read_bandwidth_gb_s": bw / 1e9, "weight_read_bound_ms": bound_ms,
                          "onednn": can_pack(), "rows": args.rows, "projections_ms": ms,
                          "packed_over_split": {r: ms["server, packed"][r] / ms["server"][r] for r in ms["server"]}}
    for layout in LAYOUTS:
        print(f"{layout:20s} " + "  ".join(f"{r} rows {t:6.1f} ms" for r, t in ms[layout].items()))
    print(f"weight-read bound {bound_ms:.1f} ms ({weight_bytes / 1e6:.0f} MB at {bw / 1e9:.0f} GB/s)")
    write_result(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
