"""Labelled domain sets from npm emoji packages: labels, images on white, and a clear error when absent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from lookalike.trainer.eval import domains
from lookalike.trainer.eval.domains import emoji_package_dir, load_domain, on_white, write_domain_folder
from PIL import Image


def _installed() -> bool:
    try:
        emoji_package_dir("google") and emoji_package_dir("twitter")
    except ValueError:
        return False
    return True


needs_emoji = pytest.mark.skipif(not _installed(), reason=f"emoji packages not installed: {domains.INSTALL_HINT}")


def test_missing_packages_raise_with_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(domains.DATASETS_ENV, str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="npm install --prefix"):
        load_domain("emoji-google")
    with pytest.raises(ValueError, match="unknown domain set"):
        load_domain("emoji-apple")


def test_transparent_pixels_become_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (10, 200, 30, 0))  # fully transparent, with colour underneath
    rgba.putpixel((0, 0), (10, 200, 30, 255))
    out = np.asarray(on_white(rgba))
    assert out[1, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [10, 200, 30]


@needs_emoji
def test_emoji_sets_hold_the_same_emoji_labelled_by_subcategory(tmp_path: Path) -> None:
    google, query = load_domain("emoji-google")
    twitter, _ = load_domain("emoji-twitter")
    assert query is None and len(google) == len(twitter) and len(google.classes) >= 20
    counts = np.bincount(google.labels)
    assert counts.min() >= domains.MIN_PER_CLASS and counts.max() <= domains.MAX_PER_CLASS
    meta = json.loads((emoji_package_dir("google") / "emoji.json").read_text())
    sub = {e["image"]: e["subcategory"] for e in meta}
    for ref, label in zip(google.refs, google.labels, strict=True):  # naive reference: the package's own table
        assert google.classes[label] == sub[Path(ref).name]
    assert [Path(r).name for r in google.refs] == [Path(r).name for r in twitter.refs]
    assert all(im.mode == "RGB" for im in google.images)
    gallery, queries = load_domain("emoji-cross")
    assert queries is not None and queries.classes == gallery.classes
    folder = write_domain_folder("emoji-google", tmp_path / "flat", labelled=False)
    assert len(list(folder.glob("*.png"))) == len(google)
