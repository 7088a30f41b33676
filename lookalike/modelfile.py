"""The embedder file format shared by the trainer (which writes it) and the server (which loads it).

One TorchScript file, with its preprocessing contract stored inside it as ``lookalike.json``
(``torch.jit.save(..., _extra_files=...)``), so a model can never be served with the wrong
resize or normalisation. The module maps a float batch ``[N, 3, S, S]`` (RGB, already
normalised with ``mean``/``std``) to ``[N, D]``; the server L2-normalises the output
(:func:`output_vectors`). A file may carry a domain ``center``: the mean of its L2-normalised
vectors over the user's own images, subtracted before a second normalisation. It lives in the
metadata, not the graph, so the server's bf16 and fp16 execution never rounds it. It may also carry
similarity ``tiers`` (the cosines from which two images count as duplicates, near-duplicates or similar,
measured for this model by ``lookalike.trainer.tiers``) and how they were measured (``calibration``):
a cosine means something different for every model, so the thresholds travel with the weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

META_FILE = "lookalike.json"
FORMAT_VERSION = 1
# shorter_then_center_crop: shorter side to resize_size, centre crop input_size (ImageNet classification).
# stretch: the whole image resized to input_size x input_size (aspect ratio not kept).
# letterbox: the whole image, longer side to input_size, centred, padded with the mean colour (0 after
# normalisation).
RESIZE_MODES = ("shorter_then_center_crop", "stretch", "letterbox")
# What a file whose metadata has no resize_mode meant when it was written; never changes.
LEGACY_RESIZE_MODE = "shorter_then_center_crop"
# What new files get when the writer does not say: the whole image, stretched (chosen by measurement over the
# centre crop and letterbox: bench/PREPROCESSING.md). Older servers read "stretch" too.
DEFAULT_RESIZE_MODE = "stretch"
PRECISIONS = ("fp32", "fp16")
# Version of the pixel pipeline outside the metadata (mode conversion, alpha, EXIF, interpolation).
# Bump it when a change here alters the vectors of ordinary images, so stored vectors are not mixed.
PIPELINE_VERSION = 2
# Similarity tiers (``EmbedderMeta.tiers``), closest first: the cosine from which a pair of images counts as a
# re-encoded or resized copy, an edited copy (crop, colour change), or a different but visually close image.
TIER_NAMES = ("duplicate", "near", "similar")


class ModelFileError(ValueError):
    """The embedder file is missing, unreadable or does not follow the contract."""


@dataclass(frozen=True)
class EmbedderMeta:
    """Preprocessing and output contract of an embedder file."""

    model_name: str
    output_dim: int
    input_size: int = 224
    resize_size: int = 256
    resize_mode: str = DEFAULT_RESIZE_MODE
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    precision: str = "fp32"
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    center: tuple[float, ...] | None = None  # subtracted from the L2-normalised output (output_vectors)
    # Cosine thresholds of the served vectors, {"duplicate": d, "near": n, "similar": s} with 1 >= d > n > s > -1,
    # measured for this model (lookalike.trainer.tiers); ``calibration`` says how (JSON, no dates).
    tiers: dict[str, float] | None = None
    calibration: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.output_dim <= 0:
            raise ModelFileError(f"output_dim must be positive, got {self.output_dim}")
        if self.input_size <= 0 or self.resize_size < self.input_size:
            raise ModelFileError(
                f"need 0 < input_size <= resize_size, got input_size={self.input_size} resize_size={self.resize_size}"
            )
        if self.resize_mode not in RESIZE_MODES:
            raise ModelFileError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.precision not in PRECISIONS:
            raise ModelFileError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ModelFileError("mean and std must be three numbers each, std > 0")
        if self.center is not None:
            c = np.asarray(self.center, dtype=np.float64)
            if c.shape != (self.output_dim,) or not np.isfinite(c).all():
                raise ModelFileError(f"center must be {self.output_dim} finite numbers (output_dim), got {c.size}")
            if not float(np.linalg.norm(c)) < 1.0 - 1e-6:
                raise ModelFileError(
                    f"center has norm {np.linalg.norm(c):.6f}; the mean of unit vectors must have norm < 1 "
                    "(a norm of 1 means every image embedded alike, and nothing would be left after subtracting it)"
                )
        self._check_tiers()
        if self.format_version != FORMAT_VERSION:
            raise ModelFileError(
                f"model file format {self.format_version} is not supported by this Lookalike "
                f"(expects {FORMAT_VERSION}); re-export the model with this version's trainer"
            )

    def _check_tiers(self) -> None:
        """Refuse tiers a duplicate finder could not use; store them as floats in :data:`TIER_NAMES` order."""
        if self.tiers is None:
            if self.calibration is not None:
                raise ModelFileError("calibration describes how tiers were measured; it needs tiers beside it")
            return
        if not isinstance(self.tiers, dict) or set(self.tiers) != set(TIER_NAMES):
            got = sorted(self.tiers) if isinstance(self.tiers, dict) else type(self.tiers).__name__
            raise ModelFileError(f"tiers must map exactly {list(TIER_NAMES)} to cosine thresholds, got {got}")
        values = []
        for name in TIER_NAMES:
            v = self.tiers[name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not -1.0 < float(v) <= 1.0:
                raise ModelFileError(f"tiers[{name!r}] must be a cosine in (-1, 1], got {v!r}")
            values.append(float(v))
        if not values[0] > values[1] > values[2]:
            raise ModelFileError(
                "tiers must be strictly decreasing, duplicate > near > similar (a closer relation needs a higher "
                f"cosine), got {dict(zip(TIER_NAMES, values, strict=True))}"
            )
        if self.calibration is not None and not isinstance(self.calibration, dict):
            raise ModelFileError(f"calibration must be a JSON object, got {type(self.calibration).__name__}")
        object.__setattr__(self, "tiers", dict(zip(TIER_NAMES, values, strict=True)))

    @functools.cached_property
    def center_vector(self) -> np.ndarray | None:
        """``center`` as float32, converted once (the server subtracts it from every batch)."""
        return None if self.center is None else np.asarray(self.center, dtype=np.float32)

    def to_json(self) -> str:
        raw = dataclasses.asdict(self)
        for key in ("center", "tiers", "calibration"):
            if raw[key] is None:
                del raw[key]  # files without them stay readable by servers that predate them
        return json.dumps(raw, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> EmbedderMeta:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"{META_FILE} inside the model file is not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ModelFileError(f"{META_FILE} must hold a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ModelFileError(f"{META_FILE} has unknown keys {unknown}")
        try:
            raw["mean"] = tuple(float(v) for v in raw.get("mean", cls.mean))
            raw["std"] = tuple(float(v) for v in raw.get("std", cls.std))
            raw.setdefault("resize_mode", LEGACY_RESIZE_MODE)  # an old file keeps meaning what it meant
            if raw.get("center") is not None:
                raw["center"] = tuple(float(v) for v in raw["center"])
            return cls(**raw)
        except TypeError as exc:
            raise ModelFileError(f"{META_FILE} is incomplete: {exc}") from exc


def output_vectors(features: np.ndarray, meta: EmbedderMeta) -> np.ndarray:
    """The model's ``[N, D]`` output as served: L2-normalised; minus ``meta.center`` and normalised again."""
    y = np.asarray(features, dtype=np.float32)
    y = y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
    if meta.center_vector is not None:
        y = y - meta.center_vector
        y = y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
    return y.astype(np.float32, copy=False)


