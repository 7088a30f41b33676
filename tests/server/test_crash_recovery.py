"""kill -9 at random moments under concurrent writers: every acknowledged image survives exactly once.

The server runs as a subprocess (the real CLI) on a data directory; three clients register
vectors and images (single calls and bulk streams) until the process is killed, then a new
server on the same directory must hold every acknowledged image with its exact vector,
nothing that was never sent, and bulk chunks whole or not at all.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from durability_helpers import naive_top, state, unit_vectors
from lookalike.client import ClientError, LookalikeClient
from photos import encode, photo

pytestmark = pytest.mark.slow
CHUNK = 32
SERVER_GONE = {"UNAVAILABLE", "CANCELLED"}  # what a call in flight (or after) sees when the server is killed


def launch(data: Path, log: Path) -> tuple[subprocess.Popen, str]:
    out = open(log, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lookalike", "serve", "--port", "0", "--data-dir", str(data),
         "--snapshot-interval", "2"],
        stdout=subprocess.PIPE, stderr=out, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    address = None
    deadline = time.monotonic() + 180
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if not line:
            break
        if "listening on" in line:
            address = "127.0.0.1:" + line.rsplit(":", 1)[1].strip()
        if "ready" in line and address:
            return proc, address
    proc.kill()
    raise AssertionError(f"server did not start; see {log}: {log.read_text()[-2000:]}")


class Writer(threading.Thread):
    """Registers into its own groups; remembers what was acknowledged and what was sent.

    It runs until its first failed call. ``failure`` keeps whatever ended it unless that was the
    server going away after ``killed`` was set: a failed check, an error before the kill, or any
    other exception reaches the test through it.
    """

    def __init__(self, address: str, worker: int, image: bytes, killed: threading.Event) -> None:
        super().__init__(daemon=True)
        self.address, self.worker, self.image, self.killed = address, worker, image, killed
        self.acked: dict[tuple[str, int], np.ndarray | None] = {}
        self.sent: set[tuple[str, int]] = set()
        self.streams: list[list[tuple[str, int]]] = []  # keys of each bulk stream, in order
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self.ended_by_kill = False

    def run(self) -> None:
        try:
            self.write()
        except ClientError as err:
            if self.killed.is_set() and err.code in SERVER_GONE:
                self.ended_by_kill = True  # whatever was acknowledged before is what counts
            else:
                self.failure = err
        except BaseException as exc:
            self.failure = exc

    def write(self) -> None:
        rng = np.random.default_rng(self.worker)
        n = 0
        with LookalikeClient(self.address, timeout=30) as c:
            while not self.stop.is_set():
                n += 1
                group = f"w{self.worker}-{n % 13}"
                kind = rng.integers(0, 10)
                if kind < 6:
                    key = (group, n)
                    vec = unit_vectors(1, int(rng.integers(1 << 30)))[0]
                    self.sent.add(key)
                    c.set_image("crash", group, intra_id=n, vector=vec.tolist(), request_id=f"{self.worker}-{n}")
                    self.acked[key] = vec
                elif kind < 7:
                    key = (group, n)
                    self.sent.add(key)
                    c.set_image("crash", group, intra_id=n, image=self.image)
                    self.acked[key] = None
                else:
                    size = int(rng.integers(20, 100))
                    vecs = unit_vectors(size, int(rng.integers(1 << 30)))
                    keys = [(f"bulk{self.worker}-{n}", i) for i in range(size)]
                    self.sent.update(keys)
                    self.streams.append(keys)
                    items = [(k[0], k[1], v.tolist(), "") for k, v in zip(keys, vecs, strict=True)]
                    summary = c.bulk_set("crash", items)
                    assert summary.succeeded_count == size, (
                        f"bulk stream of {size}: {summary.succeeded_count} registered, failures {summary.failures[:3]}"
                    )
                    self.acked.update(zip(keys, vecs, strict=True))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_loses_no_acknowledged_write(tmp_path, seed):
    random.seed(seed)
    data, log = tmp_path / "data", tmp_path / "server.log"
    image = encode(photo("coffee"))
    proc, address = launch(data, log)
    with LookalikeClient(address) as c:
        c.create_database("crash")
    killed = threading.Event()
    writers = [Writer(address, w, image, killed) for w in range(3)]
    for w in writers:
        w.start()
    time.sleep(random.uniform(2.0, 6.0))  # a random moment of the writes to kill at, not synchronisation
    killed.set()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for w in writers:
        w.stop.set()
        w.join(60)
    for w in writers:
        assert not w.is_alive(), f"writer {w.worker} did not stop"
        if w.failure is not None:
            raise AssertionError(f"writer {w.worker} failed") from w.failure
    acked = {k: v for w in writers for k, v in w.acked.items()}
    sent = set().union(*(w.sent for w in writers))
    assert len(acked) > 50, "the writers did not get going before the kill"

    proc, address = launch(data, log)
    try:
        with LookalikeClient(address) as c:
            stored = state(c, "crash")
            missing = [k for k in acked if k not in stored]
            assert not missing, f"{len(missing)} acknowledged images lost, e.g. {missing[:3]}"
            assert set(stored) <= sent, "images present that were never sent"
            for key, vec in acked.items():
                if vec is not None:
                    np.testing.assert_allclose(stored[key], vec, rtol=1e-5, atol=1e-7)  # server re-normalises
            for w in writers:
                for keys in w.streams:  # a bulk stream lands in whole chunks, in order
                    present = [k in stored for k in keys]
                    count = sum(present)
                    assert present == [True] * count + [False] * (len(keys) - count)
                    assert count == len(keys) or count % CHUNK == 0
            q = unit_vectors(1, 99)[0]
            hits = c.search("crash", vector=q.tolist(), top_k=20).hits
            assert [(h.key.group_id, h.key.intra_id) for h in hits] == naive_top(stored, q, 20)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert "Traceback" not in log.read_text()
