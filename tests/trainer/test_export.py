"""Export -> load (the server's loader) -> identical embeddings, with the preprocessing inside."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lookalike.trainer.export import export_embedder, export_filename
from lookalike.trainer.methods.registry import build_method

from lookalike.modelfile import load_embedder


def tiny_method(name: str = "MOCO_R50", backbone: str = "test_resnet") -> torch.nn.Module:
    torch.manual_seed(0)
    options = {"K": 8} if name != "SWAV_R50" else {"nmb_prototypes": 10, "hidden_mlp": 32, "feat_dim": 16}
    method = build_method(name, backbone=backbone, image_size=32, **options)
    with torch.no_grad():  # move BN statistics away from their init so eval mode matters
        method.train()
        method.embedder()(torch.randn(8, 3, 32, 32) * 2 + 1)
    return method


@pytest.mark.parametrize(("name", "backbone"), [("MOCO_R50", "test_resnet"), ("MOBY_TIMM", "test_vit")])
def test_export_load_identical_embeddings(tmp_path: Path, name: str, backbone: str) -> None:
    method = tiny_method(name, backbone)
    path = export_embedder(
        method, tmp_path / export_filename(3), input_size=32, model_name=f"{name}-{backbone}", extra={"epoch": 3}
    )
    assert path.name == "epoch_3_export.pt"
    module, meta = load_embedder(path)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        want = method.embedder().eval()(x)
        got = module(x)
    assert got.dtype == torch.float32 and got.shape == (5, method.feature_dim)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert (meta.output_dim, meta.input_size, meta.resize_size, meta.precision) == (method.feature_dim, 32, 37, "fp32")
    assert meta.mean == method.default_mean and meta.std == method.default_std
    assert meta.model_name == f"{name}-{backbone}" and meta.extra == {"method": method.name, "epoch": 3}


def test_fp16_export(tmp_path: Path) -> None:
    method = tiny_method()
    path = export_embedder(method, tmp_path / "half.pt", input_size=32, model_name="half", fp16=True)
    module, meta = load_embedder(path)
    assert meta.precision == "fp16"
    assert all(p.dtype == torch.float16 for p in module.parameters())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = method.embedder().eval()(x)
        upcast = module.float()(x)  # what the server does on CPU
    assert upcast.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(upcast, want)
    assert bool((cosine > 0.999).all()), cosine


def test_synced_batchnorm_and_bare_module_export(tmp_path: Path) -> None:
    method = tiny_method("SWAV_R50")
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method.embedder())  # as DDP training leaves it
    path = export_embedder(
        synced,
        tmp_path / "bare.pt",
        input_size=32,
        resize_size=40,
        mean=(0.5, 0.5, 0.5),
        std=(0.2, 0.2, 0.2),
        model_name="bare",
    )
    module, meta = load_embedder(path)
    assert (meta.resize_size, meta.mean, meta.std, meta.extra) == (40, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), {})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(module(x), synced.eval()(x), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="pass mean and std"):
        export_embedder(synced, tmp_path / "x.pt", input_size=32, model_name="x")


def test_default_server_model_exports(tmp_path: Path) -> None:
    from lookalike.trainer.models.pretrained import (
        EFFICIENTNET_LITE0_MEAN,
        EFFICIENTNET_LITE0_STD,
        efficientnet_lite0_imagenet,
    )

    model = efficientnet_lite0_imagenet()
    path = export_embedder(
        model,
        tmp_path / "lite0.pt",
        input_size=224,
        resize_size=256,
        mean=EFFICIENTNET_LITE0_MEAN,
        std=EFFICIENTNET_LITE0_STD,
        model_name="efficientnet-lite0-imagenet",
    )
    module, meta = load_embedder(path)
    assert meta.output_dim == 1280
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(module(x), model(x), atol=1e-5, rtol=1e-5)


class _Unscriptable(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.pool = lambda t: t.mean(dim=(2, 3))  # a Python lambda: TorchScript cannot compile it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


def test_unscriptable_encoder_is_traced(tmp_path: Path) -> None:
    encoder = _Unscriptable().eval()
    path = export_embedder(encoder, tmp_path / "t.pt", input_size=16, mean=(0, 0, 0), std=(1, 1, 1), model_name="t")
    module, meta = load_embedder(path)
    x = torch.randn(4, 3, 16, 16)  # a batch size the trace never saw
    with torch.no_grad():
        torch.testing.assert_close(module(x), encoder(x))
    assert meta.output_dim == 4
