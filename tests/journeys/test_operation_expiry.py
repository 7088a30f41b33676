"""A finished operation expires as a person meets it: ``lookalike dedup``, ``ops list``, then nothing.

The real CLI against a real server started with ``--operation-retention-s 3``: a folder with two
copies of the same picture is added, ``lookalike dedup`` finds them, ``ops list`` shows the finished
job and ``ops get`` reads it; a few seconds later ``ops list`` says ``(no operations)``, ``ops get``
fails with the operation's name and NOT_FOUND, and its folder under the data directory is gone, after a
restart too. A server with the default retention (7 days) keeps the job across a restart.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from cli import run, serving
from photos import encode, photo

OP = re.compile(r"(operations/[0-9a-f]{16})\tfind_duplicates\tshop\tSUCCEEDED")


def folder_with_a_copy(tmp_path: Path) -> Path:
    """Three photos, one of them twice under another name (the same bytes)."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ("coffee", "rocket", "astronaut"):
        (imgs / f"{name}.jpg").write_bytes(encode(photo(name)))
    (imgs / "mug.jpg").write_bytes((imgs / "coffee.jpg").read_bytes())
    return imgs


def add_and_dedup(address: str, imgs: Path) -> str:
    """The journey's first half; the finished operation's name."""
    srv = ("--server", address)
    assert run("db", "create", "shop", *srv).returncode == 0
    added = run("add", "--db", "shop", str(imgs), *srv)
    assert added.returncode == 0, added.stderr
    found = run("dedup", "--db", "shop", *srv)
    assert found.returncode == 0, found.stderr
    assert "found 1 clusters of duplicates (2 images, 1 removable)" in found.stdout, found.stdout
    listed = run("ops", "list", *srv)
    match = OP.search(listed.stdout)
    assert match, listed.stdout
    return match.group(1)


def test_a_finished_job_is_gone_after_the_retention(tmp_path: Path) -> None:
    imgs = folder_with_a_copy(tmp_path)
    data = tmp_path / "data"
    with serving(data, "--operation-retention-s", "3") as (_, address):
        name = add_and_dedup(address, imgs)
        assert run("ops", "get", name, "--server", address).returncode == 0
        folder = data / "operations" / name.removeprefix("operations/")
        assert folder.is_dir(), sorted(p.name for p in (data / "operations").iterdir())
        deadline = time.monotonic() + 30
        while (listed := run("ops", "list", "--server", address).stdout.strip()) != "(no operations)":
            assert time.monotonic() < deadline, f"still listed after 30 s: {listed}"
            time.sleep(1)
        gone = run("ops", "get", name, "--server", address)
        assert gone.returncode != 0 and "NOT_FOUND" in gone.stderr and name in gone.stderr, gone.stderr
        assert not folder.exists()
    with serving(data, "--operation-retention-s", "3") as (_, address):  # and it does not come back
        assert run("ops", "list", "--server", address).stdout.strip() == "(no operations)"


def test_the_default_retention_keeps_the_job_across_a_restart(tmp_path: Path) -> None:
    imgs = folder_with_a_copy(tmp_path)
    data = tmp_path / "data"
    with serving(data) as (_, address):
        name = add_and_dedup(address, imgs)
    with serving(data) as (_, address):
        assert name in run("ops", "list", "--server", address).stdout
        assert run("ops", "get", name, "--server", address).returncode == 0
