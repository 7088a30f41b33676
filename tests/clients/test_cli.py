"""The newcomer's path through the real CLI: serve, create a database, add a folder, search."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from photos import crop, encode, photo

LOOKALIKE = [sys.executable, "-m", "lookalike"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*LOOKALIKE, *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"lookalike {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


_DATA_DIRS: dict[int, Path] = {}


def served_data_dir(proc: subprocess.Popen) -> Path:
    return _DATA_DIRS[proc.pid]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data = tmp_path_factory.mktemp("serve-data")
    proc = subprocess.Popen(
        [
            *LOOKALIKE,
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(data),
            "--log-level",
            "warning",
            "--export-root",
            str(tmp_path_factory.getbasetemp()),
        ],  # exports go to each test's tmp_path
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()  # "lookalike: listening on HOST:PORT", the first line on stdout
    if not line.startswith("lookalike: listening on"):
        proc.kill()
        raise AssertionError(f"server did not start: {line}{proc.stderr.read()}")
    _DATA_DIRS[proc.pid] = data
    yield proc, line.rsplit(" ", 1)[1].strip()
    if proc.poll() is None:
        proc.kill()


def test_serve_add_folder_search_match_and_graceful_stop(served, tmp_path):
    proc, address = served
    folder = tmp_path / "catalogue"
    folder.mkdir()
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        (folder / f"{name}.jpg").write_bytes(encode(photo(name)))
    (folder / "notes.txt").write_text("not an image, skipped by suffix")
    (folder / "broken.png").write_bytes(b"\x89PNG broken")
    query = tmp_path / "query.jpg"
    query.write_bytes(encode(crop(photo("rocket"), 0.6, 0.2), quality=70))

    srv = ["--server", address, "--json"]
    created = json.loads(run("db", "create", "shop", *srv).stdout)
    assert created["name"] == "shop" and created["dimension"] == 1280

    added = run("add", "--db", "shop", str(folder), *srv, check=False)
    assert added.returncode == 3  # one failure is reported, the rest registered
    summary = json.loads(added.stdout)
    assert summary["registered"] == 4 and summary["failed"] == 1
    assert summary["failures"][0]["reason"] == "IMAGE_UNDECODABLE"
    assert summary["failures"][0]["source"].endswith("broken.png")

    hits = json.loads(run("search", "--db", "shop", str(query), "--top-k", "2", *srv).stdout)["hits"]
    assert [h["group_id"] for h in hits][0] == "rocket" and len(hits) == 2

    listed = json.loads(run("db", "list", *srv).stdout)
    assert [(d["name"], int(d["image_count"])) for d in listed] == [("shop", 4)]

    m = json.loads(run("match", str(folder / "rocket.jpg"), str(query), *srv).stdout)
    assert 0.5 < m["similarity"] <= 1.0

    human = run("search", "--db", "shop", str(query), "--server", address).stdout
    assert human.splitlines()[0].split("\t")[2] == "rocket"

    bad = run("db", "create", "../x", "--server", address, check=False)
    assert bad.returncode == 2 and "DATABASE_NAME_INVALID" in bad.stderr

    snap = json.loads(run("db", "snapshot", "shop", *srv).stdout)
    assert int(snap["image_count"]) == 4 and int(snap["size_bytes"]) > 4 * 1280 * 4
    exported = json.loads(run("db", "export", "shop", str(tmp_path / "copy"), *srv).stdout)
    assert int(exported["image_count"]) == 4 and (tmp_path / "copy" / "lookalike-export.json").is_file()
    imported = json.loads(run("db", "import", "shop2", str(tmp_path / "copy"), *srv).stdout)
    assert imported["name"] == "shop2" and int(imported["image_count"]) == 4
    hits2 = json.loads(run("search", "--db", "shop2", str(query), "--top-k", "2", *srv).stdout)["hits"]
    assert hits2 == hits  # the copy answers exactly like the original
    missing = run("db", "import", "shop3", str(tmp_path / "nowhere"), "--server", address, check=False)
    assert missing.returncode == 2 and "EXPORT_NOT_FOUND" in missing.stderr

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    # The graceful stop took a final snapshot: a new server on the same directory has both databases.
    data = Path(served_data_dir(proc))
    assert (data / "snapshots" / "MANIFEST").is_file()


def test_client_commands_start_fast_without_torch_and_explain_unreachable_server():
    code = (
        "import sys, time; t = time.perf_counter(); from lookalike.cli import main; "
        "rc = main(['db', 'list', '--server', '127.0.0.1:1']); "
        "print(rc, 'torch' in sys.modules, time.perf_counter() - t)"
    )
    env = {**os.environ, "LOOKALIKE_SERVER": ""}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, cwd=Path(__file__).parent
    )
    rc, torch_loaded, seconds = proc.stdout.split()
    assert rc == "4" and torch_loaded == "False", proc.stderr
    assert float(seconds) < 2.0
    assert "cannot reach a Lookalike server at 127.0.0.1:1" in proc.stderr
    assert "lookalike serve" in proc.stderr


def test_add_with_intra_id_needs_a_single_image(tmp_path):
    for n in ("a", "b"):
        (tmp_path / f"{n}.jpg").write_bytes(b"x")
    proc = run("add", "--db", "d", "--intra-id", "3", str(tmp_path), "--server", "127.0.0.1:1", check=False)
    assert proc.returncode != 0 and "--intra-id applies to one image" in proc.stderr
