"""The ``droidspeak`` command line: the parser, and the one place a command's errors become one line.

Every subcommand has ``--help``; those that report take ``--json``. Errors print one line
(``droidspeak: error: ...``) and exit with status 2; nothing a user can cause prints a traceback.
The commands live by group: :mod:`.inspect` (models, compat, status), :mod:`.experiments`
(reuse, study, profile, eval, demo), :mod:`.nodes` (prefill, answer, serve, store-server),
:mod:`.variants` (variants, data). Nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import argparse
import sys

from .. import runtime
from ..errors import DroidspeakError
from . import experiments, inspect, nodes, variants

_GROUPS = (inspect, experiments, variants, nodes)  # `droidspeak --help` lists their commands in this order


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="droidspeak",
        description="Fine-tuned variants of one base LLM share KV caches (DroidSpeak, NSDI 2026).",
    )
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    def add(name: str, help_: str, fn, json_flag: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(fn=fn)
        return sp

    for group in _GROUPS:
        group.register(add)
    return p


def main(argv: list[str] | None = None) -> int:
    runtime.configure()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 0
    if args.cmd == "variants" and not args.variants_cmd:
        parser.parse_args(["variants", "--help"])
    runtime.quiet()
    try:
        return int(args.fn(args) or 0)
    except DroidspeakError as e:
        print(f"droidspeak: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("droidspeak: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head & co.
        return 0


if __name__ == "__main__":
    sys.exit(main())
