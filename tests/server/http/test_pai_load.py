"""PAI ``load`` is atomic: a save that is missing, truncated, corrupt or of another model changes nothing.

Before, ``load`` deleted the live database and then imported; any failure left the user with
nothing. Now the service imports under a temporary name, verifies, and swaps in one logged
step; each case here checks the live data afterwards, and a load interrupted by a crash is
dropped at the next start.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import requests
from photos import encode, photo


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def pai(tmp_path_factory):
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    data = tmp_path_factory.mktemp("load-data")
    root = tmp_path_factory.mktemp("load-root")
    server = create_server(ServerConfig(port=0, http_port=0, snapshot_interval_s=0, data_dir=data, export_root=root,
                                        pai_init_shared=True))  # fmt: skip
    url = f"http://127.0.0.1:{server.http_port}/api/predict/load"
    yield server, url, root
    server.stop(0)


def fn(url: str, name: str, **params) -> tuple[int, dict]:
    r = requests.post(url, data=json.dumps({"function_name": name, "function_params": params}), timeout=120)
    return r.status_code, r.json()


def live_state(url: str, db: str) -> list[tuple[str, int, str]]:
    """What a user sees of the database: every entry of both groups and the best hit for a photo."""
    _, a = fn(url, "db_get", database_name=db, group_id="cat")
    _, s = fn(url, "db_search", database_name=db, image=b64(encode(photo("chelsea"))), search_topk=3)
    assert s["success"], s
    return [(e["group_id"], e["intra_id"], "") for e in a["entries"]] + [
        (h["group_id"], h["intra_id"], f"{h['score']:.5f}") for h in s["results"]
    ]


def fill(url: str, db: str) -> None:
    assert fn(url, "add", database_name=db)[0] == 200
    for group, name in (("cat", "chelsea"), ("cat", "coffee"), ("rocket", "rocket")):
        status, body = fn(url, "db_set", database_name=db, group_id=group, image=b64(encode(photo(name))))
        assert status == 200, body


def saved_files(root: Path, db: str) -> list[Path]:
    return sorted(
        p
        for p in (root / db).rglob("*")
        if p.is_file() and p.name != "lookalike-export.json" and "images" not in p.relative_to(root / db).parts
    )  # the rows, not the kept images beside them


def damage(how: str, root: Path, db: str) -> None:
    from lookalike.server.storage.blobs import LocalBlobStore
    from lookalike.server.storage.segments import get_manifest, put_manifest

    files = saved_files(root, db)
    biggest = max(files, key=lambda p: p.stat().st_size)
    if how == "truncated":
        biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
    elif how == "corrupt":
        data = bytearray(biggest.read_bytes())
        data[len(data) // 2] ^= 0x40
        biggest.write_bytes(bytes(data))
    elif how == "other-model":  # a save written by a server running another model (checksums valid)
        store = LocalBlobStore(root / db)
        manifest = get_manifest(store, "lookalike-export.json")
        manifest["database"]["meta"]["model"]["digest"] = "0" * 64
        put_manifest(store, "lookalike-export.json", manifest)


@pytest.mark.parametrize(
    "how, status, reason",
    [("missing", 404, "EXPORT_NOT_FOUND"), ("truncated", 400, "EXPORT_CORRUPT"), ("corrupt", 400, "EXPORT_CORRUPT"),
     ("other-model", 412, "MODEL_MISMATCH")],
)  # fmt: skip
def test_a_failed_load_leaves_the_live_database_as_it_was(pai, how, status, reason):
    server, url, root = pai
    db = f"live-{how}"
    fill(url, db)
    assert fn(url, "init", backend="local", root_path=str(root))[0] == 200
    if how != "missing":
        assert fn(url, "save", database_name=db)[0] == 200
        damage(how, root, db)
    fn(url, "db_set", database_name=db, group_id="cat", image=b64(encode(photo("astronaut"))))  # after the save
    before = live_state(url, db)
    got, body = fn(url, "load", database_name=db)
    assert (got, body["error_code"]) == (status, reason), body
    assert live_state(url, db) == before
    names = [d.name for d in server.service.all_databases()]
    assert db in names and not any(d.name.startswith("~") for d in server.service.catalog.list())  # no partial copy


def test_a_good_load_replaces_the_live_database(pai):
    _, url, root = pai
    db = "live-good"
    fill(url, db)
    assert fn(url, "init", backend="local", root_path=str(root))[0] == 200
    assert fn(url, "save", database_name=db)[0] == 200
    saved = live_state(url, db)
    fn(url, "db_delete", database_name=db, group_id="rocket")
    fn(url, "db_set", database_name=db, group_id="cat", image=b64(encode(photo("astronaut"))))
    assert live_state(url, db) != saved
    status, body = fn(url, "load", database_name=db)
    assert status == 200 and body["loaded"] == {db: 3}, body
    assert live_state(url, db) == saved


def test_a_load_interrupted_by_a_crash_is_dropped_at_the_next_start(tmp_path):
    """The staging copy is logged like any database; a restart finds it unfinished and drops it."""
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig
    from lookalike.server.core.backends.exports import read_export_for

    config = ServerConfig(port=0, snapshot_interval_s=0, data_dir=tmp_path / "data", export_root=tmp_path)
    server = create_server(config)
    service = server.service
    service.create_database("d")
    service.set_image("d", "cat", 0, encode(photo("chelsea")), None)
    service.export_database("d", str(tmp_path / "save"))
    service.set_image("d", "cat", 1, encode(photo("coffee")), None)
    exported = read_export_for(str(tmp_path / "save"), None, [(service.model, service.dimension)])
    service.catalog.import_("~load-00000000-d", exported)  # the crash comes before the swap
    server.stop(0, snapshot=False)
    again = create_server(config)
    try:
        assert [db.name for db in again.service.catalog.list()] == ["d"]
        assert again.service.get_database("d").size == 2
    finally:
        again.stop(0)


def test_pai_databases_keep_thumbnails_and_a_load_brings_them_back(pai):
    """PAI ``add`` creates a database with the server's --keep (thumbnail); save and load carry the kept copies."""
    server, url, root = pai
    db = "kept-by-pai"
    fill(url, db)
    assert server.service.get_database(db).keep == "thumbnail"
    before = server.service.kept_image(db, "rocket", 0, "thumbnail")
    assert before.media_type == "image/jpeg" and len(before.data) > 1000
    assert fn(url, "init", backend="local", root_path=str(root))[0] == 200
    assert fn(url, "save", database_name=db)[0] == 200
    assert list((root / db / "images").glob("??/*"))  # the kept copies travel in the save
    fn(url, "db_delete", database_name=db, group_id="rocket")
    status, body = fn(url, "load", database_name=db)
    assert status == 200, body
    after = server.service.kept_image(db, "rocket", 0, "thumbnail")
    assert (after.data, after.digest) == (before.data, before.digest)
