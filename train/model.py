"""DeepLabV3+ (Chen et al. 2018) on torchvision backbones: MobileNetV2, ResNet-50, ResNet-101, output
stride 16 or 8, any number of input channels (1 for MRI); and a small U-Net (`build_model(..., "unet")`) for
studies that must converge on a CPU.

The encoder's last stages trade stride for dilation to reach the output stride; ASPP (torchvision's)
on the deepest features; the decoder upsamples them to stride 4, concatenates 48 projected channels of
the stride-4 features, refines with two 3x3 convolutions and classifies; the logits are upsampled to the
input size.  Weights are random unless `pretrained` names a local torchvision state dict (nothing is
downloaded).
"""
import os

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models
from torchvision.models.segmentation.deeplabv3 import ASPP

BACKBONES = ("mobilenet_v2", "resnet50", "resnet101")
NETWORKS = BACKBONES + ("unet",)
OUTPUT_STRIDES = (8, 16)


class _ResNetEncoder(nn.Module):
    def __init__(self, name, output_stride):
        super().__init__()
        dilate = [False, output_stride == 8, True]  # layer2, layer3, layer4
        net = getattr(models, name)(weights=None, replace_stride_with_dilation=dilate)
        net.fc = nn.Identity()  # unused: no parameters without gradients
        self.net = net
        self.low_channels, self.high_channels = 256, 2048

    def forward(self, x):
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        low = n.layer1(x)
        return low, n.layer4(n.layer3(n.layer2(low)))


class _MobileNetEncoder(nn.Module):
    """MobileNetV2 features; a stride-2 convolution past the output stride keeps stride 1 (at the dilation
    so far) and the 3x3 convolutions after it dilate twice as much instead."""

    def __init__(self, output_stride):
        super().__init__()
        self.net = models.mobilenet_v2(weights=None)
        self.net.classifier = nn.Identity()
        features = self.net.features
        stride, dilation = 1, 1
        for block in features:
            for conv in block.modules():
                if not isinstance(conv, nn.Conv2d) or conv.kernel_size == (1, 1):
                    continue
                if conv.stride == (2, 2) and stride * 2 <= output_stride:
                    stride *= 2
                    continue
                conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)
                if conv.stride == (2, 2):
                    conv.stride = (1, 1)
                    dilation *= 2
        self.low_channels, self.high_channels = 24, 1280

    def forward(self, x):
        features = self.net.features
        low = features[:4](x)  # stride 4
        return low, features[4:](low)


class DeepLabV3Plus(nn.Module):
    def __init__(self, num_classes, backbone="resnet50", output_stride=16, in_channels=3, pretrained=None):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone: expected one of {BACKBONES}, got {backbone!r}")
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride: expected one of {OUTPUT_STRIDES}, got {output_stride!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes: expected an integer >= 2, got {num_classes!r}")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels: expected an integer >= 1, got {in_channels!r}")
        self.encoder = _MobileNetEncoder(output_stride) if backbone == "mobilenet_v2" else \
            _ResNetEncoder(backbone, output_stride)
        if pretrained is not None:
            load_backbone(self.encoder.net, pretrained)
        if in_channels != 3:
            _set_input_channels(self.encoder.net, in_channels)
        rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
        self.aspp = ASPP(self.encoder.high_channels, rates, 256)
        self.project = nn.Sequential(nn.Conv2d(self.encoder.low_channels, 48, 1, bias=False), nn.BatchNorm2d(48),
                                     nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(
            nn.Conv2d(256 + 48, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Conv2d(256, num_classes, 1))

    def forward(self, x):
        low, high = self.encoder(x)
        high = F.interpolate(self.aspp(high), size=low.shape[2:], mode="bilinear", align_corners=False)
        logits = self.decoder(torch.cat([high, self.project(low)], 1))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)


def _double_conv(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """The 2D U-Net of Ronneberger et al. (2015) at a width a CPU can train: four poolings, `width` channels
    at full resolution doubling per level (16: about 1.9 M parameters), transposed-convolution upsampling,
    skip concatenations; inputs of any size (the decoder's upsampled maps are resized to the skip's where a
    side is not divisible by 16)."""

    def __init__(self, num_classes, in_channels=1, width=16):
        super().__init__()
        widths = [width * 2 ** level for level in range(5)]
        self.down = nn.ModuleList([_double_conv(in_channels, widths[0])] +
                                  [_double_conv(a, b) for a, b in zip(widths, widths[1:])])
        self.up = nn.ModuleList([nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(widths, widths[1:])])
        self.merge = nn.ModuleList([_double_conv(2 * a, a) for a in widths[:-1]])
        self.classify = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x):
        skips = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(reversed(self.up), reversed(self.merge)):
            skip = skips.pop()
            x = up(x)
            if x.shape[2:] != skip.shape[2:]:
                x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
            x = merge(torch.cat([skip, x], 1))
        return self.classify(x)


def build_model(num_classes, network="resnet50", output_stride=16, in_channels=3, pretrained=None):
    """DeepLabV3+ on a torchvision backbone, or network='unet' (no pretrained weights, no output stride)."""
    if network == "unet":
        if pretrained is not None:
            raise ValueError("pretrained: the U-Net has no pretrained weights (use a DeepLabV3+ backbone)")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels: expected an integer >= 1, got {in_channels!r}")
        return UNet(num_classes, in_channels)
    return DeepLabV3Plus(num_classes, network, output_stride, in_channels, pretrained)


def load_backbone(net, path):
    """A torchvision state dict (e.g. resnet50-*.pth) from a local file into the backbone; the classifier
    head of the checkpoint (fc / classifier) is ignored."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained: no file {path!r} (weights are never downloaded; pass a local "
                                f"torchvision state dict)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("fc.", "classifier."))]
    if missing or unexpected:
        raise ValueError(f"pretrained: {path!r} does not match the backbone (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")


def _set_input_channels(net, in_channels):
    """Replace the first convolution for in_channels inputs; pretrained RGB filters are averaged."""
    first = net.conv1 if hasattr(net, "conv1") else net.features[0][0]
    conv = nn.Conv2d(in_channels, first.out_channels, first.kernel_size, first.stride, first.padding,
                     bias=first.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(first.weight.mean(1, keepdim=True).expand_as(conv.weight))
    if hasattr(net, "conv1"):
        net.conv1 = conv
    else:
        net.features[0][0] = conv
