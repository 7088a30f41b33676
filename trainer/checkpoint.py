"""Training checkpoints: everything needed to continue a run as if it had never stopped.

A checkpoint holds the method (encoders, heads, queues), the optimizer, the fp16 grad scaler,
the epoch and step counters and the RNG states; the data order and augmentations are functions
of ``(seed, epoch, index)`` (see ``data.dataset``), so they need no state. Files are written to
a temporary name and renamed, so an interruption while saving never corrupts ``last.pth``.
Only tensors and plain Python values are stored, so loading uses ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FORMAT = "lookalike-train-checkpoint/1"
LAST = "last.pth"


def epoch_checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch}.pth"


def epoch_export_name(epoch: int) -> str:
    return f"epoch_{epoch}_export.pt"


@dataclass
class TrainState:
    """Counters restored on resume: ``epoch`` epochs are complete, ``step`` optimizer steps taken."""

    epoch: int = 0
    step: int = 0
    skipped: int = 0


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def save_checkpoint(
    path: Path,
    *,
    method: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    state: TrainState,
    config: dict[str, Any],
) -> Path:
    payload = {
        "format": FORMAT,
        "epoch": state.epoch,
        "step": state.step,
        "skipped": state.skipped,
        "method": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "config": config,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` onto the CPU."""
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist; use train.resume=auto or never, or a valid path")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged or foreign files
        raise ValueError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a `lookalike train` checkpoint (format {FORMAT})")
    return payload


def restore(
    payload: dict[str, Any],
    *,
    method: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
) -> TrainState:
    """Load ``payload`` into the live objects; return the counters to continue from."""
    try:
        method.load_state_dict(payload["method"])
    except RuntimeError as exc:
        raise ValueError(
            f"the checkpoint does not fit this method/backbone ({exc}); resume with the same method "
            "settings, or start a new output_dir"
        ) from exc
    optimizer.load_state_dict(payload["optimizer"])
    if scaler is not None and payload.get("scaler") is not None:
        scaler.load_state_dict(payload["scaler"])
    set_rng_state(payload["rng"])
    return TrainState(epoch=int(payload["epoch"]), step=int(payload["step"]), skipped=int(payload["skipped"]))
