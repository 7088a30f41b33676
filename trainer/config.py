"""Training configuration: YAML file(s), then ``key.sub=value`` overrides, checked and typed.

As in timm's ``train.py``, a YAML file sets the values, the command line overrides them, and
the resolved configuration is written next to the outputs (``config.yaml``), so every run can
be repeated exactly. Defaults mirror PAI's self-supervised training component (table 2 of the
PAI solution): AdamW, lr 0.001, batch 64, 80 epochs, a checkpoint every 10 epochs, 4 reader
threads, optional fp16 export. Unknown keys and wrong types fail at start-up with the valid
choices in the message, never mid-run.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from lookalike.trainer.selfcheck import MIN_GAIN

CONFIG_DIR = Path(__file__).with_name("configs")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("adamw",)
SYNC_BN = ("auto", "true", "false")


@dataclass
class DataConfig:
    source: str | None = None  # image list (local or oss://), image folder, or `lookalike prep` output
    root: str | None = None  # prefix for relative list entries (default: the list's folder)
    split: str = "train"  # split of a prep output to train on
    num_workers: int | None = None  # DataLoader worker processes; null: the CPU cores available (PAI: 4)
    jitter: float = 0.4  # colour jitter strength (MoCo v2: 0.4)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    flip_p: float = 0.5


@dataclass
class MethodConfig:
    name: str = "MOBY_TIMM"  # mocov2 | moco_timm | moby | swav, or MOCO_R50 | MOCO_TIMM | MOBY_TIMM | SWAV_R50
    backbone: str | None = None  # timm model name; null: the method's default
    pretrained: str | None = None  # null: method default; "imagenet" (EfficientNet-Lite0) or a checkpoint path
    image_size: int = 224  # training crop size
    options: dict[str, Any] = field(default_factory=dict)  # method keywords, e.g. {K: 4096, T: 0.2}


@dataclass
class OptimConfig:
    name: str = "adamw"  # PAI supports AdamW only
    lr: float = 0.001  # peak learning rate for the whole (global, accumulated) batch
    weight_decay: float = 0.05  # not applied to biases and norm parameters
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "cosine"  # cosine (after warmup) | constant
    warmup_epochs: float = 5.0  # linear warmup from 0, in epochs (fractions allowed)
    warmup_steps: int | None = None  # warmup in optimizer steps instead (wins over warmup_epochs)
    min_lr: float = 1.0e-6  # floor of the cosine schedule
    backbone_lr_scale: float = 1.0  # lr multiplier of the exported backbone, e.g. 0.1 when fine-tuning
    accumulate: int = 1  # micro-batches per optimizer step (gradient accumulation)
    clip_grad: float | None = None  # max gradient norm; null: no clipping


@dataclass
class TrainSection:
    output_dir: str = "runs/lookalike"
    epochs: int = 80
    batch_size: int = 64  # per process and micro-batch
    checkpoint_every: int = 10  # epochs between checkpoints + exports (the last epoch always gets one)
    precision: str = "auto"  # auto: bf16/fp16 on GPU, bf16 on a CPU with native bf16, else fp32 | fp32 | bf16 | fp16
    seed: int = 0
    resume: str = "auto"  # auto: continue from output_dir/last.pth if present | never | a checkpoint path
    stop_after_epoch: int | None = None  # end this run early (checkpoint kept), e.g. for time-sliced queues
    steps_per_epoch: int | None = None  # cap optimizer steps per epoch (quick runs); null: whole dataset
    steps: int | None = None  # total optimizer steps (the schedule's length); epochs follow. null: train.epochs
    max_minutes: float | None = None  # time budget: stop cleanly (checkpoint + export) when it runs out
    # Fewest steps worth starting a budgeted run for; null: the schedule's warmup (before it ends the
    # learning rate never reaches optim.lr). A budget that fits fewer is refused before training.
    min_steps: int | None = None
    allow_short: bool = False  # train even when --max-minutes fits fewer than train.min_steps (--allow-short)
    adapt: bool = True  # fit batch, queue and checkpoints to the dataset size (printed), instead of failing
    freeze_bn_stats: bool = False  # keep the backbone's BatchNorm statistics (fine-tuning a pretrained model)
    trainable_stages: int | None = None  # fine-tuning: only the backbone's last N stages (+ its head) train; null: all
    sync_bn: str = "auto"  # auto: SyncBN under DDP unless the method shuffles BN (MoCo) | true | false
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True  # tqdm bar on the main process
    dist_backend: str = "auto"  # auto: nccl on GPU, gloo on CPU


@dataclass
class ExportConfig:
    fp16: bool = False  # export half-precision weights (PAI: "evtorch model 开启半精度")
    input_size: int | None = None  # default: method.image_size
    resize_size: int | None = None  # default: input_size * 256 / 224 (resize shorter side, centre crop)
    # Domain centre (trainer/center.py): each export subtracts the mean of its vectors over this many of
    # the training images; 0 = off. The fine-tune config sets 128.
    center_images: int = 0


@dataclass
class SelfCheckConfig:
    """Unlabelled self-check: held-out images retrieved among their own augmented copies."""

    holdout: float = 0.1  # fraction of the images kept out of training for the self-check (0: off)
    min_images: int = 8  # at least this many held out (when the dataset allows)
    max_images: int = 200  # at most this many held out (the check's cost)
    views: int = 5  # altered copies per held-out image (crop, rescale, JPEG, colour, all of them at once)
    tolerance_se: float = 1.0  # best_export.pt: the latest check within this many standard errors of the top
    # Score differences up to this are a tie whatever the standard error says (selfcheck.MIN_GAIN explains why).
    min_gain: float = MIN_GAIN


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainSection = field(default_factory=TrainSection)
    export: ExportConfig = field(default_factory=ExportConfig)
    selfcheck: SelfCheckConfig = field(default_factory=SelfCheckConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def validate(self) -> None:
        """Cross-field checks that a type cannot express; raises ``ValueError`` naming the option."""
        _choice("optim.name", self.optim.name, OPTIMIZERS)
        _choice("optim.schedule", self.optim.schedule, SCHEDULES)
        _choice("train.precision", self.train.precision, PRECISIONS)
        _choice("train.sync_bn", self.train.sync_bn, SYNC_BN)
        _choice("train.device", self.train.device, ("auto", "cpu", "cuda"))
        _choice("train.dist_backend", self.train.dist_backend, ("auto", "gloo", "nccl"))
        positive = {
            "train.epochs": self.train.epochs,
            "train.batch_size": self.train.batch_size,
            "train.checkpoint_every": self.train.checkpoint_every,
            "optim.lr": self.optim.lr,
            "optim.accumulate": self.optim.accumulate,
            "method.image_size": self.method.image_size,
        }
        for key, value in positive.items():
            if not value > 0:
                raise ValueError(f"{key} must be > 0, got {value}")
        for key, value in {
            "optim.weight_decay": self.optim.weight_decay,
            "optim.min_lr": self.optim.min_lr,
            "optim.warmup_epochs": self.optim.warmup_epochs,
            "optim.backbone_lr_scale": self.optim.backbone_lr_scale,
            "export.center_images": self.export.center_images,
        }.items():
            if value < 0:
                raise ValueError(f"{key} must be >= 0, got {value}")
        if len(self.optim.betas) != 2 or not all(0 <= b < 1 for b in self.optim.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.optim.betas}")
        if self.data.num_workers is not None and self.data.num_workers < 0:
            raise ValueError(
                f"data.num_workers must be >= 0 or null (the cores available), got {self.data.num_workers}"
            )
        if not 0.0 <= self.selfcheck.holdout < 1.0:
            raise ValueError(f"selfcheck.holdout must be a fraction in [0, 1), got {self.selfcheck.holdout}")
        for key in ("min_images", "max_images", "views"):
            if getattr(self.selfcheck, key) <= 0:
                raise ValueError(f"selfcheck.{key} must be > 0, got {getattr(self.selfcheck, key)}")
        if self.selfcheck.tolerance_se < 0:
            raise ValueError(f"selfcheck.tolerance_se must be >= 0, got {self.selfcheck.tolerance_se}")
        if self.selfcheck.min_gain < 0:
            raise ValueError(
                f"selfcheck.min_gain must be >= 0 (0: the standard error alone), got {self.selfcheck.min_gain}"
            )
        if self.train.trainable_stages is not None and self.train.trainable_stages < 0:
            raise ValueError(
                f"train.trainable_stages must be >= 0 or null (all train), got {self.train.trainable_stages}"
            )
        if self.train.max_minutes is not None and self.train.max_minutes <= 0:
            raise ValueError(f"train.max_minutes must be > 0 or null, got {self.train.max_minutes}")
        if self.optim.warmup_steps is not None and self.optim.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0 or null, got {self.optim.warmup_steps}")
        for key in ("stop_after_epoch", "steps_per_epoch", "steps", "min_steps"):
            value = getattr(self.train, key)
            if value is not None and value <= 0:
                raise ValueError(f"train.{key} must be > 0 or null, got {value}")
        if self.optim.clip_grad is not None and self.optim.clip_grad <= 0:
            raise ValueError(f"optim.clip_grad must be > 0 or null, got {self.optim.clip_grad}")
        if self.data.source is None:
            raise ValueError(
                "data.source is not set: pass --data PATH (an image list, a folder or a `lookalike prep` "
                "output) or data.source=PATH"
            )


def _choice(key: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{key} must be one of {list(valid)}, got {value!r}")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert a YAML value to the field's declared type, or raise ``ValueError`` naming ``key``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if value is None:
        raise ValueError(f"{key} cannot be null")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if hint is float:
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a number, got {value!r}") from None
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, bool):  # `sync_bn: true` in YAML
            return "true" if value else "false"
        raise ValueError(f"{key} must be a string, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    return value


def _merge(obj: Any, updates: dict[str, Any], prefix: str = "") -> None:
    """Apply nested ``updates`` onto dataclass ``obj`` in place, strictly."""
    if not isinstance(updates, dict):
        raise ValueError(f"{prefix or 'config'} must be a mapping, got {updates!r}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=3)
            hint = f" (did you mean {', '.join(prefix + c for c in close)}?)" if close else ""
            raise ValueError(f"unknown config key {full!r}{hint}; valid keys: {[prefix + n for n in names]}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, full + ".")
        elif typing.get_origin(hints[key]) is dict and isinstance(current, dict) and isinstance(value, dict):
            setattr(obj, key, {**current, **value})
        else:
            setattr(obj, key, _coerce(full, value, hints[key]))


def parse_override(text: str) -> dict[str, Any]:
    """``"optim.lr=0.01"`` -> ``{"optim": {"lr": 0.01}}`` (the value is read as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {text!r} must look like section.key=value, e.g. optim.lr=0.0005")
    value = yaml.safe_load(raw) if raw.strip() else None
    nested: dict[str, Any] = {}
    node = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def resolve_config_path(name: str) -> Path:
    """A YAML path, or the name of a packaged config (``tiny`` -> ``trainer/configs/tiny.yaml``)."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = CONFIG_DIR / f"{name}.yaml"
    if packaged.is_file():
        return packaged
    available = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ValueError(f"config {name!r} is neither a file nor a packaged config {available}")


def shipped_configs() -> list[tuple[str, str]]:
    """``(name, one-line description)`` of every config in ``trainer/configs/``, read from its first line.

    The first line of each shipped YAML is a ``# ...`` summary, so ``lookalike train --help`` lists
    exactly what is shipped; a file without one shows a note saying so (and fails the tests).
    """
    out = []
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        first = path.read_text(encoding="utf-8").split("\n", 1)[0].strip()
        summary = first.lstrip("#").strip() if first.startswith("#") else ""
        out.append((path.stem, summary or "(no description: start the file with a '# ...' line)"))
    return out


def load_config(files: list[str] | None = None, overrides: list[str] | None = None) -> Config:
    """``default.yaml``, then each file in order, then each ``key=value`` override."""
    cfg = Config()
    for name in ["default", *(files or [])]:
        path = resolve_config_path(name)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {exc}") from exc
        _merge(cfg, data)
    for text in overrides or []:
        _merge(cfg, parse_override(text))
    return cfg
