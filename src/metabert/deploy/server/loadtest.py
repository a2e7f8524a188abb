"""Drive a running metabert server with N concurrent clients for a bounded time (loopback only),
and start one in a process of its own to drive (``start_server``)."""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from metabert.deploy.server.config import is_loopback


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_output(proc: subprocess.Popen) -> str:
    """Everything a ``start_server`` process has written so far."""
    proc.log.seek(0)
    return proc.log.read().decode(errors="replace")


def start_server(checkpoint: str | Path, *options: str, wait_s: float = 300.0) -> tuple[subprocess.Popen, str]:
    """``metabert serve --checkpoint CHECKPOINT OPTIONS`` on a free loopback port, in a new process;
    returns (process, base URL) once ``/healthz`` answers 200. Its output goes to a temporary file
    (a pipe nobody reads would block a server that logs every request), quoted if it exits first
    and read with ``server_output``."""
    import httpx

    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "metabert", "serve", "--checkpoint", str(checkpoint),
                             "--port", str(port), *options], stdout=log, stderr=subprocess.STDOUT)
    proc.log = log
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {server_output(proc)[-2000:]}")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the server did not answer /healthz within {wait_s:g} s")


async def _client(http, url, texts, batch, stop_at, latencies, statuses, rng):
    while time.perf_counter() < stop_at:
        payload = {"texts": [rng.choice(texts) for _ in range(batch)]}
        start = time.perf_counter()
        try:
            response = await http.post(url, json=payload)
            status = response.status_code
        except Exception as err:  # connection errors count as errors, the test goes on
            status = type(err).__name__
        latencies.append(time.perf_counter() - start)
        statuses[status] = statuses.get(status, 0) + 1


async def _run(url, texts, clients, duration, batch, seed):
    import httpx

    latencies: list[float] = []
    statuses: dict = {}
    stop_at = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(_client(http, url.rstrip("/") + "/predict", texts, batch, stop_at, latencies, statuses,
                                       random.Random(seed + i)) for i in range(clients)))
        elapsed = time.perf_counter() - start
    ok = statuses.get(200, 0)
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "url": url, "clients": clients, "duration_s": elapsed, "items_per_request": batch,
        "requests": len(latencies), "ok": ok,
        "errors": {str(k): v for k, v in statuses.items() if k != 200},
        "server_errors_5xx": sum(v for k, v in statuses.items() if isinstance(k, int) and k >= 500),
        "throughput_requests_per_s": ok / elapsed, "throughput_items_per_s": ok * batch / elapsed,
        "latency_ms_p50": float(np.percentile(lat, 50)), "latency_ms_p99": float(np.percentile(lat, 99)),
        "latency_ms_mean": float(lat.mean()),
    }


def run_load(url: str, texts: list[str], clients: int = 16, duration: float = 60.0, batch: int = 1,
             seed: int = 0) -> dict:
    if duration <= 0 or duration > 3600:
        raise ValueError(f"duration must be in (0, 3600] seconds, got {duration}")
    if not 1 <= clients <= 1024:
        raise ValueError(f"clients must be in [1, 1024], got {clients}")
    host = url.split("//", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    if not is_loopback(host):
        raise ValueError(f"{url}: load tests are for servers on this machine (loopback) only")
    return asyncio.run(_run(url, texts, clients, duration, batch, seed))
