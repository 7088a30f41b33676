"""Ctrl-C to ``lookalike serve`` while it builds an HNSW graph: it stops cleanly (exit 0, no abort), keeps every
image, and the next start builds the graph again and answers from it.

Before the fix the process aborted at exit ("terminate called without an active exception", exit -6) when the
build's thread was in native code as the interpreter went down.
"""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest
from lookalike.client import BulkItem, LookalikeClient
from served import serving
from tiny_models import write_models

N = 60_000
DIM = 24  # tiny_models' "old" model: registering raw vectors is quick, the build still takes seconds


@pytest.mark.slow  # two starts, 60k rows registered, a graph built: about 35 s
def test_ctrl_c_while_the_graph_is_built_exits_cleanly_and_the_next_start_builds_it(tmp_path):
    model = write_models(tmp_path)["old"]
    flags = ("--model", str(model), "--hnsw-threshold", str(N))
    x = np.random.default_rng(1).standard_normal((N, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with serving(tmp_path, *flags) as s, LookalikeClient(s.grpc, timeout=120) as c:
        c.create_database("big")
        for a in range(0, N, 20_000):
            r = c.bulk_set("big", (BulkItem(f"g{i}", intra_id=0, vector=x[i].tolist()) for i in range(a, a + 20_000)))
            assert r.succeeded_count == 20_000 and not r.failures
        assert c.search("big", vector=x[0].tolist(), top_k=1).index == "exact"  # the graph is being built
        time.sleep(0.5)
        s.proc.send_signal(signal.SIGINT)
        assert s.proc.wait(120) == 0, s.log.read_text()[-2000:]
    assert "terminate called" not in s.log.read_text()

    with serving(tmp_path, *flags) as s, LookalikeClient(s.grpc, timeout=120) as c:
        assert c.get_database("big").image_count == N
        deadline = time.monotonic() + 300
        while (r := c.search("big", vector=x[7].tolist(), top_k=1)).index != "hnsw":
            assert time.monotonic() < deadline, "the graph was not built after the restart"
            time.sleep(0.2)
        assert r.hits[0].key.group_id == "g7"
