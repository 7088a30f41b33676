"""The HTTP port checks the token and the size before it reads a body.

Before: a 1 GiB body without a token was read whole (RSS 1.3 -> 3.1 GB) and only then answered 401;
a chunked body had no cap until it was all in memory. Now the token and ``Content-Length`` are
checked first (401 / 413 at once, the connection closed), and a body without a length is refused
as soon as it passes ``--max-message-bytes``. The bytes are streamed here, never held.
"""

from __future__ import annotations

import json
import select
import socket
import time

import pytest
from served import Served, serving

TOKEN = "bodies-t0ken"
GIB = 1 << 30
CHUNK = b"\0" * (1 << 20)
LIMIT = 1 << 20  # --max-message-bytes of the server below


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Served:
    with serving(tmp_path_factory.mktemp("bodies"), "--max-message-bytes", str(LIMIT), token=TOKEN) as served:
        yield served


def send_until_answered(port: int, head: bytes, *, chunked: bool = False, most: int = 256 << 20) -> tuple[bytes, int]:
    """Send ``head``, then zeros (chunked or not) until the server answers; (answer, body bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setblocking(False)
    sent, answer = 0, b""
    piece = b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK) if chunked else CHUNK
    pending = head + piece
    try:
        while sent < most:
            readable, writable, _ = select.select([sock], [sock] if pending else [], [], 5)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    break
                answer += data
                if not data or b"\r\n\r\n" in answer:
                    break
            elif writable:
                try:
                    n = sock.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    break
                pending = pending[n:]
                if not pending:
                    sent += len(CHUNK)
                    pending = piece
            else:
                break
        deadline = time.monotonic() + 5
        while b"\r\n\r\n" in answer and time.monotonic() < deadline:  # the rest of the answer, then the close
            if not select.select([sock], [], [], 1)[0]:
                continue
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            answer += data
    finally:
        sock.close()
    return answer, sent


def head(length: int | None, token: str | None) -> bytes:
    lines = [b"POST /api/predict/x HTTP/1.1", b"Host: test", b"Content-Type: application/json"]
    lines.append(b"Content-Length: %d" % length if length is not None else b"Transfer-Encoding: chunked")
    if token:
        lines.append(b"Authorization: " + token.encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


def status_and_body(answer: bytes) -> tuple[int, dict]:
    assert answer, "no answer"
    top, _, body = answer.partition(b"\r\n\r\n")
    status = int(top.split(b" ", 2)[1])
    return status, json.loads(body) if body else {}


def test_a_1gib_body_without_a_token_is_refused_before_it_is_read(server):
    for _ in range(2):  # warm-up: the first answers import and allocate what every later one reuses
        send_until_answered(server.http_port, head(GIB, None), most=8 << 20)
    before = server.rss_bytes()
    started = time.monotonic()
    answer, sent = send_until_answered(server.http_port, head(GIB, None))
    took = time.monotonic() - started
    after = server.rss_bytes()
    assert answer, f"no answer after {sent >> 20} MiB of the body"
    status, body = status_and_body(answer)
    assert status == 401 and body["error_code"] == "TOKEN_INVALID"
    assert sent < 64 << 20, f"{sent >> 20} MiB were taken before the answer"
    assert took < 5
    assert after - before < 8 << 20, f"RSS grew by {(after - before) >> 20} MiB"
    print(f"1 GiB without a token: 401 after {sent >> 20} MiB sent, {took:.2f} s, RSS {before >> 20} -> "
          f"{after >> 20} MiB")  # fmt: skip


def test_a_declared_length_over_the_limit_is_refused_before_it_is_read(server):
    before = server.rss_bytes()
    answer, sent = send_until_answered(server.http_port, head(GIB, TOKEN))
    status, body = status_and_body(answer)
    assert status == 413 and body["error_code"] == "MESSAGE_TOO_LARGE", answer[:300]
    assert sent < 64 << 20
    assert server.rss_bytes() - before < 8 << 20


def test_a_chunked_body_is_capped_while_it_streams(server):
    before = server.rss_bytes()
    answer, sent = send_until_answered(server.http_port, head(None, TOKEN), chunked=True)
    status, body = status_and_body(answer)
    assert status == 413 and body["error_code"] == "MESSAGE_TOO_LARGE", answer[:300]
    assert sent < 64 << 20, f"{sent >> 20} MiB were taken before the answer"
    assert server.rss_bytes() - before < 16 << 20
    # and the port still serves
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")
