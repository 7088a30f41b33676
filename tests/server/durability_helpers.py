"""Shared pieces of the durability tests: servers on a data directory, state read back over gRPC."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DIM = 1280  # the default model's dimension


def start(data_dir: Path, **config: object) -> object:
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    cfg = {"port": 0, "data_dir": data_dir, "snapshot_interval_s": 0.0, **config}
    return create_server(ServerConfig(**cfg))  # type: ignore[arg-type]


def unit_vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def state(client: object, name: str) -> dict[tuple[str, int], np.ndarray]:
    """Every registered image of a database with its stored vector."""
    out = {}
    for img in client.list_images(name, page_size=1000):  # type: ignore[attr-defined]
        key = (img.key.group_id, img.key.intra_id)
        got = client.get_image(name, key[0], key[1], include_vector=True)  # type: ignore[attr-defined]
        out[key] = np.asarray(got.vector.values, np.float32)
    return out


def naive_top(vectors: dict[tuple[str, int], np.ndarray], query: np.ndarray, k: int) -> list[tuple[str, int]]:
    keys = sorted(vectors)
    scores = np.stack([vectors[key] for key in keys]).astype(np.float64) @ query.astype(np.float64)
    order = sorted(range(len(keys)), key=lambda i: (-scores[i], keys[i]))
    return [keys[i] for i in order[:k]]
