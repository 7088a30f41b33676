"""A database that kept nothing (``--keep none``): the server cannot re-embed it alone, says so, and
``lookalike db reindex --from-folder`` uploads the originals by their recorded source, under their keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from cli import run, serving
from lookalike.client import LookalikeClient
from lookalike.v1 import match_service_pb2 as pb
from lookalike.v1 import types_pb2
from tiny_models import picture, write_models


def test_reindex_of_a_database_that_kept_nothing_uploads_from_the_folder(tmp_path: Path) -> None:
    models = write_models(tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(12):
        (photos / f"p{i:02d}.png").write_bytes(picture(i))
    flags = ("--model", f"old={models['old']}", "--model", f"new={models['new']}")
    with serving(tmp_path / "data", *flags) as (_, address):
        server = ("--server", address)
        assert run("db", "create", "bare", "--keep", "none", *server).returncode == 0
        added = run("add", "--db", "bare", "--quiet", str(photos), *server)
        assert added.returncode == 0, added.stderr
        refused = run("db", "reindex", "bare", "--model", "new", *server)
        assert refused.returncode != 0 and "REINDEX_INCOMPLETE" in refused.stderr, refused.stderr
        assert "12 images" in refused.stderr and "--from-folder" in refused.stderr
        listed = run("db", "list", *server).stdout
        assert "bare\t12 images" in listed and "model old" in listed and "~reindex" not in listed, listed
        moved = tmp_path / "moved"  # the files moved since `add`: found under the folder by their names
        shutil.move(photos, moved)
        done = run("db", "reindex", "bare", "--model", "new", "--from-folder", str(moved), "--json", *server)
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert int(report["reindex"]["missing_count"]) == 12 and report["uploaded_from_folder"] == 12
        assert report["upload_problems"] == []
        with LookalikeClient(address) as c:
            db = c.get_database("bare")
            assert (db.model_name, db.image_count, db.keep) == ("new", 12, "none")
            names = sorted(p.name for p in moved.iterdir())
            sent = [types_pb2.Image(content=(moved / n).read_bytes()) for n in names]
            want = c.match_stub.Embed(pb.EmbedRequest(images=sent, model="new")).embeddings
            old_keys = {Path(i.attributes["source"]).name: (i.key.group_id, i.key.intra_id)
                        for i in c.list_images("bare@previous")}  # fmt: skip
            for name, vector in zip(names, want, strict=True):
                key = old_keys[name]  # the same key as before the reindex
                got = c.get_image("bare", *key, include_vector=True)
                np.testing.assert_allclose(np.asarray(got.vector.values), np.asarray(vector.values), atol=1e-5)
                assert Path(got.attributes["source"]).name == name  # its attributes came along