def with_center(path: str | Path, center: np.ndarray | None) -> EmbedderMeta:
    """Rewrite a model file's metadata with ``center`` (``None`` removes it); the weights are untouched.

    A new centre moves every similarity, so tiers measured before it are dropped (``lookalike calibrate``).
    """
    module, meta = load_embedder(path)
    c = None if center is None else tuple(float(v) for v in np.asarray(center, dtype=np.float64).ravel())
    if c != meta.center:
        meta = dataclasses.replace(meta, tiers=None, calibration=None)
    meta = dataclasses.replace(meta, center=c)
    save_embedder(module, path, meta)
    return meta


def with_tiers(path: str | Path, tiers: dict[str, float] | None, calibration: dict[str, Any] | None) -> EmbedderMeta:
    """Rewrite a model file's metadata with similarity tiers (``None`` removes them); the weights are untouched."""
    module, meta = load_embedder(path)
    meta = dataclasses.replace(meta, tiers=tiers, calibration=calibration if tiers is not None else None)
    save_embedder(module, path, meta)
    return meta


@contextlib.contextmanager
def quiet_torchscript() -> Iterator[None]:
    """Silence torch's TorchScript deprecation warnings: deprecated upstream, still our stable file format."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        yield


def save_embedder(module: Any, path: str | Path, meta: EmbedderMeta) -> Path:
    """Script (or trace-free save) ``module`` and write it with ``meta`` inside.

    ``module`` may be an ``nn.Module`` (scripted here) or a ``ScriptModule``. The file is
    written to a temporary name and renamed, so a crash never leaves half a model.
    """
    import torch

    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # concurrent writers never share
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_torchscript():
        scripted = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
        torch.jit.save(scripted, str(tmp), _extra_files={META_FILE: meta.to_json()})
    tmp.replace(path)
    return path


def read_meta(path: str | Path) -> EmbedderMeta:
    """Read only the contract of a model file (still loads the archive, not the weights' device)."""
    return load_embedder(path, device="cpu")[1]


def load_embedder(path: str | Path, device: str = "cpu") -> tuple[Any, EmbedderMeta]:
    """Load a model file; return ``(eval-mode ScriptModule on device, meta)``."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist; pass --model with a file from `lookalike train`")
    extra = {META_FILE: ""}
    try:
        with quiet_torchscript():
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except (RuntimeError, ValueError) as exc:
        raise ModelFileError(f"{path} is not a TorchScript file: {exc}") from exc
    if not extra[META_FILE]:
        raise ModelFileError(
            f"{path} has no {META_FILE} inside; export it with `lookalike train` or "
            "lookalike.modelfile.save_embedder so it carries its preprocessing"
        )
    meta = EmbedderMeta.from_json(extra[META_FILE])
    module.eval()
    return module, meta


_WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def upright(image: Any) -> Any:
    """Apply the EXIF orientation (phone photos), so a rotated file and its upright twin match.

    A damaged EXIF block is ignored rather than refusing an image whose pixels are fine.
    """
    from PIL import ImageOps

    try:
        if image.getexif().get(0x0112, 1) in (None, 1):  # no rotation: no copy of the pixels
            return image
        return ImageOps.exif_transpose(image)
    except Exception:  # corrupt EXIF raises many types (struct.error, KeyError, SyntaxError, ...)
        return image


def _deep_to_l(image: Any) -> Any:
    """16-bit, 32-bit integer and float grayscale -> 8-bit ``L`` by the values' real range.

    Pillow's own ``convert`` clips these at 255 (16-bit: all white) or truncates floats in
    [0, 1] to 0 (all black). 16-bit modes are scaled from 0..65535; ``I`` from 0..255 when its
    values fit (8-bit data), else 0..65535 when they fit, else its min..max; ``F`` from 0..1
    when its values fit, else its min..max. Non-finite floats become 0.
    """
    from PIL import Image

    arr = np.asarray(image).astype(np.float64)
    finite = np.isfinite(arr)
    arr = np.where(finite, arr, 0.0)
    lo, hi = (float(arr[finite].min()), float(arr[finite].max())) if finite.any() else (0.0, 0.0)
    if image.mode in _SIXTEEN_BIT_MODES:
        lo, hi = 0.0, 65535.0
    elif image.mode == "F" and lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    elif image.mode == "I" and lo >= 0 and hi <= 255:
        lo, hi = 0.0, 255.0
    elif image.mode == "I" and lo >= 0 and hi <= 65535:
        lo, hi = 0.0, 65535.0
    scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def to_rgb(image: Any) -> Any:
    """Any Pillow image -> 8-bit RGB with the pixels a viewer would show.

    Deep grayscale is scaled by its range (see ``_deep_to_l``); transparency (alpha, palette or
    colour-key) is composited onto white, as a viewer's page shows a cut-out product photo.
    """
    from PIL import Image

    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _deep_to_l(image).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        out = Image.new("RGB", rgba.size, _WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return image.convert("RGB")


def _crop_box(w: int, h: int, meta: EmbedderMeta) -> tuple[float, float, float, float]:
    """Source-pixel box that the centre crop keeps: shorter side to resize_size, then input_size."""
    size = meta.input_size
    scale = meta.resize_size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    sx, sy = w / nw, h / nh  # the same sampling grid as resizing to (nw, nh) and cropping
    return (left * sx, top * sy, (left + size) * sx, (top + size) * sy)


def letterbox_geometry(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """``(new_w, new_h, left, top)``: the whole image scaled so its longer side is ``size``, centred."""
    scale = size / max(w, h)
    nw, nh = min(size, max(1, round(w * scale))), min(size, max(1, round(h * scale)))
    return nw, nh, (size - nw) // 2, (size - nh) // 2


def _normalise_into(img: Any, meta: EmbedderMeta, out: np.ndarray) -> None:
    """8-bit RGB ``img`` -> ``out`` [3, h, w] as ``(pixel / 255 - mean) / std``, in two passes.

    Written as ``pixel * (1 / (255 std)) - mean / std`` straight into the channel-first output (equal
    to float32 rounding): 0.3 ms instead of 3 ms per 224 px image on the 2-core CPU of issue 11 for
    converting, scaling, normalising and transposing in separate passes, a quarter of a bf16 model call.
    """
    std = np.asarray(meta.std, np.float64)
    scale = (1.0 / (255.0 * std)).astype(np.float32)[:, None, None]
    offset = (np.asarray(meta.mean, np.float64) / std).astype(np.float32)[:, None, None]
    np.multiply(np.asarray(img).transpose(2, 0, 1), scale, out=out, casting="unsafe")
    out -= offset


def preprocess(image: Any, meta: EmbedderMeta) -> np.ndarray:
    """PIL image -> float32 ``[3, S, S]`` normalised as the model expects.

    Work is bounded by the output size whatever the input's shape: the centre crop resizes only
    the kept box, never the whole stretched image (a 1 x 100000 image once took gigabytes).
    """
    from PIL import Image

    img = to_rgb(image)
    size = meta.input_size
    if meta.resize_mode == "letterbox":
        nw, nh, left, top = letterbox_geometry(img.width, img.height, size)
        out = np.zeros((3, size, size), np.float32)  # the mean colour, normalised
        _normalise_into(
            img.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0), meta, out[:, top : top + nh, left : left + nw]
        )
        return out
    if meta.resize_mode == "stretch":
        img = img.resize((size, size), Image.BILINEAR)
    else:
        img = img.resize((size, size), Image.BILINEAR, box=_crop_box(img.width, img.height, meta), reducing_gap=3.0)
    out = np.empty((3, size, size), np.float32)
    _normalise_into(img, meta, out)
    return out


def preprocessing_identity(meta: EmbedderMeta) -> dict[str, Any]:
    """Everything about a model file's preprocessing that changes the vectors it produces.

    Recorded with each database: vectors made under one identity must not be searched with
    queries made under another. Two files with equal identities (and equal weights) embed alike.
    """
    return {
        "resize_mode": meta.resize_mode,
        "input_size": meta.input_size,
        # resize_size only matters to the centre crop; the whole-image modes ignore it.
        "resize_size": meta.resize_size if meta.resize_mode == "shorter_then_center_crop" else None,
        "mean": [float(v) for v in meta.mean],
        "std": [float(v) for v in meta.std],
        "interpolation": "bilinear",
        "color": "rgb8",
        "pipeline_version": PIPELINE_VERSION,
    }


def preprocessing_mismatch(
    stored: dict[str, Any], current: dict[str, Any], database: str = "the database"
) -> str | None:
    """``None`` when two identities embed alike, else a message naming the differences and the way forward."""
    keys = sorted(set(stored) | set(current))
    diff = [f"{k}: {stored.get(k)!r} there, {current.get(k)!r} here" for k in keys if stored.get(k) != current.get(k)]
    if not diff:
        return None
    return (
        f"{database} holds vectors made with another image preprocessing ({'; '.join(diff)}); its vectors and "
        "this server's queries would not be comparable. Serve the model file it was built with (--model), "
        "or re-embed its images into a new database with this model"
    )
