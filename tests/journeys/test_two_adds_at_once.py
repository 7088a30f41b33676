"""Two ``lookalike add`` of the same folder at once store each image once.

Each image's request id comes from its content, so whichever process writes an image first
stores it and the other is answered from the retry window; between them the two summaries
account for every image exactly once.
"""

from __future__ import annotations

import json
import subprocess

from cli import LOOKALIKE, picture, run, serving, stored_keys

NAMES = ["chelsea", "coffee", "astronaut", "camera", "rocket", "hubble_deep_field", "coins", "moon"]


def test_two_adds_of_one_folder_at_once_store_each_image_once(tmp_path):
    folder = tmp_path / "shop"
    folder.mkdir()
    for name in NAMES:
        picture(folder, name)
    with serving(tmp_path / "data") as (_, address):
        assert run("db", "create", "d", "--server", address).returncode == 0
        cmd = [*LOOKALIKE, "add", "--db", "d", "--json", "--batch", "2", "--server", address, str(folder)]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
        summaries = [json.loads(out) for out, _ in outs]
        assert sum(s["registered"] for s in summaries) == len(NAMES)
        assert all(s["registered"] + s["already_present"] == len(NAMES) for s in summaries)
        assert stored_keys(address, "d") == sorted((name, 0) for name in NAMES)
