"""Server settings: command-line flags over environment variables over defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 50051
DEFAULT_DATA_DIR = Path("./lookalike-data")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = field(default_factory=lambda: DEFAULT_DATA_DIR)
    model: Path | None = None  # None: the embedded default model
    token: str | None = field(default=None, repr=False)  # never printed
    device: str | None = None  # None: cuda when available, else cpu
    max_batch: int = 32
    max_workers: int = 16
    max_image_bytes: int = 32 << 20
    max_image_pixels: int = 64_000_000
    grace_s: float = 5.0
    # Durability (see README "Where your data lives").
    persist: bool = True  # False: databases in memory only (benchmark baseline, throwaway servers)
    fsync: str = "batch"  # always | batch | never
    fsync_interval_s: float = 0.005
    snapshot_interval_s: float = 600.0  # 0: only on request and at shutdown
    root: str | None = None  # oss://bucket/prefix/ mirrors snapshots and ships the log there
    oss_endpoint: str | None = None
    oss_credentials_file: Path | None = None
    oss_path_style: bool | None = None
    ship_interval_s: float = 1.0
    repair: bool = False

    def __post_init__(self) -> None:
        if self.fsync not in ("always", "batch", "never"):
            raise ValueError(f"--fsync must be always, batch or never, not {self.fsync!r}")
        if self.fsync_interval_s <= 0 or self.ship_interval_s <= 0 or self.snapshot_interval_s < 0:
            raise ValueError("--fsync-interval-ms and --ship-interval must be positive; --snapshot-interval >= 0")
        if self.root is not None and not self.root.startswith("oss://"):
            raise ValueError(
                f"--root must be oss://bucket/prefix/ (the local data lives in --data-dir), not {self.root!r}"
            )
