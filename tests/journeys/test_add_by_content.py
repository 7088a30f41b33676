"""``lookalike add`` goes by what a file holds, not how its path is spelled.

Before, the importer's request id was (database, path): the same file added to a second group
printed ``registered 1`` with the first group's key and stored nothing; ``--resume`` matched the
``source`` string, so ``cat/`` then ``/abs/cat/`` stored every image twice; and a plain re-run
printed ``registered 300 of 300`` when nothing new was stored.
"""

from __future__ import annotations

import json

from cli import picture, run, serving, stored_keys
from lookalike.client import LookalikeClient
from photos import encode, photo

NAMES = ["chelsea", "coffee", "astronaut", "camera", "rocket", "hubble_deep_field"]


def added(*args: str) -> dict:
    done = run("add", "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_same_file_into_a_second_group_is_stored_there(tmp_path):
    x = picture(tmp_path)
    with serving(tmp_path / "data") as (_, address):
        srv = ("--server", address)
        assert run("db", "create", "d", *srv).returncode == 0
        first = added("--db", "d", "--group", "a", str(x), *srv)
        assert (first["registered"], first["keys"]) == (1, [{"group_id": "a", "intra_id": 0}])
        second = run("add", "--db", "d", "--group", "b", str(x), *srv)
        assert second.returncode == 0 and "registered 1 of 1 images" in second.stdout, second.stdout
        assert stored_keys(address, "d") == [("a", 0), ("b", 0)]
        with LookalikeClient(address) as c:
            a, b = c.get_image("d", "a", 0), c.get_image("d", "b", 0)
        assert a.attributes["lookalike.sha256"] == b.attributes["lookalike.sha256"]  # the system attribute


def test_resume_and_reruns_treat_every_spelling_of_a_folder_as_one(tmp_path, monkeypatch):
    cat = tmp_path / "cat"
    cat.mkdir()
    for name in NAMES:
        (cat / f"{name}.jpg").write_bytes(encode(photo(name)))
    link = tmp_path / "link"
    link.symlink_to(cat, target_is_directory=True)
    with serving(tmp_path / "data") as (_, address):
        srv = ("--server", address, "--group", "cats")
        assert run("db", "create", "f", "--server", address).returncode == 0
        monkeypatch.chdir(tmp_path)  # so "cat/" and "./cat" are relative spellings
        first = added("--db", "f", "cat/", *srv)
        assert (first["registered"], first["already_present"]) == (6, 0)
        for spelling in ["./cat", str(cat) + "/", str(link)]:
            again = added("--db", "f", "--resume", spelling, *srv)
            assert (again["registered"], again["already_present"], again["received"]) == (0, 6, 6), spelling
        rerun = run("add", "--db", "f", "cat", *srv)  # without --resume: the server's retry window answers
        assert rerun.returncode == 0 and "registered 0 of 6 images (6 already present)" in rerun.stdout, rerun.stdout
        assert len(stored_keys(address, "f")) == 6
        (cat / "new.png").write_bytes(encode(photo("coins"), "PNG"))
        more = added("--db", "f", "--resume", str(link), *srv)
        assert (more["registered"], more["already_present"]) == (1, 6)
        assert len(stored_keys(address, "f")) == 7
