"""Image sources, skip counting, shards read by index, and multi-crop views that follow method.crops."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from imagefolder import write_image_folder
from lookalike.trainer.data.augment import AugmentOptions, MultiCropAugment, check_crops
from lookalike.trainer.data.dataset import ViewsDataset, collate_views
from lookalike.trainer.data.images import UnreadableImage, load_image
from lookalike.trainer.data.oss import OssReader, split_oss
from lookalike.trainer.data.skips import SkipLog
from lookalike.trainer.data.sources import ListSource, list_folder, open_source, read_image_list
from moto_s3 import S3

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
CROPS = [(32, 2, (0.2, 1.0)), (16, 3, (0.05, 0.2))]  # SwAV-like: 2 global + 3 local crops


def write_bad_files(folder: Path) -> dict[str, Path]:
    """A truncated JPEG, a text file named .jpg and a path that does not exist."""
    good = write_image_folder(folder / "good", 1, seed=7)[0]
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    text = folder / "notes.jpg"
    text.write_text("not an image")
    return {"truncated": truncated, "text": text, "missing": folder / "missing.jpg"}


def test_list_file_entries_are_joined_with_the_root(tmp_path: Path) -> None:
    lst = tmp_path / "lists" / "demo_img_list.txt"
    lst.parent.mkdir()
    lst.write_text("# a comment\n\na/1.jpg\n/abs/2.jpg\noss://bucket/3.jpg\nb/4.jpg\tlabel\n")
    assert read_image_list(str(lst)) == [
        str(lst.parent / "a/1.jpg"), "/abs/2.jpg", "oss://bucket/3.jpg", str(lst.parent / "b/4.jpg"),
    ]  # fmt: skip
    assert read_image_list(str(lst), root="oss://bkt/imgs/")[0] == "oss://bkt/imgs/a/1.jpg"
    with pytest.raises(ValueError, match="does not exist"):
        read_image_list(str(tmp_path / "nope.txt"))


def test_folder_listing_is_recursive_sorted_and_images_only(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "x", 3, labelled=True)
    (tmp_path / "x" / "readme.txt").write_text("skip me")
    found = list_folder(tmp_path / "x")
    assert len(found) == 3 and found == sorted(found)
    assert all(f.endswith(".jpg") for f in found)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        open_source(str(tmp_path / "empty"))


def test_unreadable_images_raise_unreadable_image_with_a_reason(tmp_path: Path) -> None:
    for kind, path in write_bad_files(tmp_path).items():
        with pytest.raises(UnreadableImage) as info:
            load_image(str(path))
        assert info.value.ref == str(path) and info.value.reason, kind


def test_views_follow_method_crops_and_are_deterministic(tmp_path: Path) -> None:
    paths = write_image_folder(tmp_path, 4)
    augment = MultiCropAugment(CROPS, MEAN, STD)
    ds = ViewsDataset(ListSource([str(p) for p in paths]), augment, seed=3)
    views, skipped = ds[(0, 1)]
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert skipped == []
    before = torch.get_rng_state()
    again, _ = ds[(0, 1)]
    assert torch.equal(torch.get_rng_state(), before), "augmentation must not consume the global RNG"
    assert all(torch.equal(a, b) for a, b in zip(views, again, strict=True))
    other_epoch, _ = ds[(1, 1)]
    assert not torch.equal(views[0], other_epoch[0])
    ds.set_epoch(0)
    assert torch.equal(ds[1][0][0], views[0])  # a plain index uses the dataset's epoch

    batch_views, batch_skipped = collate_views([ds[(0, i)] for i in range(3)])
    assert [tuple(v.shape) for v in batch_views] == [(3, 3, 32, 32)] * 2 + [(3, 3, 16, 16)] * 3
    assert batch_skipped == []


def test_bad_entries_are_skipped_counted_and_replaced(tmp_path: Path) -> None:
    good = [str(p) for p in write_image_folder(tmp_path / "ok", 3)]
    bad = {k: str(v) for k, v in write_bad_files(tmp_path).items()}
    refs = [good[0], bad["missing"], bad["truncated"], good[1], bad["text"], good[2]]
    ds = ViewsDataset(ListSource(refs), MultiCropAugment([(24, 2, (0.5, 1.0))], MEAN, STD))
    views, skipped = ds[1]  # missing, truncated -> replaced by good[1]
    assert len(views) == 2
    assert [ref for ref, _ in skipped] == [bad["missing"], bad["truncated"]]
    _, batch_skipped = collate_views([ds[i] for i in range(len(refs))])
    log = SkipLog()
    log.extend(batch_skipped)
    # each bad entry is met once as its own index and again while replacing an earlier index
    assert {ref for ref, _ in batch_skipped} == set(bad.values())
    assert log.count == len(batch_skipped) and "unreadable" in log.summary()


def test_a_source_with_no_readable_image_fails_with_a_clear_message(tmp_path: Path) -> None:
    bad = [str(p) for p in write_bad_files(tmp_path).values()]
    ds = ViewsDataset(ListSource(bad), MultiCropAugment([(24, 2, (0.5, 1.0))], MEAN, STD))
    with pytest.raises(RuntimeError, match="unreadable"):
        ds[0]


@pytest.mark.parametrize(
    "crops, message",
    [([], "empty"), ([(32, 2)], "must be"), ([(32, 0, (0.2, 1.0))], "n_crops"), ([(32, 2, (0.5, 0.2))], "scale")],
)
def test_bad_crop_specs_are_rejected(crops: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_crops(crops)


def test_augment_options_are_checked() -> None:
    with pytest.raises(ValueError, match="blur_p"):
        AugmentOptions(blur_p=1.5)


def test_oss_references_are_parsed_like_the_pai_demo_list() -> None:
    assert split_oss("oss://bucket/a/b.jpg") == ("bucket", "a/b.jpg")
    assert split_oss("oss://demo.oss-cn-hangzhou.aliyuncs.com/x/y.jpg") == ("demo", "x/y.jpg")
    with pytest.raises(ValueError, match="oss://bucket/path"):
        split_oss("oss://bucket")


def test_oss_images_are_read_through_oss2_and_missing_keys_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """oss2 against a real S3-protocol server on loopback (moto), path-style."""
    server = S3("imgs")
    try:
        endpoint, s3 = server.endpoint, server.client
        photo = write_image_folder(tmp_path, 1)[0]
        s3.put_object(Bucket="imgs", Key="catalogue/p0.jpg", Body=photo.read_bytes())
        s3.put_object(Bucket="imgs", Key="lists/train.txt", Body=b"catalogue/p0.jpg\ncatalogue/gone.jpg\n")
        for key, value in {"OSS_ACCESS_KEY_ID": "ak", "OSS_ACCESS_KEY_SECRET": "sk", "OSS_ENDPOINT": endpoint,
                           "OSS_PATH_STYLE": "1"}.items():  # fmt: skip
            monkeypatch.setenv(key, value)

        source = open_source("oss://imgs/lists/train.txt", root="oss://imgs/")
        assert isinstance(source, ListSource) and len(source) == 2
        assert source.load(0).size == load_image(str(photo)).size
        with pytest.raises(UnreadableImage, match="does not exist"):
            source.load(1)
        ds = ViewsDataset(source, MultiCropAugment([(24, 2, (0.5, 1.0))], MEAN, STD))
        _, skipped = ds[1]
        assert [ref for ref, _ in skipped] == ["oss://imgs/catalogue/gone.jpg"]
    finally:
        server.stop()


def test_oss_without_credentials_says_which_variables_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ValueError, match="OSS_ACCESS_KEY_ID"):
        OssReader().read("oss://bucket/key.jpg")
    assert "OSS_ACCESS_KEY_SECRET" not in os.environ
