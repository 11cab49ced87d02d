"""A bounded load test on loopback: twice the measured saturation rate, no 5xx, budgets held.

DROIDSPEAK_LOAD_SECONDS (default 15) sets the overload phase; DROIDSPEAK_LOAD_REPORT=FILE writes
the figures as JSON (README's reliability section quotes such a run)."""

import asyncio
import json
import os
import random
import threading
import time

import httpx
import pytest
from conftest import ServerProc

pytestmark = pytest.mark.smollm
BUDGET = 64 << 20


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1]) / 1024
    return 0.0


def _metric(text: str, name: str, **labels) -> float:
    return sum(float(ln.split()[-1]) for ln in text.splitlines()
               if ln.startswith(name) and all(f'{k}="{v}"' in ln for k, v in labels.items()))


def _body(rng: random.Random) -> dict:
    i = rng.randrange(12)  # 12 shared contexts, two models, varied questions
    ctx = f"Log {i}.\n" + "\n".join(f"Line {j}: sensor {i}-{j} read {(i * 31 + j * 7) % 97} units." for j in range(25))
    return {"model": rng.choice(["smollm2-135m-instruct", "smollm2-qa"]), "temperature": 0, "max_tokens": 8,
            "messages": [{"role": "user", "content": ctx},
                         {"role": "user", "content": f"What did sensor {i}-{rng.randrange(25)} read?"}]}


async def _closed_loop(url: str, seconds: float, workers: int) -> int:
    rng = random.Random(1)
    done = 0
    end = time.time() + seconds

    async def worker(c):
        nonlocal done
        while time.time() < end:
            r = await c.post(url + "/v1/chat/completions", json=_body(rng))
            assert r.status_code == 200, r.text
            done += 1

    async with httpx.AsyncClient(timeout=600) as c:
        await asyncio.gather(*(worker(c) for _ in range(workers)))
    return done


async def _open_loop(url: str, rate: float, seconds: float) -> list[tuple[int, float]]:
    rng = random.Random(2)
    out: list[tuple[int, float]] = []

    async def one(c, body):
        t0 = time.time()
        r = await c.post(url + "/v1/chat/completions", json=body)
        out.append((r.status_code, time.time() - t0))

    tasks = []
    async with httpx.AsyncClient(timeout=900, limits=httpx.Limits(max_connections=2000)) as c:
        t_end = time.time() + seconds
        while time.time() < t_end:
            tasks.append(asyncio.create_task(one(c, _body(rng))))
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
    return out


def test_twice_saturation_no_5xx_budgets_held(tmp_path):
    seconds = float(os.environ.get("DROIDSPEAK_LOAD_SECONDS", "15"))
    srv = ServerProc("--models", "smollm2-135m-instruct,smollm2-qa", "--store", "memory:64MB",
                     env={"DROIDSPEAK_MAX_WAITING": "100000", "DROIDSPEAK_WARMUP_TOKENS": "2048"},  # as deployed
                     log_dir=tmp_path).wait()
    peak = [0.0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb(srv.proc.pid))
            time.sleep(0.5)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        t0 = time.time()
        n = asyncio.run(_closed_loop(srv.url, max(10.0, seconds / 3), workers=4))
        saturation = n / (time.time() - t0)
        t1 = time.time()
        res = asyncio.run(_open_loop(srv.url, 2 * saturation, seconds))
        wall = time.time() - t1
        metrics = httpx.get(srv.url + "/metrics").text
        stop.set()
        codes = [c for c, _ in res]
        lat = sorted(d for _, d in res)
        store_bytes = _metric(metrics, "droidspeak:store_bytes", tier="memory")
        queued = _metric(metrics, "droidspeak:request_queue_time_seconds_count")
        queue_sum = _metric(metrics, "droidspeak:request_queue_time_seconds_sum")
        report = {"saturation_rps": saturation, "offered_rps": 2 * saturation, "overload_seconds": seconds,
                  "requests": len(res), "status_counts": {str(c): codes.count(c) for c in set(codes)},
                  "latency_p50_s": lat[len(lat) // 2], "latency_p99_s": lat[int(0.99 * (len(lat) - 1))],
                  "drain_wall_s": wall, "queue_time_mean_s": queue_sum / max(1, queued),
                  "peak_rss_mb": peak[0], "store_bytes": store_bytes, "store_budget": BUDGET}
        if os.environ.get("DROIDSPEAK_LOAD_REPORT"):
            with open(os.environ["DROIDSPEAK_LOAD_REPORT"], "w") as f:
                json.dump(report, f, indent=1)
        assert len(res) >= seconds * saturation, report  # the offered load really was twice saturation
        assert all(c == 200 for c in codes), report  # no 5xx (and no refusals: the queue absorbed it)
        assert store_bytes <= BUDGET, report
        assert peak[0] < 6000, report
        assert queued >= len(res) and httpx.get(srv.url + "/health").json()["status"] == "ok"
        assert "Traceback" not in srv.logs() and "warm-up failed" not in srv.logs()
    finally:
        stop.set()
        srv.stop()
