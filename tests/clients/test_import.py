"""`lookalike add` as a bulk importer: folders by label, image lists, resume, idempotent re-runs, failures."""

from __future__ import annotations

import json
import subprocess
import sys

from photos import crop, encode, photo

LOOKALIKE = [sys.executable, "-m", "lookalike"]


def add(address: str, *args: str) -> tuple[int, dict]:
    proc = subprocess.run([*LOOKALIKE, "add", *args, "--server", address, "--json"], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    return proc.returncode, json.loads(proc.stdout)


def test_labelled_folders_lists_resume_and_failures(grpc_server, client, db_name, tmp_path):
    address = grpc_server.address
    for label, names in {"cats": ["chelsea", "astronaut"], "space": ["rocket", "hubble_deep_field"]}.items():
        (tmp_path / "shop" / label).mkdir(parents=True)
        for n in names:
            (tmp_path / "shop" / label / f"{n}.jpg").write_bytes(encode(photo(n)))
    rc, out = add(address, "--db", db_name, "--group-from", "parent", str(tmp_path / "shop"))
    assert rc == 0 and out["registered"] == 4 and out["images_per_s"] > 0
    groups = sorted({i.key.group_id for i in client.list_images(db_name)})
    assert groups == ["cats", "space"]
    stored = {i.attributes["source"] for i in client.list_images(db_name)}
    assert stored == {str(p) for p in (tmp_path / "shop").rglob("*.jpg")}  # the source is kept as an attribute

    # An image list in PAI's filelist form, with a broken and a missing entry.
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "coffee.jpg").write_bytes(encode(photo("coffee")))
    (tmp_path / "extra" / "crop.jpg").write_bytes(encode(crop(photo("coffee"), 0.8)))
    (tmp_path / "extra" / "bad.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "extra" / "list.txt").write_text("# product photos\ncoffee.jpg,sku-1,5\ncrop.jpg,sku-1\nbad.jpg\n"
                                                 "gone.jpg,sku-2\n")  # fmt: skip
    rc, out = add(address, "--db", db_name, str(tmp_path / "extra" / "list.txt"))
    assert rc == 3 and out["registered"] == 2 and out["failed"] == 2
    assert {f["reason"] for f in out["failures"]} == {"IMAGE_UNDECODABLE", "UNREADABLE"}
    assert sorted((i.key.intra_id) for i in client.list_images(db_name, group_id="sku-1")) == [5, 6]

    # Re-running the same import stores nothing twice (request ids); --resume does not even send them.
    before = client.get_database(db_name).image_count
    rc, out = add(address, "--db", db_name, "--group-from", "parent", str(tmp_path / "shop"))
    assert rc == 0 and client.get_database(db_name).image_count == before
    rc, out = add(address, "--db", db_name, "--resume", "--group-from", "parent", str(tmp_path / "shop"))
    assert rc == 0 and out["already_present"] == 4 and out["registered"] == 0
