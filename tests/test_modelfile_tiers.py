"""A model file's similarity tiers: validated, stored in its metadata, absent from older files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike.modelfile import (
    META_FILE,
    EmbedderMeta,
    ModelFileError,
    load_embedder,
    quiet_torchscript,
    save_embedder,
    with_center,
    with_tiers,
)

TIERS = {"duplicate": 0.95, "near": 0.85, "similar": 0.6}
CALIBRATION = {"method": "tiers-v1", "source": "test", "images": 12, "percentiles": {"near": {"p5": 0.8}}}


def small_file(tmp_path: Path, **meta: object) -> Path:
    module = torch.jit.script(torch.nn.Linear(4, 3).eval())
    return save_embedder(module, tmp_path / "m.pt", EmbedderMeta("m", 3, input_size=4, resize_size=4, **meta))


def test_tiers_round_trip_through_a_model_file(tmp_path: Path) -> None:
    path = small_file(tmp_path, tiers=TIERS, calibration=CALIBRATION)
    _, meta = load_embedder(path)
    assert meta.tiers == TIERS and meta.calibration == CALIBRATION
    assert list(meta.tiers) == ["duplicate", "near", "similar"]
    assert EmbedderMeta.from_json(meta.to_json()) == meta


def test_integer_tiers_are_stored_as_floats_in_tier_order() -> None:
    meta = EmbedderMeta("m", 3, tiers={"similar": 0, "duplicate": 1, "near": 0.5})
    assert meta.tiers == {"duplicate": 1.0, "near": 0.5, "similar": 0.0}
    assert all(type(v) is float for v in meta.tiers.values())


def test_a_file_without_tiers_keeps_the_old_json_and_an_old_file_loads(tmp_path: Path) -> None:
    plain = EmbedderMeta("m", 3)
    raw = json.loads(plain.to_json())
    assert "tiers" not in raw and "calibration" not in raw  # servers that predate tiers still read such files
    # a file as an older Lookalike wrote it: no tiers key, no calibration key
    module = torch.jit.script(torch.nn.Linear(4, 3).eval())
    old = {k: v for k, v in raw.items() if k not in ("resize_mode",)} | {"input_size": 4, "resize_size": 4}
    with quiet_torchscript():
        torch.jit.save(module, str(tmp_path / "old.pt"), _extra_files={META_FILE: json.dumps(old)})
    _, meta = load_embedder(tmp_path / "old.pt")
    assert meta.tiers is None and meta.calibration is None and meta.format_version == 1
    assert EmbedderMeta.from_json(json.dumps({**raw, "tiers": None, "calibration": None})).tiers is None


@pytest.mark.parametrize(
    ("tiers", "message"),
    [
        ({"duplicate": 0.9, "near": 0.8}, r"exactly \['duplicate', 'near', 'similar'\]"),
        ({**TIERS, "exact": 0.99}, "exactly"),
        ([0.9, 0.8, 0.7], "exactly"),
        ({**TIERS, "near": 0.95}, "strictly decreasing, duplicate > near > similar"),
        ({"duplicate": 0.5, "near": 0.7, "similar": 0.9}, "strictly decreasing"),
        ({**TIERS, "duplicate": 1.2}, r"tiers\['duplicate'\] must be a cosine in \(-1, 1\]"),
        ({**TIERS, "similar": -1.0}, r"tiers\['similar'\] must be a cosine"),
        ({**TIERS, "near": float("nan")}, r"tiers\['near'\] must be a cosine"),
        ({**TIERS, "near": "0.8"}, r"tiers\['near'\] must be a cosine"),
        ({**TIERS, "duplicate": True}, r"tiers\['duplicate'\] must be a cosine"),
    ],
)
def test_wrong_tiers_are_refused_with_what_to_fix(tiers: object, message: str) -> None:
    with pytest.raises(ModelFileError, match=message):
        EmbedderMeta("m", 3, tiers=tiers)  # type: ignore[arg-type]


def test_calibration_needs_tiers_and_must_be_an_object() -> None:
    with pytest.raises(ModelFileError, match="needs tiers"):
        EmbedderMeta("m", 3, calibration={"source": "x"})
    with pytest.raises(ModelFileError, match="calibration must be a JSON object"):
        EmbedderMeta("m", 3, tiers=TIERS, calibration=["x"])  # type: ignore[arg-type]
    raw = json.loads(EmbedderMeta("m", 3).to_json())
    with pytest.raises(ModelFileError, match="strictly decreasing"):  # a hand-edited file: the same message
        EmbedderMeta.from_json(json.dumps({**raw, "tiers": {"duplicate": 0.5, "near": 0.5, "similar": 0.1}}))


def test_with_tiers_rewrites_the_metadata_and_a_new_centre_drops_them(tmp_path: Path) -> None:
    path = small_file(tmp_path)
    before, _ = load_embedder(path)
    with_tiers(path, TIERS, CALIBRATION)
    loaded, meta = load_embedder(path)
    assert meta.tiers == TIERS and meta.calibration == CALIBRATION
    x = torch.randn(2, 4)
    torch.testing.assert_close(loaded(x), before(x))  # the weights are untouched
    with_center(path, None)  # the same (absent) centre: the tiers still hold
    assert load_embedder(path)[1].tiers == TIERS
    with_center(path, np.array([0.2, 0.0, -0.1]))  # every similarity moves: tiers measured before would mislead
    meta = load_embedder(path)[1]
    assert meta.tiers is None and meta.calibration is None and meta.center is not None
    with_tiers(path, TIERS, CALIBRATION)
    with_tiers(path, None, CALIBRATION)  # removing the tiers removes their calibration too
    meta = load_embedder(path)[1]
    assert meta.tiers is None and meta.calibration is None
