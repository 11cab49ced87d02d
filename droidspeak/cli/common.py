"""What every command shares: output (text or ``--json``), tables, rows to run on, the store."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from ..errors import DroidspeakError


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=1) if getattr(args, "json", False) else text)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def command_line(argv: list[str] | None = None) -> str:
    """This command as typed (recorded in what it writes)."""
    return "droidspeak " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))


def read_context(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise DroidspeakError(f"context file not found: {p}")
    return p.read_text(encoding="utf-8", errors="replace")


def open_store(args: argparse.Namespace, spec: str | None = None, namespace: str | None = None):
    """The store a node command names (``--store``, ``--namespace``, ``--format``, ``--encrypt``,
    ``--insecure-store``), sealed under ``DROIDSPEAK_STORE_SECRET`` (never a flag: argv is public)."""
    from ..store import open_store as open_

    return open_(spec or args.store, namespace or args.namespace, getattr(args, "format", "native"),
                 os.environ.get("DROIDSPEAK_STORE_SECRET", ""), getattr(args, "encrypt", False),
                 getattr(args, "insecure_store", False))


def add_store_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--namespace", default=os.environ.get("DROIDSPEAK_NAMESPACE", "default"),
                    help="deployment namespace inside the store (default: default)")
    sp.add_argument("--encrypt", action="store_true", default=os.environ.get("DROIDSPEAK_STORE_ENCRYPT", "") == "1",
                    help="encrypt values in disk and Redis tiers (needs DROIDSPEAK_STORE_SECRET)")
    sp.add_argument("--insecure-store", action="store_true",
                    help="accept a Redis tier on another machine without DROIDSPEAK_STORE_SECRET")


def add_rows_args(sp: argparse.ArgumentParser, n: int, lengths: tuple[int, int], split: str) -> None:
    sp.add_argument("--data", help="JSONL rows (context, prompt, reference?); default: generated rows")
    sp.add_argument("--task", help=f"task whose {split} rows to generate (qa, code, toolcall, summary; "
                                   "default: the receiver's)")
    sp.add_argument("--metric", help="gold metric against references (f1, edit_sim, rouge_l, call_fields)")
    sp.add_argument("--n", type=int, default=n, help=f"rows (default {n})")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--min-tokens", type=int, default=lengths[0], help=f"generated rows (default {lengths[0]})")
    sp.add_argument("--max-tokens", type=int, default=lengths[1], help=f"generated rows (default {lengths[1]})")
    sp.add_argument("--max-new-tokens", type=int, help="answer length (default: the receiver's task's, else 24)")


def load_rows(args: argparse.Namespace, receiver: Any, split: str) -> tuple[list[Any], str | None, dict[str, Any]]:
    """Rows from ``--data FILE`` or generated from a task's split; with their task's metric and provenance."""
    from .. import tasks

    if args.n < 1:
        raise DroidspeakError("--n must be at least 1")
    if args.data:
        rows = tasks.read_jsonl(args.data)[: args.n]
        digest = hashlib.sha256(Path(args.data).read_bytes()).hexdigest()[:16]
        task_metric = args.metric
        source = {"file": str(args.data), "sha256_16": digest}
    else:
        task = args.task or receiver.spec.task or "qa"
        if task not in tasks.GENERATORS:
            raise DroidspeakError(f"unknown task '{task}'; known: {', '.join(tasks.GENERATORS)}")
        rows = tasks.generate(task, split, args.n, receiver.tokenizer, seed=args.seed,
                              lengths=(args.min_tokens, args.max_tokens))
        task_metric = args.metric or tasks.METRIC_OF_TASK[task]
        source = {"task": task, "split": split, "seed": args.seed, "lengths": [args.min_tokens, args.max_tokens]}
    if not rows:
        raise DroidspeakError("no rows to run on")
    return rows, task_metric, source
