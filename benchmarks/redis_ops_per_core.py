"""Redis operations per second of one Redis core on this machine (redis-benchmark).

Run from the repository root::

    python benchmarks/redis_ops_per_core.py

For each pipeline depth (1: one command per round trip, as a lone client;
16: commands sent in batches, as the daemons' pipelines and scripts do), a
fresh ``redis-server`` on loopback takes ``redis-benchmark -c 50`` of the
commands the daemons use most (SET, GET, SADD, HSET). Reported: the
benchmark's requests/s, and operations per second of Redis CPU
(``INFO commandstats`` calls over the ``used_cpu_sys + used_cpu_user``
delta), which is what one saturated Redis core would do: the benchmark
client shares the machine, so requests/s alone understates the server.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import tempfile
import time

COMMANDS = "set,get,sadd,hset"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cli(port: int, *words: str) -> str:
    return subprocess.run(
        ["redis-cli", "-p", str(port), *words], check=True, capture_output=True, text=True
    ).stdout


def counters(port: int) -> tuple[int, float]:
    stats = cli(port, "INFO", "commandstats")
    calls = sum(int(n) for n in re.findall(r"cmdstat_(?!info)\S+?:calls=(\d+)", stats))
    cpu = cli(port, "INFO", "cpu")
    used = sum(float(v) for v in re.findall(r"used_cpu_(?:sys|user):([0-9.]+)", cpu))
    return calls, used


def measure(pipeline: int, requests: int) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", directory],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    cli(port, "PING")
                    break
                except subprocess.CalledProcessError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            calls0, cpu0 = counters(port)
            output = subprocess.run(
                ["redis-benchmark", "-p", str(port), "-q", "-c", "50", "-P", str(pipeline),
                 "-n", str(requests), "-t", COMMANDS],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            calls1, cpu1 = counters(port)
        finally:
            server.terminate()
            server.wait(10)
    rates = re.findall(r"(\w+): ([0-9.]+) requests per second", output.replace("\r", "\n"))
    per_core = (calls1 - calls0) / (cpu1 - cpu0)
    shown = ", ".join(f"{name} {float(rate):,.0f}/s" for name, rate in rates)
    print(f"pipeline {pipeline:>2}: {shown}; {per_core:,.0f} operations per Redis CPU-second")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000, help="per command and depth")
    options = parser.parse_args()
    for program in ("redis-server", "redis-benchmark", "redis-cli"):
        if shutil.which(program) is None:
            raise SystemExit(f"{program} is missing: apt-get install -y redis-server redis-tools")
    for pipeline in (1, 16):
        measure(pipeline, options.requests * (1 if pipeline == 1 else 5))


if __name__ == "__main__":
    main()
