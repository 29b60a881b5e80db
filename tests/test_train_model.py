"""train/model.py: DeepLabV3+ shapes, output strides, input channels, local pretrained weights; the U-Net."""
import pytest
import torch
from torchvision import models

from train.model import DeepLabV3Plus, UNet, build_model


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet50"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_logits_at_input_size_and_encoder_stride(backbone, output_stride):
    model = DeepLabV3Plus(5, backbone=backbone, output_stride=output_stride).eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        low, high = model.encoder(x)
        logits = model(x)
    assert logits.shape == (1, 5, 64, 80) and torch.isfinite(logits).all()
    assert low.shape[2:] == (16, 20)                       # stride 4
    assert high.shape[2:] == (64 // output_stride, 80 // output_stride)


def test_grey_input_and_gradients():
    model = DeepLabV3Plus(4, backbone="mobilenet_v2", in_channels=1)
    x = torch.randn(2, 1, 32, 32)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_pretrained_from_a_local_state_dict(tmp_path):
    source = models.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), path)
    model = DeepLabV3Plus(3, backbone="resnet50", pretrained=str(path), in_channels=1)
    torch.testing.assert_close(model.encoder.net.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    torch.testing.assert_close(model.encoder.net.conv1.weight, source.conv1.weight.mean(1, keepdim=True))
    with pytest.raises(FileNotFoundError, match="pretrained: no file"):
        DeepLabV3Plus(3, pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="does not match the backbone"):
        DeepLabV3Plus(3, backbone="mobilenet_v2", pretrained=str(path))


def test_errors():
    with pytest.raises(ValueError, match="backbone: expected one of"):
        DeepLabV3Plus(3, backbone="vgg16")
    with pytest.raises(ValueError, match="output_stride: expected one of"):
        DeepLabV3Plus(3, output_stride=32)
    with pytest.raises(ValueError, match="num_classes: expected an integer >= 2"):
        DeepLabV3Plus(1)


@pytest.mark.parametrize("size", [(96, 96), (50, 71)])
def test_unet_logits_at_any_input_size(size):
    """Sides not divisible by 16 (ACDC slices at half resolution): the skips still line up."""
    model = build_model(4, "unet", in_channels=1)
    assert isinstance(model, UNet)
    x = torch.randn(2, 1, *size)
    logits = model(x)
    assert logits.shape == (2, 4, *size) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unet_has_no_pretrained_weights():
    with pytest.raises(ValueError, match="pretrained: the U-Net"):
        build_model(4, "unet", in_channels=1, pretrained="resnet50.pth")
