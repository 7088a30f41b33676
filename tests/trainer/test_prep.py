"""``lookalike prep``: split counts, shard sizes, maximum side, skipped entries, webdataset layout."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import webdataset as wds
from imagefolder import write_image_folder
from lookalike.trainer.data.shards import ShardSource, index_path, index_shard, load_shard_index
from lookalike.trainer.data.sources import open_source
from lookalike.trainer.prep import main
from PIL import Image


def read_webdataset(shards: list[Path]) -> list[dict]:
    """Every sample as a plain webdataset pipeline sees it (no Lookalike code involved)."""
    return list(wds.WebDataset([str(s) for s in shards], shardshuffle=False, empty_check=False))


def test_prep_writes_the_split_shard_counts_and_max_sides(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_image_folder(tmp_path / "imgs", 40, max_side=(60, 160))
    out = tmp_path / "shards"
    argv = [str(tmp_path / "imgs"), "--output", str(out), "--prefix", "demo", "--test-ratio", "0.25",
            "--max-side", "64", "--test-max-side", "48", "--per-shard", "8", "--workers", "3", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert "30 train images in 4 shard(s)" in capsys.readouterr().out

    manifest = json.loads((out / "prep.json").read_text())
    assert manifest["entries"] == 40 and manifest["skipped"]["count"] == 0
    splits = manifest["splits"]
    assert splits["train"]["count"] == 30 and splits["test"]["count"] == 10
    assert splits["train"]["shards"] == [f"demo-train-{i:06d}.tar" for i in range(math.ceil(30 / 8))]
    assert len(splits["test"]["shards"]) == math.ceil(10 / 8)

    seen = set()
    for split, side in (("train", 64), ("test", 48)):
        samples = read_webdataset([out / s for s in splits[split]["shards"]])
        assert len(samples) == splits[split]["count"]
        per_shard = {}
        for sample in samples:
            img = Image.open(io.BytesIO(sample["jpg"]))
            meta = json.loads(sample["json"])
            assert max(img.size) <= side and img.size == (meta["width"], meta["height"])
            per_shard[sample["__url__"]] = per_shard.get(sample["__url__"], 0) + 1
            seen.add(meta["src"])
        assert max(per_shard.values()) == 8
        source = open_source(str(out), split=split)
        assert isinstance(source, ShardSource) and len(source) == splits[split]["count"]
        assert max(source.load(len(source) - 1).size) <= side
        shards = [out / name for name in splits[split]["shards"]]
        assert all(index_path(s).is_file() for s in shards)  # sidecar index: no tar scan at start-up
        assert [load_shard_index(s) for s in shards] == [index_shard(s) for s in shards]
    assert len(seen) == 40  # every image once, in exactly one split


def test_prep_split_is_reproducible_with_the_seed(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "imgs", 12)

    def test_sources(name: str, seed: str) -> set[str]:
        out = tmp_path / name
        main([str(tmp_path / "imgs"), "-o", str(out), "--test-ratio", "0.5", "--seed", seed, "--quiet"])
        shards = json.loads((out / "prep.json").read_text())["splits"]["test"]["shards"]
        return {json.loads(s["json"])["src"] for s in read_webdataset([out / s for s in shards])}

    assert test_sources("a", "1") == test_sources("b", "1")
    assert test_sources("a", "1") != test_sources("c", "2")


def test_bad_list_entries_are_skipped_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = write_image_folder(tmp_path / "imgs", 5)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(good[0].read_bytes()[:100])
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join([*(p.name for p in good[:3]), "missing.jpg", "broken.jpg", *(p.name for p in good[3:])]))
    out = tmp_path / "shards"
    assert main([str(lst), "--root", str(tmp_path / "imgs"), "-o", str(out), "--quiet"]) == 0
    assert "skipped 2 unreadable" in capsys.readouterr().out
    manifest = json.loads((out / "prep.json").read_text())
    assert manifest["skipped"]["count"] == 2
    assert {Path(ref).name for ref, _ in manifest["skipped"]["examples"]} == {"missing.jpg", "broken.jpg"}
    assert manifest["splits"]["train"]["count"] == 5


def test_keep_encoding_stores_original_bytes_when_not_resized(tmp_path: Path) -> None:
    paths = write_image_folder(tmp_path / "imgs", 2, max_side=(50, 60))
    out = tmp_path / "shards"
    assert main([str(tmp_path / "imgs"), "-o", str(out), "--encoding", "keep", "--quiet"]) == 0
    samples = read_webdataset(sorted(out.glob("*.tar")))
    assert sorted(s["jpg"] for s in samples) == sorted(p.read_bytes() for p in paths)


@pytest.mark.parametrize(
    "flag, value, message",
    [("--test-ratio", "1.0", "--test-ratio"), ("--max-side", "4", "--max-side"), ("--per-shard", "0", "--per-shard")],
)
def test_bad_options_fail_with_the_option_named(
    tmp_path: Path, capsys: pytest.CaptureFixture, flag: str, value: str, message: str
) -> None:
    write_image_folder(tmp_path / "imgs", 2)
    assert main([str(tmp_path / "imgs"), "-o", str(tmp_path / "o"), flag, value, "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_a_list_with_no_readable_image_fails(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lst = tmp_path / "list.txt"
    lst.write_text("a.jpg\nb.jpg\n")
    assert main([str(lst), "-o", str(tmp_path / "o"), "--quiet"]) == 1
    assert "no image could be read" in capsys.readouterr().err
