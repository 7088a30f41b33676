"""The newcomer's three steps: train on a folder of unlabeled photos, serve the export, search with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from imagefolder import write_image_folder
from photos import encode, photo

from lookalike.cli import main as lookalike


@pytest.mark.slow
def test_trained_export_is_served_and_searchable(tmp_path: Path) -> None:
    from lookalike.client import LookalikeClient
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    folder = tmp_path / "unlabeled"
    write_image_folder(folder, 24)
    out = tmp_path / "run"
    assert lookalike(["train", "--config", "tiny", "--data", str(folder), "--output", str(out), "train.epochs=1"]) == 0
    model = out / "epoch_1_export.pt"
    assert model.is_file()

    server = create_server(ServerConfig(port=0, data_dir=tmp_path / "data", model=model))
    try:
        with LookalikeClient(server.address) as c:
            db = c.create_database("trained")
            assert db.dimension == 512  # resnet10t features, from the model file's metadata
            names = ("chelsea", "coffee", "astronaut", "rocket")
            for name in names:
                c.set_image("trained", name, image=encode(photo(name)))
            for name in names:
                hits = c.search("trained", image=encode(photo(name)), top_k=4).hits
                assert hits[0].key.group_id == name and hits[0].score == pytest.approx(1.0, abs=1e-4)
                assert len(hits) == 4 and hits[1].score < hits[0].score
            m = c.match(encode(photo("chelsea")), encode(photo("rocket")))
            assert m.model and np.isfinite(m.cosine)
    finally:
        server.stop(0)
