"""An export edited by hand is checked like a write: a bad record fails the import, naming it, and creates nothing.

Before, such an import answered OK and Search, ListImages and GetImage on the new database
answered INTERNAL afterwards, also after a restart. Checksums are recomputed here, so only
the record checks can catch the damage.
"""

from __future__ import annotations

import numpy as np
import pytest
from lookalike.client import ClientError, LookalikeClient
from photos import encode

EXPORT = "lookalike-export.json"


@pytest.fixture(scope="module")
def served(tmp_path_factory, photos):
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    config = ServerConfig(
        port=0,
        snapshot_interval_s=0,
        data_dir=tmp_path_factory.mktemp("import-data"),
        export_root=tmp_path_factory.getbasetemp(),
    )  # exports go to each test's tmp_path
    running = create_server(config)
    with LookalikeClient(running.address) as c:
        c.create_database("src")
        for i, name in enumerate(("chelsea", "coffee", "rocket")):
            c.set_image("src", f"g{i}", image=encode(photos[name]), attributes={"source": f"{name}.jpg"})
        yield running, c, config
    running.stop(0)


def edited(tmp_path, client, how: str) -> str:
    from lookalike.server.storage.blobs import LocalBlobStore
    from lookalike.server.storage.segments import (
        FileRef,
        as_bytes,
        get_manifest,
        load_array,
        put_file,
        put_json,
        put_manifest,
    )

    where = tmp_path / how
    client.export_database("src", str(where))
    store = LocalBlobStore(where)
    manifest = get_manifest(store, EXPORT)
    entry = manifest["database"]
    if how == "int-attribute":
        entry["attributes"] = put_json(store, "data/attrs-edit", {"0": {"source": 7}}).to_json()
    elif how == "huge-attribute":
        entry["attributes"] = put_json(store, "data/attrs-edit", {"0": {"source": "x" * 200_000}}).to_json()
    elif how == "control-characters-in-group":
        entry["meta"]["group_names"][0] = "a\x00\nb"
    elif how == "negative-intra-id":
        ref = entry["per_row"]["intra"][0]
        rows = np.array(load_array(store, FileRef.from_json(ref), np.int64, (int(entry["n"]),)))
        rows[1] = -5
        entry["per_row"]["intra"][0] = put_file(store, ref["name"], as_bytes(rows)).to_json()
    put_manifest(store, EXPORT, manifest)
    return str(where)


@pytest.mark.parametrize("how", ["int-attribute", "huge-attribute", "control-characters-in-group",
                                 "negative-intra-id"])  # fmt: skip
def test_a_bad_record_fails_the_import_and_creates_nothing(served, tmp_path, how):
    running, client, _ = served
    source = edited(tmp_path, client, how)
    with pytest.raises(ClientError) as info:
        client.import_database(f"copy-{how}", source)
    assert (info.value.code, info.value.reason) == ("INVALID_ARGUMENT", "EXPORT_RECORD_INVALID")
    assert "record " in info.value.message and "nothing was imported" in info.value.message
    with pytest.raises(ClientError) as missing:
        client.get_database(f"copy-{how}")
    assert missing.value.reason == "DATABASE_NOT_FOUND"
    assert client.search("src", image=encode(np.zeros((64, 64, 3), np.uint8) + 128), top_k=3).hits  # still serving


def test_an_unedited_export_imports(served, tmp_path):
    _, client, _ = served
    client.export_database("src", str(tmp_path / "plain"))
    db = client.import_database("copy-plain", str(tmp_path / "plain"))
    assert db.image_count == 3
    assert {i.attributes["source"] for i in client.list_images("copy-plain")} == {"chelsea.jpg", "coffee.jpg",
                                                                                   "rocket.jpg"}  # fmt: skip
