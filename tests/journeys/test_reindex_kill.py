"""``kill -9`` at random points of a reindex while a writer keeps adding: after each crash the name serves every
acknowledged image (under the old model or the new one, never a mix), and the restarted server resumes the
reindex to the end, with every acknowledged image under the new model."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cli import serving
from lookalike.client import BulkItem, ClientError, LookalikeClient
from lookalike.v1 import match_service_pb2 as pb
from lookalike.v1 import types_pb2
from tiny_models import picture, write_models

DIMS = {24: "old", 16: "new"}


def keys(c: LookalikeClient, db: str) -> set[tuple[str, int]]:
    return {(i.key.group_id, i.key.intra_id) for i in c.list_images(db)}


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the server's background embedder)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError):
            pass
    return found


def gone(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) in ("Z", "X")
    except OSError:
        return True


def copying(c: LookalikeClient, name: str, timeout: float = 120.0) -> None:
    """Wait until the reindex has copied a page in this server's life (its first progress may be the last one saved
    before the crash; the background embedder takes a few seconds to start), so a kill lands mid-copy."""
    first = c.get_operation(name).progress.completed
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        op = c.get_operation(name)
        if op.done or op.progress.completed > first:
            return
        time.sleep(0.02)
    raise AssertionError(f"the reindex copied nothing in {timeout:g} s")


@pytest.mark.slow
def test_kill_9_during_a_reindex_loses_no_acknowledged_image(tmp_path: Path) -> None:
    models = write_models(tmp_path)
    data = tmp_path / "data"
    model_flags = ("--model", f"old={models['old']}", "--model", f"new={models['new']}")
    acked: dict[tuple[str, int], int] = {}  # key -> the seed of the picture acknowledged under it
    rng = random.Random(7)
    with serving(data, *model_flags) as (_, address):
        with LookalikeClient(address) as c:
            c.create_database("cat", keep="original")
            c.bulk_set("cat", iter(BulkItem(f"g{i}", image=picture(i), intra_id=0) for i in range(1500)))
            acked.update({(f"g{i}", 0): i for i in range(1500)})
    started = False
    for round_ in range(3):
        with serving(data, *model_flags) as (proc, address), LookalikeClient(address) as c:
            # Every acknowledged image is there, all under one model, before anything else happens.
            db = c.get_database("cat")
            assert db.dimension in DIMS and keys(c, "cat") >= acked.keys(), round_
            if not started:
                c.reindex_database("cat", "new")
                started = True
            copying(c, next(o.name for o in c.list_operations("cat") if o.kind == "reindex"))
            stop = threading.Event()

            def writer(c: LookalikeClient = c, round_: int = round_, stop: threading.Event = stop) -> None:
                i = 0
                while not stop.is_set():
                    key, seed = (f"w{round_}-{i}", 0), 100000 + 1000 * round_ + i
                    try:
                        c.set_image("cat", key[0], intra_id=0, image=picture(seed))
                        acked[key] = seed
                    except ClientError:
                        return  # the server is gone: the write was not acknowledged
                    i += 1

            thread = threading.Thread(target=writer)
            thread.start()
            time.sleep(rng.uniform(0.0, 0.5))  # the copy takes a few seconds here
            embedders = children(proc.pid)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            stop.set()
            thread.join()
            deadline = time.monotonic() + 30  # the background embedder goes with the server, even killed
            while not all(gone(p) for p in embedders) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert embedders and all(gone(p) for p in embedders), embedders
    with serving(data, *model_flags) as (_, address), LookalikeClient(address) as c:
        assert keys(c, "cat") >= acked.keys()
        ops = [o for o in c.list_operations("cat") if o.kind == "reindex"]
        assert len(ops) == 1
        done = c.wait_done(ops[0].name)
        assert done.reindex.switched, done
        assert done.resumed_count >= 1
        db = c.get_database("cat")
        assert (db.dimension, db.model_name) == (16, "new")
        assert keys(c, "cat") >= acked.keys()
        sample = sorted(acked)[:: max(1, len(acked) // 60)]
        sent = [types_pb2.Image(content=picture(acked[k])) for k in sample]
        want = c.match_stub.Embed(pb.EmbedRequest(images=sent, model="new")).embeddings
        for key, vector in zip(sample, want, strict=True):
            stored = np.asarray(c.get_image("cat", *key, include_vector=True).vector.values)
            np.testing.assert_allclose(stored, np.asarray(vector.values), atol=1e-5, err_msg=str(key))
        assert c.get_database("cat@previous").image_count >= 1500
