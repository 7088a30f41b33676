"""Retrieval metrics on L2-normalised embeddings (cosine similarity), computed in query chunks.

- kNN accuracy: majority vote of the k nearest gallery items (k = 1: nearest neighbour), or
  similarity-weighted voting with ``exp(s / T)`` (Wu et al. 2018, T = 0.07) for k > 1.
- mAP: mean over queries of the average precision of the full gallery ranking, relevant = same class.
- recall@k: fraction of queries with at least one same-class item among the top k.
With ``exclude_self`` (leave-one-out on one set) query i never retrieves gallery item i.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

CHUNK = 256


def _sims(q: torch.Tensor, g: torch.Tensor, start: int, exclude_self: bool) -> torch.Tensor:
    s = q @ g.T  # [C, N]
    if exclude_self:
        rows = torch.arange(s.shape[0])
        s[rows, rows + start] = -float("inf")
    return s


def retrieval_metrics(
    query: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    *,
    knn_k: Sequence[int] = (1, 20),
    recall_k: Sequence[int] = (1, 5, 10),
    temperature: float = 0.07,
    exclude_self: bool = False,
    with_map: bool = True,
) -> dict[str, float]:
    """``{"knn@1": .., "knn@20": .., "mAP": .., "recall@1": ..}`` (fractions in [0, 1])."""
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query dim {query.shape[1]} != gallery dim {gallery.shape[1]}")
    q_all = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32))
    g = torch.from_numpy(np.ascontiguousarray(gallery, dtype=np.float32))
    ql = torch.from_numpy(query_labels.astype(np.int64))
    gl = torch.from_numpy(gallery_labels.astype(np.int64))
    n_classes = int(max(ql.max(), gl.max())) + 1
    n_gallery = g.shape[0] - (1 if exclude_self else 0)
    max_k = min(max([*knn_k, *recall_k]), n_gallery)
    correct = {k: 0 for k in knn_k}
    hits = {k: 0 for k in recall_k}
    ap_sum = 0.0
    ranks = torch.arange(1, g.shape[0] + 1, dtype=torch.float32)  # [N]
    counts = torch.bincount(gl, minlength=n_classes)  # [classes]
    for start in range(0, q_all.shape[0], CHUNK):
        q, labels = q_all[start : start + CHUNK], ql[start : start + CHUNK]
        s = _sims(q, g, start, exclude_self)  # [C, N]
        top_s, top_i = s.topk(max_k, dim=1)  # [C, k]
        top_l = gl[top_i]  # [C, k]
        for k in knn_k:
            kk = min(k, max_k)
            if kk == 1:
                pred = top_l[:, 0]
            else:
                weights = (top_s[:, :kk] / temperature).exp()  # [C, kk]
                votes = torch.zeros(q.shape[0], n_classes).scatter_add_(1, top_l[:, :kk], weights)
                pred = votes.argmax(1)
            correct[k] += int((pred == labels).sum())
        same = top_l == labels[:, None]  # [C, k]
        for k in recall_k:
            hits[k] += int(same[:, : min(k, max_k)].any(1).sum())
        if with_map:
            order = s.argsort(dim=1, descending=True)  # [C, N]
            rel = (gl[order] == labels[:, None]).float()  # [C, N]
            if exclude_self:
                rel[:, -1] = 0.0  # self sits last at -inf
            n_rel = counts[labels].float() - (1.0 if exclude_self else 0.0)  # [C]
            precision = rel.cumsum(1) / ranks  # [C, N]
            ap = (precision * rel).sum(1) / n_rel.clamp(min=1)  # [C]
            ap_sum += float(ap.sum())
    n = q_all.shape[0]
    out = {f"knn@{k}": correct[k] / n for k in knn_k}
    if with_map:
        out["mAP"] = ap_sum / n
    out.update({f"recall@{k}": hits[k] / n for k in recall_k})
    return out


def duplicate_recall(query: np.ndarray, index: np.ndarray, targets: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Fraction of queries whose own original (row ``targets[i]`` of ``index``) is in the top k."""
    q = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32))
    g = torch.from_numpy(np.ascontiguousarray(index, dtype=np.float32))
    t = torch.from_numpy(targets.astype(np.int64))
    max_k = min(max(ks), g.shape[0])
    hits = {k: 0 for k in ks}
    for start in range(0, q.shape[0], CHUNK):
        top = (q[start : start + CHUNK] @ g.T).topk(max_k, dim=1).indices  # [C, k]
        found = top == t[start : start + CHUNK, None]  # [C, k]
        for k in ks:
            hits[k] += int(found[:, : min(k, max_k)].any(1).sum())
    return {f"recall@{k}": hits[k] / q.shape[0] for k in ks}
