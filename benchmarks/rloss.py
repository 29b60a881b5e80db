"""rloss's dense CRF loss (Tang et al., ECCV 2018, github meng-tang/rloss), measured beside ours when a user's
build of it is on this machine: POTTSOPS_RLOSS names the folder of its SWIG module `bilateralfilter`
(pytorch/wrapper/bilateralfilter after `swig -python -c++ bilateralfilter.i` and `python setup.py build`).
Nothing of rloss is in this repository; this file calls its compiled filter the way its DenseCRFLoss module
does: inputs resized by scale_factor, one lattice filtering per image and class (bilateralfilter_batch),
value -sum_k S_k^T W S_k / B, gradient -2 W S / B kept from the forward pass."""
import importlib
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F


def load():
    """rloss's bilateralfilter_batch, or None (with the reason) when POTTSOPS_RLOSS is unset or wrong."""
    folder = os.environ.get("POTTSOPS_RLOSS")
    if not folder:
        return None, "POTTSOPS_RLOSS is not set"
    sys.path.insert(0, folder)
    try:
        return importlib.import_module("bilateralfilter").bilateralfilter_batch, None
    except ImportError as exc:
        return None, f"POTTSOPS_RLOSS={folder}: {exc}"
    finally:
        sys.path.remove(folder)


class _RlossDenseCRF(torch.autograd.Function):
    """Its forward and backward: the filtered labels of the forward are the backward's gradient."""

    @staticmethod
    def forward(ctx, images, segmentations, rois, batch_filter, sigma_rgb, sigma_xy):
        B, K, H, W = segmentations.shape
        masked = (segmentations * rois[:, None]).detach().float().contiguous().numpy().ravel()
        filtered = np.zeros(masked.shape, dtype=np.float32)
        batch_filter(images.detach().float().contiguous().numpy().ravel(), masked, filtered, B, K, H, W,
                     sigma_rgb, sigma_xy)
        ctx.save_for_backward(torch.from_numpy(filtered).view(B, K, H, W), rois)
        return torch.tensor(-float(np.dot(masked, filtered)) / B)

    @staticmethod
    def backward(ctx, grad):
        filtered, rois = ctx.saved_tensors
        return None, -2 * grad * filtered / filtered.shape[0] * rois[:, None], None, None, None, None


def dense_crf_loss(batch_filter, images, segmentations, rois, weight, sigma_rgb, sigma_xy, scale_factor):
    """rloss's DenseCRFLoss forward: its resizing (images and ROIs by nearest, labels bilinearly), then the
    loss on the resized inputs with sigma_xy scaled too."""
    if scale_factor != 1.0:
        images = F.interpolate(images, scale_factor=scale_factor)
        segmentations = F.interpolate(segmentations, scale_factor=scale_factor, mode="bilinear", align_corners=False)
        rois = F.interpolate(rois[:, None], scale_factor=scale_factor)[:, 0]
    return weight * _RlossDenseCRF.apply(images, segmentations, rois, batch_filter, sigma_rgb, sigma_xy * scale_factor)
