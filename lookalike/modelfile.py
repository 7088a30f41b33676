"""The embedder file format shared by the trainer (which writes it) and the server (which loads it).

One TorchScript file, with its preprocessing contract stored inside it as ``lookalike.json``
(``torch.jit.save(..., _extra_files=...)``), so a model can never be served with the wrong
resize or normalisation. The module maps a float batch ``[N, 3, S, S]`` (RGB, already
normalised with ``mean``/``std``) to ``[N, D]``; the server L2-normalises the output.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
RESIZE_MODES = ("shorter_then_center_crop", "stretch")
PRECISIONS = ("fp32", "fp16")


class ModelFileError(ValueError):
    """The embedder file is missing, unreadable or does not follow the contract."""


@dataclass(frozen=True)
class EmbedderMeta:
    """Preprocessing and output contract of an embedder file."""

    model_name: str
    output_dim: int
    input_size: int = 224
    resize_size: int = 256
    resize_mode: str = "shorter_then_center_crop"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    precision: str = "fp32"
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

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
        if self.format_version != FORMAT_VERSION:
            raise ModelFileError(
                f"model file format {self.format_version} is not supported by this Lookalike "
                f"(expects {FORMAT_VERSION}); re-export the model with this version's trainer"
            )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

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
            return cls(**raw)
        except TypeError as exc:
            raise ModelFileError(f"{META_FILE} is incomplete: {exc}") from exc


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


def preprocess(image: Any, meta: EmbedderMeta) -> np.ndarray:
    """PIL image -> float32 ``[3, S, S]`` normalised as the model expects."""
    from PIL import Image

    img = image.convert("RGB")
    size = meta.input_size
    if meta.resize_mode == "stretch":
        img = img.resize((size, size), Image.BILINEAR)
    else:
        w, h = img.size
        scale = meta.resize_size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.float32) * (1.0 / 255.0)
    arr = (arr - np.asarray(meta.mean, np.float32)) / np.asarray(meta.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
