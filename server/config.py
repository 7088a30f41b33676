"""Server settings: command-line flags over environment variables over defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 50051


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = field(default_factory=lambda: Path("./lookalike-data"))
    model: Path | None = None  # None: the embedded default model
    token: str | None = field(default=None, repr=False)  # never printed
    device: str | None = None  # None: cuda when available, else cpu
    max_batch: int = 32
    max_workers: int = 16
    max_image_bytes: int = 32 << 20
    max_image_pixels: int = 64_000_000
    grace_s: float = 5.0
