"""Background embedding (``lookalike.server.core.embedding.background``): a child process at idle priority that
embeds exactly as the server's embedder does, fails its pages clearly when it dies, starts again, stops when idle,
and carries no secrets."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from lookalike.server.core.embedding.background import ChildEmbedder, InlineEmbedder, embed_page
from lookalike.server.core.embedding.default_model import default_model_path
from lookalike.server.core.embedding.embedder import Embedder
from lookalike.server.core.errors import LookalikeError
from lookalike.server.logging_setup import configure_logging
from photos import PHOTO_NAMES, encode, photo

SCHED_IDLE = 5  # os.SCHED_IDLE on Linux


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    e = Embedder(default_model_path(), device="cpu", max_wait_s=0.0, background="process", background_idle_s=60)
    yield e
    e.close()


def page() -> list[bytes | None]:
    images: list[bytes | None] = [encode(photo(n), "jpeg") for n in PHOTO_NAMES[:5]]
    images.insert(2, None)  # not submitted: in neither the vectors nor the errors
    images.insert(4, b"not an image")
    return images


def policy_of(pid: int) -> set[int]:
    """The scheduling policy of every thread of ``pid`` (field 41 of /proc/PID/task/TID/stat)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        found.add(int(fields[38]))  # field 41 counted from 1, with pid and comm split off
    return found


def test_the_child_embeds_as_the_server_does_at_idle_priority(embedder: Embedder) -> None:
    images = page()
    here = embed_page(embedder, images)
    worker = embedder.background()
    assert isinstance(worker, ChildEmbedder) and worker is embedder.background()  # one child per model
    there = worker.submit(images).result(timeout=300)
    assert there.rows == here.rows == [0, 1, 3, 5, 6]
    assert there.errors == here.errors == {4: "IMAGE_UNDECODABLE"}
    # The same model file, settings and execution mode: the vectors a fresh registration would store.
    np.testing.assert_allclose(there.vectors, here.vectors, atol=1e-5)
    assert not np.allclose(there.vectors[0], there.vectors[1])  # different photos, different vectors
    assert worker.model_workers == 1  # Embedder's default: one (lookalike serve gives it every model worker)
    pid = worker.pid
    assert pid is not None and pid != os.getpid()
    assert os.sched_getscheduler(pid) == SCHED_IDLE
    assert policy_of(pid) == {SCHED_IDLE}  # torch's and the decode pool's threads too


def test_pages_come_back_in_order_while_several_are_in_flight(embedder: Embedder) -> None:
    worker = embedder.background()
    photos = [encode(photo(n), "jpeg") for n in PHOTO_NAMES[:4]]
    futures = [worker.submit([photos[k % 4], photos[(k + 1) % 4]]) for k in range(6)]
    got = [f.result(timeout=300) for f in futures]
    want = embed_page(embedder, photos + [photos[0]])
    for k, out in enumerate(got):
        np.testing.assert_allclose(out.vectors, want.vectors[[k % 4, (k + 1) % 4]], atol=1e-5)


def test_a_child_with_the_servers_model_workers_shares_a_page_between_them_in_order() -> None:
    """``lookalike serve`` gives the child every model worker (``background_workers``): it runs only on idle CPU,
    and one single-threaded model call per core is the fast way on a CPU. The page is cut into slices the workers
    share; the vectors come back in the page's order, equal to this process's."""
    e = Embedder(default_model_path(), device="cpu", max_wait_s=0.0, background="process", background_idle_s=60,
                 background_workers=(2, 1))  # fmt: skip
    try:
        worker = e.background()
        assert isinstance(worker, ChildEmbedder) and worker.spec["model_workers"] == 2
        photos = [encode(photo(n), "jpeg") for n in PHOTO_NAMES[:5]]
        images: list[bytes | None] = photos + photos[::-1]
        there = worker.submit(images).result(timeout=300)
        assert worker.model_workers == 2  # as the child's own embedder reports them
        here = embed_page(e, images)
        assert there.rows == here.rows == list(range(10))
        np.testing.assert_allclose(there.vectors, here.vectors, atol=1e-5)
        np.testing.assert_allclose(there.vectors[:5], there.vectors[:4:-1], atol=1e-5)  # order kept across slices
        assert not np.allclose(there.vectors[0], there.vectors[1])
    finally:
        e.close()


