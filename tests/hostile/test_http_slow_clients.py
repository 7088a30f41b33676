"""Slow and greedy HTTP clients cannot hold the server's descriptors, calls or log.

Before: half-sent bodies were never timed out (100 of 100 still open after 20 s); with the
descriptors gone, gRPC health, ``/healthz`` and ``/metrics`` timed out and accept() tracebacks
filled the log; 64 clients got p50 1.9 s and no 429; a client that hung up mid-body wrote a
58-line uvicorn traceback outside ``--log-format json``. The server here runs with 256 descriptors.
"""

from __future__ import annotations

import base64
import json
import select
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from photos import encode, photo
from served import Served, serving

TIMEOUT_S = 2.0  # --http-body-timeout-s and --http-header-timeout-s below
INFLIGHT = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Served:
    with serving(tmp_path_factory.mktemp("slow"), "--http-body-timeout-s", str(TIMEOUT_S), "--http-header-timeout-s",
                 str(TIMEOUT_S), "--max-inflight", str(INFLIGHT), nofile=256) as served:  # fmt: skip
        yield served


def others_answer(server: Served) -> None:
    """gRPC health and /metrics answer, each within two seconds."""
    started = time.monotonic()
    with grpc.insecure_channel(server.grpc) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=2).status_code == 200
    assert time.monotonic() - started < 3


def closed_by_server(socks: list[socket.socket], within: float) -> list[tuple[bool, bytes]]:
    """For each socket: whether the server closed it within ``within`` seconds, and what it said first."""
    said = {s: b"" for s in socks}
    closed: set[socket.socket] = set()
    deadline = time.monotonic() + within
    while len(closed) < len(socks) and time.monotonic() < deadline:
        waiting = [s for s in socks if s not in closed]
        for s in select.select(waiting, [], [], 0.2)[0]:
            try:
                data = s.recv(4096)
            except (ConnectionResetError, TimeoutError, BlockingIOError):
                data = b""
            if data:
                said[s] += data
            else:
                closed.add(s)
    return [(s in closed, said[s]) for s in socks]


def healthz(server: Served, within: float = 10.0) -> int:
    deadline = time.monotonic() + within
    while True:
        try:
            code = requests.get(f"http://127.0.0.1:{server.http_port}/healthz", timeout=2).status_code
        except requests.RequestException:
            code = 0
        if code == 200 or time.monotonic() > deadline:
            return code
        time.sleep(0.2)


def test_slow_bodies_are_closed_after_the_body_timeout_while_everything_else_answers(server):
    assert healthz(server) == 200
    socks = []
    for _ in range(100):  # each declares 1000 bytes and sends 10
        s = socket.create_connection(("127.0.0.1", server.http_port), timeout=5)
        s.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                  b'{"imagea":')  # fmt: skip
        socks.append(s)
    try:
        time.sleep(0.5)
        others_answer(server)
        outcomes = closed_by_server(socks, TIMEOUT_S + 6)
        open_still = sum(1 for closed, _ in outcomes if not closed)
        assert open_still == 0, f"{open_still} of 100 half-sent bodies still open {TIMEOUT_S + 6:g} s later"
        statuses = {said.split(b" ", 2)[1] for _, said in outcomes if said}
        assert b"408" in statuses and statuses <= {b"408", b"429", b"503"}, statuses
    finally:
        for s in socks:
            s.close()
    assert healthz(server) == 200


def test_more_connections_than_descriptors_leave_health_and_metrics_answering(server):
    baseline = server.open_fds()
    socks = []
    for _ in range(400):  # silent: not even a request line; more than the server's 256 descriptors
        try:
            socks.append(socket.create_connection(("127.0.0.1", server.http_port), timeout=5))
        except OSError:
            break
    try:
        time.sleep(0.5)
        others_answer(server)
        outcomes = closed_by_server(socks, TIMEOUT_S + 4)
        assert all(closed for closed, _ in outcomes), "silent connections are closed after the header timeout"
    finally:
        for s in socks:
            s.close()
    time.sleep(0.5)
    assert server.open_fds() <= baseline + 8
    assert healthz(server) == 200
    log = server.log.read_text()
    assert len(log) < 100_000, f"the log grew by {len(log)} bytes"


def test_overload_is_answered_429_at_once(server):
    image = base64.b64encode(encode(photo("coffee"))).decode()
    body = json.dumps({"imagea": image, "imageb": image})
    seen: list[tuple[int, float, str | None]] = []

    def client(_: int) -> None:
        with requests.Session() as session:
            end = time.monotonic() + 4
            while time.monotonic() < end:
                started = time.monotonic()
                r = session.post(f"http://127.0.0.1:{server.http_port}/", data=body, timeout=30)
                seen.append((r.status_code, time.monotonic() - started, r.headers.get("retry-after")))

    with ThreadPoolExecutor(24) as pool:
        list(pool.map(client, range(24)))
    refused = [s for s in seen if s[0] == 429]
    served = [s for s in seen if s[0] == 200]
    assert refused and served and len(refused) + len(served) == len(seen), {s[0] for s in seen}
    assert all(r[2] == "1" for r in refused), "429 says when to retry"
    slowest = sorted(r[1] for r in refused)[int(len(refused) * 0.95)]
    assert slowest < 0.5, f"p95 of a refusal: {slowest:.2f} s"
    print(f"24 clients, --max-inflight {INFLIGHT}: {len(served)} served, {len(refused)} refused (p95 "
          f"{slowest * 1000:.0f} ms)")  # fmt: skip


def test_uvicorn_errors_go_through_the_server_log_format_and_are_rate_limited(server):
    before = len(server.log.read_text().splitlines())
    for _ in range(30):  # hang up mid-body
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as s:
            s.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n{")
            time.sleep(0.01)
    for _ in range(30):  # not HTTP at all: uvicorn's "Invalid HTTP request received."
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as s:
            s.sendall(b"\x16\x03\x01 this is not http\r\n\r\n")
            s.recv(100)
    time.sleep(1.0)
    lines = server.log.read_text().splitlines()[before:]
    records = [json.loads(line) for line in lines]  # every line is a JSON object, tracebacks included
    invalid = [r for r in records if "Invalid HTTP request" in r["message"]]
    assert 1 <= len(invalid) <= 5, len(invalid)
    assert len(lines) < 20, lines
