"""Losses against naive numpy transcriptions of the papers' pseudocode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lookalike.trainer.losses.info_nce import info_nce_loss
from lookalike.trainer.losses.moby import moby_loss
from lookalike.trainer.losses.swav import sinkhorn, swav_loss

RNG = np.random.default_rng(0)


def unit_rows(n: int, c: int) -> np.ndarray:
    x = RNG.standard_normal((n, c))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def naive_info_nce(q: np.ndarray, k: np.ndarray, queue: np.ndarray, t: float) -> float:
    """MoCo Alg. 1, one query at a time: positive logit first, cross-entropy with label 0."""
    losses = []
    for n in range(q.shape[0]):
        logits = [float(q[n] @ k[n])] + [float(q[n] @ queue[:, j]) for j in range(queue.shape[1])]
        logits = np.array(logits) / t
        losses.append(-logits[0] + np.log(np.sum(np.exp(logits))))
    return float(np.mean(losses))


def naive_sinkhorn(scores: np.ndarray, eps: float = 0.05, niters: int = 3) -> np.ndarray:
    """SwAV Alg. 1 (appendix) verbatim."""
    Q = np.exp(scores / eps).T
    Q /= np.sum(Q)
    K, B = Q.shape
    r, c = np.ones(K) / K, np.ones(B) / B
    for _ in range(niters):
        u = np.sum(Q, axis=1)
        Q *= (r / u)[:, None]
        Q *= (c / np.sum(Q, axis=0))[None, :]
    return (Q / np.sum(Q, axis=0, keepdims=True)).T


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.sum(np.exp(x), axis=1, keepdims=True))


@pytest.mark.parametrize("t", [0.07, 0.2, 1.0])
def test_info_nce_matches_moco_pseudocode(t: float) -> None:
    q, k, queue = unit_rows(5, 8), unit_rows(5, 8), unit_rows(16, 8).T
    loss, logits = info_nce_loss(torch.tensor(q), torch.tensor(k), torch.tensor(queue), t)
    assert logits.shape == (5, 17)
    assert loss.item() == pytest.approx(naive_info_nce(q, k, queue, t), rel=1e-6)


def test_info_nce_gradient_only_reaches_queries() -> None:
    q = torch.tensor(unit_rows(4, 8), requires_grad=True)
    k = torch.tensor(unit_rows(4, 8), requires_grad=True)
    queue = torch.tensor(unit_rows(8, 8).T, requires_grad=True)
    loss, _ = info_nce_loss(q, k, queue, 0.2)
    loss.backward()
    assert q.grad is not None and torch.count_nonzero(q.grad) > 0
    assert k.grad is None and queue.grad is None


def test_info_nce_rejects_bad_shapes() -> None:
    q = torch.randn(4, 8)
    with pytest.raises(ValueError, match=r"\[C, K\]"):
        info_nce_loss(q, q, torch.randn(7, 16), 0.2)
    with pytest.raises(ValueError, match="q and k"):
        info_nce_loss(q, torch.randn(3, 8), torch.randn(8, 16), 0.2)
    with pytest.raises(ValueError, match="T must be > 0"):
        info_nce_loss(q, q, torch.randn(8, 16), 0.0)


def test_moby_loss_is_the_symmetric_sum() -> None:
    p1, p2, z1, z2 = (unit_rows(4, 6) for _ in range(4))
    queue1, queue2 = unit_rows(8, 6).T, unit_rows(8, 6).T
    got = moby_loss(*(torch.tensor(a) for a in (p1, p2, z1, z2, queue1, queue2)), T=0.2)
    want = naive_info_nce(p1, z2, queue2, 0.2) + naive_info_nce(p2, z1, queue1, 0.2)
    assert got.item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize(("eps", "niters"), [(0.05, 3), (0.1, 1), (0.05, 10)])
def test_sinkhorn_matches_swav_pseudocode(eps: float, niters: int) -> None:
    scores = unit_rows(12, 4) @ unit_rows(5, 4).T  # cosine scores [B=12, K=5]
    got = sinkhorn(torch.tensor(scores), epsilon=eps, iterations=niters).double().numpy()
    want = naive_sinkhorn(scores, eps, niters)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)  # each code is a distribution


def test_sinkhorn_equipartitions_and_survives_small_epsilon() -> None:
    scores = torch.tensor(unit_rows(64, 8) @ unit_rows(4, 8).T, dtype=torch.float32)
    q = sinkhorn(scores, epsilon=0.05, iterations=30)
    torch.testing.assert_close(q.sum(dim=0), torch.full((4,), 16.0), atol=0.0, rtol=0.02)  # ~B / K each
    q_small = sinkhorn(scores, epsilon=0.002, iterations=3)  # exp(500): overflows in a plain float32 version
    assert torch.isfinite(q_small).all()
    torch.testing.assert_close(q_small.sum(dim=1), torch.ones(64))


def test_swav_two_view_loss_matches_pseudocode() -> None:
    scores_t, scores_s = unit_rows(6, 4) @ unit_rows(5, 4).T, unit_rows(6, 4) @ unit_rows(5, 4).T
    q_t, q_s = naive_sinkhorn(scores_t), naive_sinkhorn(scores_s)
    temp = 0.1
    # loss = - 0.5 * mean(q_t * log(p_s) + q_s * log(p_t)), the mean over samples of the sum over K
    want = -0.5 * np.mean(
        np.sum(q_t * log_softmax(scores_s / temp), axis=1) + np.sum(q_s * log_softmax(scores_t / temp), axis=1)
    )
    codes = [torch.tensor(q_t), torch.tensor(q_s)]
    got = swav_loss([torch.tensor(scores_t), torch.tensor(scores_s)], codes, (0, 1), temp)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_swav_multicrop_loss_matches_plain_loops() -> None:
    views = [unit_rows(3, 4) @ unit_rows(5, 4).T for _ in range(5)]  # 2 global + 3 local
    temp, assign = 0.1, (0, 1)
    codes = [naive_sinkhorn(views[c]) for c in assign]
    want = 0.0
    for q, crop_id in zip(codes, assign, strict=True):
        sub = 0.0
        for v in range(len(views)):
            if v != crop_id:
                sub += -np.mean(np.sum(q * log_softmax(views[v] / temp), axis=1))
        want += sub / (len(views) - 1)
    want /= len(assign)
    got = swav_loss([torch.tensor(v) for v in views], [torch.tensor(q) for q in codes], assign, temp)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_swav_loss_rejects_mismatched_codes() -> None:
    s = [torch.randn(2, 3), torch.randn(2, 3)]
    with pytest.raises(ValueError, match="one code per assigned crop"):
        swav_loss(s, [torch.rand(2, 3)], (0, 1), 0.1)
    with pytest.raises(ValueError, match="not a view index"):
        swav_loss(s, [torch.rand(2, 3)], (5,), 0.1)
