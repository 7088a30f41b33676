"""The product's loop, end to end, through the real CLI: register with the default model, train a new encoder
on the same unlabeled images, serve both, reindex without re-uploading, search with the new model throughout.

The reindexed vectors are compared with a fresh registration under the new model: equal (1e-5) where the
database kept originals, within cosine 0.995 where it kept thumbnails.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from cli import run, serving
from lookalike.client import LookalikeClient
from lookalike.v1 import match_service_pb2 as pb
from lookalike.v1 import types_pb2
from photos import PHOTO_NAMES, crop, encode, photo, resize


def write_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for name in PHOTO_NAMES:
        arr = photo(name)
        for j, variant in enumerate((arr, crop(arr, 0.8, 0.05), resize(arr, 0.6))):
            path = folder / f"{name}-{j}.jpg"
            path.write_bytes(encode(variant, quality=90))
            paths.append(path)
    return paths


def by_source(c: LookalikeClient, db: str) -> dict[str, np.ndarray]:
    out = {}
    for img in c.list_images(db):
        got = c.get_image(db, img.key.group_id, img.key.intra_id, include_vector=True)
        out[Path(img.attributes["source"]).name] = np.asarray(got.vector.values)
    return out


@pytest.mark.slow
def test_train_serve_reindex_search(tmp_path: Path) -> None:
    images = write_images(tmp_path / "photos")
    data = tmp_path / "data"
    with serving(data) as (_, address):
        server = ("--server", address)
        assert run("db", "create", "shop", "--keep", "original", *server).returncode == 0
        assert run("db", "create", "thumbs", *server).returncode == 0  # the server's --keep: thumbnail
        for db in ("shop", "thumbs"):
            added = run("add", "--db", db, "--quiet", str(tmp_path / "photos"), *server)
            assert added.returncode == 0, added.stderr
    trained = run("train", "--config", "tiny", "--data", str(tmp_path / "photos"), "--output", str(tmp_path / "run"),
                  "train.epochs=1", timeout=900)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    model = tmp_path / "run" / "epoch_1_export.pt"
    with serving(data, "--model", "base=builtin", "--model", f"tuned={model}") as (_, address):
        server = ("--server", address)
        listed = run("db", "list", *server)
        assert "model base" in listed.stdout and "keeps original" in listed.stdout, listed.stdout
        failures: list[BaseException] = []
        searches = [0]
        stop = threading.Event()

        def searcher() -> None:
            with LookalikeClient(address) as s:
                while not stop.is_set():
                    try:
                        assert s.search("shop", image=images[0].read_bytes(), top_k=3).hits
                        searches[0] += 1
                    except BaseException as exc:
                        failures.append(exc)
                        return

        thread = threading.Thread(target=searcher)
        thread.start()
        try:
            results = {}
            for db in ("shop", "thumbs"):
                done = run("db", "reindex", db, "--model", "tuned", "--json", *server, timeout=600)
                assert done.returncode == 0, done.stderr
                results[db] = json.loads(done.stdout)
        finally:
            stop.set()
            thread.join()
        assert not failures, failures
        assert searches[0] > 0
        for r in results.values():
            assert r["state"] == "SUCCEEDED" and r["reindex"]["switched"], r
            assert int(r["reindex"]["reindexed_count"]) == len(images) and not r["reindex"].get("missing_count")
        with LookalikeClient(address) as c:
            names = sorted(p.name for p in images)
            sent = [types_pb2.Image(content=(tmp_path / "photos" / n).read_bytes()) for n in names]
            resp = c.match_stub.Embed(pb.EmbedRequest(images=sent, model="tuned"))
            want = dict(zip(names, (np.asarray(v.values) for v in resp.embeddings), strict=True))
            shop, thumbs = by_source(c, "shop"), by_source(c, "thumbs")
            assert sorted(shop) == names and sorted(thumbs) == names
            for n in names:
                np.testing.assert_allclose(shop[n], want[n], atol=1e-5, err_msg=n)
            cosines = [float(np.dot(thumbs[n], want[n])) for n in names]
            assert float(np.median(cosines)) >= 0.995 and min(cosines) >= 0.98, cosines
            for path in images:  # every image is found first by its own bytes under the new model
                data = path.read_bytes()
                hits = c.search("shop", image=data, top_k=1).hits  # ("cat" and "chelsea" are the same pixels)
                assert hits[0].attributes["lookalike.sha256"] == hashlib.sha256(data).hexdigest()
            assert c.get_database("shop").model_name == "tuned"
            assert c.get_database("shop@previous").model_name == "base"
        back = run("db", "rollback", "shop", *server)
        assert back.returncode == 0 and "back on model base" in back.stdout, back.stdout + back.stderr
