"""Each method: two training steps on tiny images on CPU, momentum updates, queues, options, DDP."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import torch
import torch.distributed
import torch.multiprocessing as mp
from lookalike.trainer import dist
from lookalike.trainer.losses.swav import sinkhorn
from lookalike.trainer.methods.base import SSLMethod
from lookalike.trainer.methods.momentum import cosine_momentum
from lookalike.trainer.methods.registry import METHOD_ALIASES, build_method, canonical_name, method_options

BATCH = 4
TINY = {
    "MOCO_R50": dict(backbone="test_resnet", K=16, m=0.9, image_size=32),
    "MOCO_TIMM": dict(backbone="test_efficientnet", K=16, m=0.9, image_size=32),
    "MOBY_TIMM": dict(backbone="test_vit", K=16, m=0.9, inner_dim=32, proj_dim=16, image_size=32),
    "SWAV_R50": dict(
        backbone="test_resnet",
        image_size=32,
        nmb_crops=(2, 2),
        nmb_prototypes=10,
        hidden_mlp=32,
        feat_dim=16,
        freeze_prototypes_iters=1,
    ),
}


def tiny(name: str, **overrides: object) -> SSLMethod:
    torch.manual_seed(0)
    options = {**TINY[name], **overrides}
    return build_method(name, **options)  # type: ignore[arg-type]


def make_views(method: SSLMethod, batch: int = BATCH, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, size, size, generator=g) for size, n, _ in method.crops for _ in range(n)]


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(b, a) for b, a in zip(before, module.parameters(), strict=True))


def online_and_target(method: SSLMethod) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    if hasattr(method, "encoder_k") and hasattr(method, "encoder_q"):
        return [(method.encoder_q, method.encoder_k)]
    if hasattr(method, "encoder_k"):
        return [(method.encoder, method.encoder_k), (method.projector, method.projector_k)]
    return []


def expected_momentum(name: str, step: int, total: int) -> float:
    return cosine_momentum(0.9, step + 1, total) if name == "MOBY_TIMM" else 0.9


@pytest.mark.parametrize("name", list(TINY))
def test_two_training_steps(name: str) -> None:
    method = tiny(name)
    method.train()
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    backbone_before = params(method.embedder())
    total = 10
    for step in range(2):
        out = method(make_views(method, seed=step))
        assert out["loss"].dim() == 0 and torch.isfinite(out["loss"]), out
        assert all(v.dim() == 0 and not v.requires_grad for k, v in out.items() if k != "loss")
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        pairs = online_and_target(method)
        old = [(params(online), params(target)) for online, target in pairs]
        method.on_after_step(step, total)
        m = expected_momentum(name, step, total)
        for (_, target), (q_new, k_old) in zip(pairs, old, strict=True):
            for p_k, q, k in zip(target.parameters(), q_new, k_old, strict=True):
                assert not p_k.requires_grad
                torch.testing.assert_close(p_k, m * k + (1 - m) * q)
    assert changed(backbone_before, method.embedder()), "the online backbone did not learn"


@pytest.mark.parametrize("name", list(TINY))
def test_embedder_gives_backbone_features(name: str) -> None:
    method = tiny(name)
    embedder = method.embedder().eval()
    with torch.no_grad():
        feats = embedder(make_views(method)[0])
    assert feats.shape == (BATCH, method.feature_dim)
    online = {"MOCO_R50": "encoder_q.backbone", "MOCO_TIMM": "encoder_q.backbone", "MOBY_TIMM": "encoder"}
    assert embedder is method.get_submodule(online.get(name, "backbone"))  # the online encoder, no head


def test_moco_queue_receives_normalised_keys() -> None:
    method = tiny("MOCO_R50")
    queue0 = method.queue.clone()
    for step in range(2):
        method(make_views(method, seed=step))["loss"].backward()
        method.on_after_step(step, 10)
    assert int(method.queue_ptr) == 2 * BATCH
    assert not torch.equal(method.queue[:, : 2 * BATCH], queue0[:, : 2 * BATCH])
    assert torch.equal(method.queue[:, 2 * BATCH :], queue0[:, 2 * BATCH :])
    torch.testing.assert_close(method.queue.norm(dim=0), torch.ones(16))


def test_moby_queues_and_cosine_momentum() -> None:
    method = tiny("MOBY_TIMM")
    q1, q2 = method.queue1.clone(), method.queue2.clone()
    method(make_views(method))
    assert int(method.queue_ptr) == BATCH
    assert not torch.equal(method.queue1[:, :BATCH], q1[:, :BATCH])
    assert not torch.equal(method.queue2[:, :BATCH], q2[:, :BATCH])
    assert cosine_momentum(0.99, 0, 100) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 50, 100) == pytest.approx(0.995)
    assert cosine_momentum(0.99, 100, 100) == pytest.approx(1.0)


def test_queue_size_must_divide_by_global_batch() -> None:
    method = tiny("MOCO_R50", K=10)
    with pytest.raises(ValueError, match=r"K=10 is not a multiple of the global batch 4.*K=8"):
        method(make_views(method))


def test_swav_freezes_then_trains_normalised_prototypes() -> None:
    method = tiny("SWAV_R50")
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    before = method.prototypes.weight.detach().clone()
    for step in range(2):
        method(make_views(method, seed=step))["loss"].backward()
        if step == 0:
            assert torch.count_nonzero(method.prototypes.weight.grad) == 0  # frozen, yet in the graph
        optimizer.step()
        optimizer.zero_grad()
        method.on_after_step(step, 10)
        if step == 0:
            torch.testing.assert_close(method.prototypes.weight, before)
    assert not torch.allclose(method.prototypes.weight, before)
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(10))


def test_swav_queue_fills_then_joins_the_assignment() -> None:
    method = tiny("SWAV_R50", queue_length=8)
    with torch.no_grad():
        flags = [float(method(make_views(method, seed=s))["queue_in_use"]) for s in range(3)]
    assert flags == [0.0, 0.0, 1.0]  # 8 slots = 2 batches of 4, used from the third batch
    assert method.queue is not None and method.queue.shape == (2, 8, 16)
    with pytest.raises(ValueError, match="queue_length=6 must be a multiple"):
        bad = tiny("SWAV_R50", queue_length=6)
        bad(make_views(bad))


def test_swav_crop_sizes_follow_image_size() -> None:
    method = tiny("SWAV_R50", image_size=64, nmb_crops=(2, 3))
    assert method.crops == [(64, 2, (0.14, 1.0)), (27, 3, (0.05, 0.14))]


def test_wrong_number_of_views_is_explained() -> None:
    method = tiny("MOCO_R50")
    with pytest.raises(ValueError, match="expects 2 views"):
        method(make_views(method)[:1])


def test_names_aliases_and_errors() -> None:
    assert {canonical_name(a) for a in METHOD_ALIASES} == {"mocov2", "moco_timm", "moby", "swav"}
    assert canonical_name("moco_r50") == "mocov2" and canonical_name("SwAV") == "swav"
    with pytest.raises(ValueError, match=r"unknown method 'simclr'.*mocov2.*MOCO_R50"):
        build_method("simclr")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['queue_size'\].*'K'"):
        build_method("MOCO_R50", backbone="test_resnet", queue_size=8)
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet5O'.*did you mean.*resnet50"):
        build_method("MOCO_R50", backbone="resnet5O")
    with pytest.raises(ValueError, match="offline ImageNet weights exist only for 'tf_efficientnet_lite0'"):
        build_method("MOCO_R50", backbone="test_resnet", pretrained="imagenet")
    with pytest.raises(ValueError, match="momentum m must be in"):
        build_method("MOCO_R50", backbone="test_resnet", m=1.5)


def test_paper_defaults() -> None:
    """Full-size defaults, built on the meta device (no memory, no time)."""
    with torch.device("meta"):
        moco = build_method("MOCO_R50")
        moby = build_method("MOBY_TIMM")
        swav = build_method("SWAV_R50")
        moco_timm = build_method("MOCO_TIMM")
    assert (moco.feature_dim, moco.K, moco.m, moco.T, tuple(moco.queue.shape)) == (
        2048,
        65536,
        0.999,
        0.2,
        (128, 65536),
    )
    assert moco.crops == [(224, 2, (0.2, 1.0))] and moco.name == "mocov2"
    assert (moby.feature_dim, moby.K, moby.m, moby.T, tuple(moby.queue1.shape)) == (384, 4096, 0.99, 0.2, (256, 4096))
    assert swav.feature_dim == 2048 and swav.prototypes.weight.shape == (3000, 128)
    assert swav.crops == [(224, 2, (0.14, 1.0)), (96, 6, (0.05, 0.14))]
    assert (swav.epsilon, swav.sinkhorn_iterations, swav.T) == (0.05, 3, 0.1)
    assert moco_timm.feature_dim == 1280 and moco_timm.name == "moco_timm"
    assert method_options("SWAV_R50")["queue_length"] == 0


# --- two processes on gloo: the collectives and the methods under DistributedDataParallel ---


def _gloo_worker(rank: int, world: int, init_file: str) -> None:
    torch.set_num_threads(1)
    scores_all = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    codes_single = sinkhorn(scores_all)  # one process, before the group exists
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
    )
    try:
        assert (dist.world_size(), dist.rank()) == (world, rank)
        x = torch.full((2, 3), float(rank))
        gathered = dist.concat_all_gather(x)
        assert torch.equal(gathered[:, 0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
        assert float(dist.all_reduce_mean(torch.tensor(float(rank)))) == pytest.approx(0.5)
        ids = torch.arange(4.0).view(4, 1) + 10 * rank
        shuffled, idx_unshuffle = dist.batch_shuffle(ids)
        assert torch.equal(dist.batch_unshuffle(shuffled, idx_unshuffle), ids)

        codes = sinkhorn(scores_all[rank * 4 : (rank + 1) * 4])  # each process holds half the batch
        torch.testing.assert_close(dist.concat_all_gather(codes), codes_single)

        for name, extra in [("MOCO_R50", {"K": 32}), ("SWAV_R50", {"queue_length": 16})]:
            torch.manual_seed(0)
            method = build_method(name, **{**TINY[name], **extra})
            ddp = torch.nn.parallel.DistributedDataParallel(method)
            opt = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=0.05)
            for step in range(3):
                loss = ddp(make_views(method, batch=2, seed=10 * rank + step))["loss"]
                loss.backward()
                opt.step()
                opt.zero_grad()
                method.on_after_step(step, 10)
            for p in method.parameters():
                torch.testing.assert_close(dist.concat_all_gather(p[None])[0], dist.concat_all_gather(p[None])[1])
            if name == "MOCO_R50":
                both = dist.concat_all_gather(method.queue[None])  # [world, C, K]
                assert torch.equal(both[0], both[1]) and int(method.queue_ptr) == 3 * 2 * world
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_on_gloo(tmp_path: Path) -> None:
    # fork: the children reuse this process's imports (torch + timm take seconds to import)
    mp.start_processes(_gloo_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True, start_method="fork")
