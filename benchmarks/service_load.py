"""Load test of `edgestack serve` from a second process on loopback.

    python benchmarks/service_load.py --bundle artifacts/defectseg-s --clients 32 --requests 2000

Starts the service as a subprocess on a free loopback port, sends `--requests` POSTs from `--clients`
concurrent clients (asyncio + httpx), and writes service_load.json / .md: errors, p50/p90/p99 latency, rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_images(count: int, size: int) -> list[bytes]:
    from edgestack.train.synthetic import HELDOUT_SEED, make_sample

    return [cv2.imencode(".png", cv2.cvtColor(make_sample(HELDOUT_SEED, i, size).image, cv2.COLOR_RGB2BGR))[1]
            .tobytes() for i in range(count)]


async def load(url: str, images: list[bytes], clients: int, requests: int) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    next_request = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        for i in next_request:
            started = time.perf_counter()
            try:
                r = await http.post(f"{url}/v1/inspect?id=r{i}", content=images[i % len(images)])
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as exc:
                errors.append(f"{exc.__class__.__name__}: {exc}")
            latencies.append((time.perf_counter() - started) * 1e3)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return latencies, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--size", type=int, default=352, help="test image side in pixels")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--out", default="results/service")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "edgestack", "serve", "--bundle", args.bundle, "--port",
                               str(port), "--backend", args.backend, "--max-pending", str(args.clients)])
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        health = httpx.get(url + "/health").json()
        images = test_images(16, args.size)
        started = time.perf_counter()
        latencies, errors = asyncio.run(load(url, images, args.clients, args.requests))
        seconds = time.perf_counter() - started
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    t = np.asarray(latencies)
    result = {
        "service": health, "clients": args.clients, "requests": args.requests, "image_size": args.size,
        "errors": len(errors), "error_samples": errors[:5], "seconds": seconds,
        "requests_per_s": args.requests / seconds, "p50_ms": float(np.percentile(t, 50)),
        "p90_ms": float(np.percentile(t, 90)), "p99_ms": float(np.percentile(t, 99)),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "service_load.json").write_text(json.dumps(result, indent=2) + "\n")
    table = ("| clients | requests | image | errors | req/s | p50 ms | p90 ms | p99 ms |\n"
             "|---|---|---|---|---|---|---|---|\n"
             f"| {args.clients} | {args.requests} | {args.size}x{args.size} | {len(errors)} | "
             f"{result['requests_per_s']:.1f} | {result['p50_ms']:.0f} | {result['p90_ms']:.0f} | "
             f"{result['p99_ms']:.0f} |\n")
    (out / "service_load.md").write_text(f"# Service load test ({health['backend']})\n\n{table}")
    print(table)
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