def test_a_child_that_dies_fails_its_pages_and_the_next_page_starts_another(embedder: Embedder) -> None:
    worker = embedder.background()
    worker.submit([encode(photo(PHOTO_NAMES[0]), "jpeg")]).result(timeout=300)
    starts, pid = worker.starts, worker.pid
    assert pid is not None
    big = [encode(photo(n), "jpeg") for n in PHOTO_NAMES] * 8
    future = worker.submit(big)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(LookalikeError) as err:
        future.result(timeout=60)
    assert err.value.reason == "BACKGROUND_EMBEDDER_FAILED" and "inline" in err.value.message
    again = worker.submit([encode(photo(PHOTO_NAMES[0]), "jpeg")]).result(timeout=300)
    assert worker.starts == starts + 1 and worker.pid not in (None, pid)
    np.testing.assert_allclose(again.vectors, embed_page(embedder, [encode(photo(PHOTO_NAMES[0]), "jpeg")]).vectors,
                               atol=1e-5)  # fmt: skip


def test_an_idle_child_stops_and_carries_no_secrets(embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKALIKE_TOKEN", "s3cret-token")
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", "s3cret-key")
    worker = ChildEmbedder(embedder.spec, idle_s=1.0)  # as Embedder(background_idle_s=1.0).background() makes it
    try:
        worker.submit([encode(photo(PHOTO_NAMES[0]), "jpeg")]).result(timeout=300)
        pid = worker.pid
        assert pid is not None
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"s3cret" not in environ and b"PATH=" in environ
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert worker.pid is None and not Path(f"/proc/{pid}").exists()  # stopped (and reaped) 1 s after its page
    finally:
        worker.close()


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_model_the_child_cannot_load_fails_with_why_logged_as_the_server_logs(
    embedder: Embedder, tmp_path: Path, fmt: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """The failure reaches the operation, and the child's own log line is in the server's ``--log-format``
    (it inherits stderr: a plain-text line in a JSON log breaks the operator's pipeline)."""
    root_level = logging.getLogger().level
    handler = configure_logging("info", fmt)
    worker = ChildEmbedder({**embedder.spec, "model_path": str(tmp_path / "gone.pt")}, idle_s=60)
    try:
        with pytest.raises(LookalikeError) as err:
            worker.submit([encode(photo(PHOTO_NAMES[0]), "jpeg")])
        assert err.value.reason == "BACKGROUND_EMBEDDER_FAILED" and "could not load the model" in err.value.message
        assert worker.pid is None
    finally:
        worker.close()
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(root_level)
    lines = [line for line in capfd.readouterr().err.splitlines() if "gone.pt" in line]
    assert len(lines) == 1, lines  # the child's line (the server's error is raised, not logged here)
    if fmt == "json":
        line = json.loads(lines[0])
        assert line["level"] == "error" and line["logger"] == "lookalike.background_embedder", line
        assert "could not load the model" in line["message"]
    else:
        assert " ERROR lookalike.background_embedder: could not load the model" in lines[0], lines[0]


def test_inline_and_gpu_servers_embed_on_their_own_workers() -> None:
    e = Embedder(default_model_path(), device="cpu", max_wait_s=0.0, background="inline")
    try:
        images = page()
        out = e.background().submit(images).result()
        assert isinstance(e.background(), InlineEmbedder)
        assert out.rows == [0, 1, 3, 5, 6] and out.errors == {4: "IMAGE_UNDECODABLE"}
        np.testing.assert_allclose(out.vectors, e.embed([d for d in images if d and d != b"not an image"]),
                                   atol=1e-6)  # fmt: skip
    finally:
        e.close()
    with pytest.raises(ValueError, match="background must be one of process, inline"):
        Embedder(default_model_path(), device="cpu", background="thread")
