"""Argument checks of the Triton ops, the same as the C++ ops' (csrc/grid_args.cpp, csrc/pottsops/unary_args.h):
the Triton ops are registered ops too, and a kernel launched with short or mismatched tensors reads out of
bounds.  Shape, dtype, device and scalar checks only (no pass over values), so they run under torch.compile."""
import math

import torch

from pottsops.names import RELAXATIONS, UNARIES
from pottsops.neighborhoods import MAX_OFFSETS


def _tensor(name, t, dim, floating=True):
    if not isinstance(t, torch.Tensor) or t.dim() != dim or (floating and not t.is_floating_point()):
        got = f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name}: expected a {'floating ' if floating else ''}{dim}-D tensor, got {got}")


def _like(name, t, shape, device, of="y"):
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name}: expected device {device} (that of {of}), got {t.device}")


MAX_IMAGES = 65535  # the kernels launch one grid row (CUDA's grid y) per image


def batch(name, B):
    if B > MAX_IMAGES:
        raise ValueError(f"{name}: the Triton kernels take at most {MAX_IMAGES} images per call (one grid row "
                         f"each), got {B}; split the batch")


def _scalar(name, value):
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")


def _mask(mask, B, H, W, device, of):
    if mask is not None:
        _tensor("mask", mask, 3, floating=False)
        if mask.dtype != torch.bool:
            raise ValueError(f"mask: expected dtype torch.bool, got {mask.dtype}")
        _like("mask", mask, (B, H, W), device, of)


def grid_args(y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps, labels=True):
    """grid_potts_energy's and grid_affinity's arguments (labels=False: y is the image)."""
    _tensor("y" if labels else "image", y, 4)
    B, K, H, W = y.shape
    batch("y" if labels else "image", B)
    if labels and K < 2:
        raise ValueError(f"y: expected K >= 2 classes, got {K}")
    if not 0 <= relaxation < len(RELAXATIONS):
        raise ValueError(f"relaxation: expected an index in [0, {len(RELAXATIONS)}), got {relaxation}")
    if len(offsets) % 2 or not 1 <= len(offsets) // 2 <= MAX_OFFSETS:
        raise ValueError(f"offsets: expected 1 to {MAX_OFFSETS} (dy, dx) pairs, got {len(offsets)} values")
    for dy, dx in zip(offsets[::2], offsets[1::2]):
        if not (dy > 0 or (dy == 0 and dx > 0)):
            raise ValueError(f"offsets: ({dy}, {dx}) is not in the half-plane dy > 0 or (dy == 0 and dx > 0)")
    if len(spatial) != len(offsets) // 2:
        raise ValueError(f"spatial: expected {len(offsets) // 2} factors (one per offset), got {len(spatial)}")
    for g in spatial:
        _scalar("spatial", g)
    _scalar("eps", eps)
    if weights is not None and labels:
        _tensor("weights", weights, 4)
        _like("weights", weights, (B, len(spatial), H, W), y.device)
    elif image is not None:
        _tensor("image", image, 4)
        if image.shape[0] != B or image.shape[2:] != y.shape[2:] or image.device != y.device:
            raise ValueError(f"image: expected shape ({B}, C, {H}, {W}) on {y.device} (that of y), got "
                             f"{tuple(image.shape)} on {image.device}")
        if inv_two_sigma2 is None:
            raise ValueError("inv_two_sigma2: required when image is given")
        _tensor("inv_two_sigma2", inv_two_sigma2, 1)
        _like("inv_two_sigma2", inv_two_sigma2, (B,), y.device, "y" if labels else "image")
    _mask(mask, B, H, W, y.device, "y" if labels else "image")


def unary_args(logits, y, mask, kind, eps):
    _tensor("logits", logits, 4)
    B, K, H, W = logits.shape
    batch("logits", B)
    if K < 2:
        raise ValueError(f"logits: expected K >= 2 classes, got {K}")
    _tensor("y", y, 4)
    _like("y", y, logits.shape, logits.device, "logits")
    if y.dtype != logits.dtype:
        raise ValueError(f"y: expected dtype {logits.dtype} (that of logits), got {y.dtype}")
    if not 0 <= kind < len(UNARIES):
        raise ValueError(f"kind: expected an index in [0, {len(UNARIES)}), got {kind}")
    _scalar("eps", eps)
    _mask(mask, B, H, W, logits.device, "logits")
