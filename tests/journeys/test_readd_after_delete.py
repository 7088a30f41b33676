"""Adding the same file again after deleting it stores it again, and the CLI's count matches what is stored.

Before, the importer's request id (database, path) was still in the server's retry window after
the delete, so ``lookalike add`` printed ``registered 1`` and stored nothing; the same after
deleting and re-creating the database.
"""

from __future__ import annotations

from cli import picture, run, serving, stored_keys
from lookalike.client import LookalikeClient


def test_add_after_deleting_the_image_and_after_recreating_the_database(tmp_path):
    x = picture(tmp_path)
    with serving(tmp_path / "data") as (_, address):
        srv = ("--server", address)
        assert run("db", "create", "d", *srv).returncode == 0
        assert "registered 1 of 1" in run("add", "--db", "d", "--group", "a", str(x), *srv).stdout
        assert stored_keys(address, "d") == [("a", 0)]
        with LookalikeClient(address) as c:
            c.delete_image("d", "a", 0)
        assert stored_keys(address, "d") == []
        again = run("add", "--db", "d", "--group", "a", str(x), *srv)
        assert "registered 1 of 1" in again.stdout
        assert stored_keys(address, "d") == [("a", 0)]  # stored, not taken for a retry of the first add
        assert run("db", "delete", "d", *srv).returncode == 0
        assert run("db", "create", "d", *srv).returncode == 0
        assert "registered 1 of 1" in run("add", "--db", "d", "--group", "a", str(x), *srv).stdout
        assert stored_keys(address, "d") == [("a", 0)]
