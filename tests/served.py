"""``lookalike serve`` as a subprocess with every port on: its pid (RSS, descriptors), ports and log file."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Served:
    proc: subprocess.Popen[str]
    grpc: str  # host:port
    http_port: int
    metrics_port: int
    log: Path

    @property
    def http_url(self) -> str:
        return f"http://{self.grpc.rsplit(':', 1)[0]}:{self.http_port}"

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(folder: Path, *extra: str, token: str | None = None, nofile: int | None = None,
            env: dict[str, str] | None = None) -> Iterator[Served]:  # fmt: skip
    """A server on free ports (gRPC, HTTP, metrics), JSON logs to ``folder/server.log``; stopped afterwards.

    It sees none of this process' ``LOOKALIKE_*`` variables, only ``token`` and ``env``.
    """
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}, **(env or {})}
    if token:
        env["LOOKALIKE_TOKEN"] = token

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    log = folder / "server.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lookalike", "serve", "--port", "0", "--http-port", "0", "--data-dir",
             str(folder / "data"), "--snapshot-interval", "0", "--log-format", "json", "--metrics-port",
             "0", *extra],
            stdout=subprocess.PIPE, stderr=err, text=True, env=env, preexec_fn=limit,
        )  # fmt: skip
    try:
        grpc_address = http_port = metrics_port = None
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("lookalike: listening on"):
                grpc_address = line.rsplit(" ", 1)[1].strip().removeprefix("https://")
            if "HTTP API on" in line:
                http_port = int(line.rstrip().rstrip("/").rsplit(":", 1)[1])
            if line.startswith("lookalike: metrics on"):
                metrics_port = int(line.rstrip().removesuffix("/metrics").rsplit(":", 1)[1])
            if line.strip() == "lookalike: ready" or time.monotonic() > deadline:
                break
        if grpc_address is None or http_port is None or metrics_port is None:
            proc.kill()
            raise AssertionError(f"the server did not start: {log.read_text()[-3000:]}")
        yield Served(proc, grpc_address, http_port, metrics_port, log)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
