"""The CLI says what happened and what to type next, in one line, with an exit code a script can act on.

Before: ``add`` to a missing database printed a traceback or one failure per image, naming the RPC
``CreateDatabase``; ``db get`` of a missing database said "create it first"; a mistyped flag
exited 2 like a refused request, with no suggestion; ``search`` hid each hit's source; ``--json``
wrote counts as strings (``"image_count": "7"``) and some keys in camelCase.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli import run, serving
from lookalike.client import LookalikeClient
from photos import crop, encode, photo

SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(tmp_path_factory.mktemp("data"), "--export-root", str(tmp_path_factory.getbasetemp())) as (_, addr):
        yield addr


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pictures")
    for name in ("chelsea", "coffee", "rocket"):
        (folder / f"{name}.jpg").write_bytes(encode(photo(name)))
    (folder / "query.jpg").write_bytes(encode(crop(photo("rocket"), 0.7, 0.1)))
    return folder


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def snake_case_keys(data: Any, path: str = "") -> None:
    """Every key a script reads is snake_case; ``attributes`` hold the user's own keys and are skipped."""
    if isinstance(data, dict):
        for key, value in data.items():
            assert SNAKE.match(key), f"{path}.{key} is not snake_case"
            if key != "attributes":
                snake_case_keys(value, f"{path}.{key}")
    elif isinstance(data, list):
        for item in data:
            snake_case_keys(item, path + "[]")


def test_add_or_search_in_a_missing_database_names_the_command_that_creates_it(address, pictures):
    for argv in (("add", "--db", "nosuch", str(pictures / "coffee.jpg")),
                 ("search", "--db", "nosuch", str(pictures / "query.jpg"))):  # fmt: skip
        proc = run(*argv, "--server", address)
        assert proc.returncode == 2, proc.stderr
        line = one_line(proc.stderr)
        assert "`lookalike db create nosuch`" in line and "does not exist" in line
        assert "CreateDatabase" not in line and "Traceback" not in proc.stderr


def test_get_or_delete_of_a_missing_database_says_it_does_not_exist_and_not_to_create_it(address):
    for action in ("get", "delete", "snapshot"):
        proc = run("db", action, "nosuch", "--server", address)
        assert proc.returncode == 2, proc.stderr
        line = one_line(proc.stderr)
        assert "'nosuch' does not exist" in line
        assert "create" not in line.lower() and "CreateDatabase" not in line


def test_search_shows_each_hits_source(address, pictures):
    with LookalikeClient(address) as c:
        c.create_database("sourced")
        for name in ("chelsea", "coffee", "rocket"):
            path = str(pictures / f"{name}.jpg")
            c.set_image("sourced", name, image=(pictures / f"{name}.jpg").read_bytes(),
                        attributes={"source": path, "colour": "mixed"})  # fmt: skip
    query = str(pictures / "query.jpg")
    text = run("search", "--db", "sourced", query, "--top-k", "2", "--server", address)
    assert text.returncode == 0, text.stderr
    rank, score, group, intra, source = text.stdout.splitlines()[0].split("\t")
    assert (rank, group, intra, source) == ("1", "rocket", "0", str(pictures / "rocket.jpg"))
    data = json.loads(run("search", "--db", "sourced", query, "--top-k", "2", "--server", address, "--json").stdout)
    best = data["hits"][0]
    assert best["source"] == str(pictures / "rocket.jpg")
    assert best["attributes"].items() >= {"source": str(pictures / "rocket.jpg"), "colour": "mixed"}.items()
    assert isinstance(data["searched_count"], int) and data["searched_count"] == 3
    snake_case_keys(data)


def test_json_counts_are_numbers_times_are_iso_and_keys_snake_case(address, pictures, tmp_path):
    srv = ("--server", address, "--json")
    created = json.loads(run("db", "create", "counted", *srv).stdout)
    assert created["image_count"] == 0 and created["group_count"] == 0  # zero values are printed, as numbers
    with LookalikeClient(address) as c:
        for i, name in enumerate(("chelsea", "coffee")):
            c.set_image("counted", f"g{i}", image=(pictures / f"{name}.jpg").read_bytes())
    listed = [d for d in json.loads(run("db", "list", *srv).stdout) if d["name"] == "counted"]
    got = json.loads(run("db", "get", "counted", *srv).stdout)
    snap = json.loads(run("db", "snapshot", "counted", *srv).stdout)
    exported = json.loads(run("db", "export", "counted", str(tmp_path / "copy"), *srv).stdout)
    imported = json.loads(run("db", "import", "counted2", str(tmp_path / "copy"), *srv).stdout)
    for d in (*listed, got, imported):
        assert d["image_count"] == 2 and d["group_count"] == 2 and d["dimension"] == 1280, d
        assert datetime.datetime.fromisoformat(d["create_time"].replace("Z", "+00:00")).year >= 2024
    assert snap["image_count"] == 2 and isinstance(snap["size_bytes"], int) and snap["size_bytes"] > 0
    assert isinstance(snap["snapshot_time"], str) and snap["snapshot_time"].endswith("Z")
    assert exported["image_count"] == 2 and isinstance(exported["size_bytes"], int)
    for data in (created, listed, got, snap, exported, imported):
        snake_case_keys(data)


def test_add_summary_counts_what_was_stored_and_what_was_there(address, pictures):
    assert run("db", "create", "adds", "--server", address).returncode == 0
    files = [str(pictures / f"{n}.jpg") for n in ("chelsea", "coffee", "rocket")]
    first = run("add", "--db", "adds", *files, "--server", address, "--json")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert {k: summary[k] for k in ("received", "registered", "already_present", "failed")} == {
        "received": 3, "registered": 3, "already_present": 0, "failed": 0}  # fmt: skip
    assert summary["images_per_s"] > 0 and summary["failures"] == []
    assert summary["keys"] == [{"group_id": n, "intra_id": 0} for n in ("chelsea", "coffee", "rocket")]
    snake_case_keys(summary)

    again = run("add", "--db", "adds", *files, "--server", address)  # the server's retry window answers
    assert again.returncode == 0 and again.stdout.startswith("registered 0 of 3 images (3 already present)")
    resumed = run("add", "--db", "adds", "--resume", *files, "--server", address)  # not even sent
    assert resumed.returncode == 0 and resumed.stdout.startswith("registered 0 of 3 images (3 already present)")
    with LookalikeClient(address) as c:
        assert c.get_database("adds").image_count == 3


def test_a_mistyped_flag_or_choice_suggests_the_closest_and_exits_64(pictures):
    proc = run("add", "--db", "d", "--gruop", "a", str(pictures / "coffee.jpg"), "--server", "127.0.0.1:1")
    assert proc.returncode == 64
    assert "unknown option --gruop; did you mean --group?" in one_line(proc.stderr)
    proc = run("search", "--db", "d", str(pictures / "query.jpg"), "--topk", "3")
    assert proc.returncode == 64 and "did you mean --top-k?" in one_line(proc.stderr)
    proc = run("db", "lst")
    assert proc.returncode == 64 and "did you mean list?" in one_line(proc.stderr)
    proc = run("serach", "--db", "d", "q.jpg")
    assert proc.returncode == 64 and "did you mean search?" in one_line(proc.stderr)
    proc = run("db", "get")  # accepted by argparse, still a usage error
    assert proc.returncode == 64 and "lookalike db get NAME" in one_line(proc.stderr)


def test_trainer_commands_still_parse_their_own_options():
    proc = run("eval", "--help")
    assert proc.returncode == 0 and "--model" in proc.stdout
