"""A snapshot file damaged on disk, found after start-up: the server stops as start-up would have, and
``--repair`` drops that database while the others are served.

The float32 re-rank copy of an i8 database is checked while the server answers (``--snapshot-check
background``, the default); ``--snapshot-check start`` checks it before serving, as every other file is.
"""

from __future__ import annotations

import subprocess

from cli import LOOKALIKE, picture, run, serving


def serve_until_exit(data, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOOKALIKE, "serve", "--port", "0", "--data-dir", str(data), "--log-level", "warning",
                           *extra], capture_output=True, text=True, timeout=180)  # fmt: skip


def test_a_damaged_float32_copy_stops_the_server_and_repair_drops_only_that_database(tmp_path):
    data, photos = tmp_path / "data", tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea", "coffee", "astronaut"):
        picture(photos, name)
    with serving(data) as (_, address):
        srv = ("--server", address)
        assert run("db", "create", "shop", "--storage", "i8", *srv).returncode == 0
        assert run("db", "create", "other", *srv).returncode == 0
        for db in ("shop", "other"):
            out = run("add", "--db", db, str(photos), *srv)
            assert out.returncode == 0 and out.stdout.startswith("registered 3"), out.stdout + out.stderr
    # stopped: the final snapshot holds both databases
    (f32,) = sorted((data / "snapshots" / "dbs").glob("shop-*/f32-*"))
    raw = bytearray(f32.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    f32.write_bytes(bytes(raw))

    out = serve_until_exit(data)  # serves, then the check finds the damage: it stops by itself
    assert out.returncode == 1, out.stdout + out.stderr
    said = [line for line in out.stderr.splitlines() if line.startswith("lookalike serve: ")]
    assert len(said) == 1 and "database 'shop' is not served" in said[0] and str(f32) in said[0], out.stderr
    assert "--repair" in said[0]

    out = serve_until_exit(data, "--snapshot-check", "start")  # checked before serving: never ready
    assert out.returncode == 1 and "lookalike: ready" not in out.stdout, out.stdout + out.stderr
    assert f"lookalike serve: {f32}: damaged at byte offset" in out.stderr, out.stderr

    with serving(data, "--repair") as (_, address):
        out = run("db", "list", "--server", address)
        assert out.returncode == 0 and "other" in out.stdout and "shop" not in out.stdout, out.stdout
        out = run("search", "--db", "other", str(photos / "coffee.jpg"), "--server", address)
        assert out.returncode == 0 and "coffee" in out.stdout, out.stdout + out.stderr
