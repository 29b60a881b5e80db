"""Inputs of the benchmark cases: generated images and labels, and real CamVid images from the evaluation data."""
import torch
import torch.nn.functional as F


def smooth_image(B, H, W, device, generator):
    """An RGB image in 0..255 with image-like structure: smooth regions plus mild noise."""
    coarse = torch.rand(B, 3, max(2, H // 16), max(2, W // 16), generator=generator) * 255
    image = F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)
    return (image + torch.randn(B, 3, H, W, generator=generator) * 4).clamp(0, 255).to(device)


def soft_labels(shape, dtype, device, generator):
    return torch.softmax(torch.randn(shape, generator=generator) * 3, 1).to(device=device, dtype=dtype)


def camvid_images(size, count=2):
    """The first CamVid validation images, resized to size x size (B, 3, H, W) in 0..255."""
    import glob
    import os

    import numpy as np
    from PIL import Image

    from benchmarks.solver_problems import data_root
    names = sorted(glob.glob(os.path.join(data_root(), "camvid", "images", "val", "*")))[:count]
    if len(names) < count:
        raise FileNotFoundError(f"no CamVid validation images under {data_root()} (POTTSOPS_DATA)")
    return torch.stack([torch.from_numpy(np.asarray(Image.open(n).convert("RGB").resize((size, size)),
                                                    dtype=np.float32)).permute(2, 0, 1) for n in names])


def dense_inputs(size, K, seed):
    """Segmentations like a network's softmax (smooth at 1/8 resolution), the images, ROIs of ones."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(2, K, max(1, size // 8), max(1, size // 8), generator=g) * 4
    segmentations = torch.softmax(F.interpolate(coarse, size=(size, size), mode="bilinear"), 1)
    return {"y": segmentations, "image": camvid_images(size), "rois": torch.ones(2, size, size)}
