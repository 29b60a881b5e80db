"""Bilateral (Gaussian) filtering over joint position and colour space.

    out_i = sum_j exp(-|p_i - p_j|^2 / (2 sigma_xy^2) - |I_i - I_j|^2 / (2 sigma_rgb^2)) values_j

over all pixels j of the same image (j = i included).  The fast backends approximate it with the
permutohedral lattice (Adams et al. 2010) in O(N); the reference computes the exact sum in O(N^2)
(chunked, small images only) and is the oracle the lattice's error is measured against.
"""
import torch

from pottsops import _backend, _checks, reference

FILTER_BACKENDS = ("cuda", "cpu", "reference")


def bilateral_features(image, sigma_xy, sigma_rgb):
    """(B, 2 + C, H, W) features: row / sigma_xy, column / sigma_xy, image / sigma_rgb.

    sigma_rgb is a number or a (B,) tensor (one bandwidth per image)."""
    B, C, H, W = image.shape
    dtype = reference.accumulation_dtype(image.dtype)
    rows = torch.arange(H, device=image.device, dtype=dtype).view(1, 1, H, 1).expand(B, 1, H, W)
    cols = torch.arange(W, device=image.device, dtype=dtype).view(1, 1, 1, W).expand(B, 1, H, W)
    if isinstance(sigma_rgb, torch.Tensor):
        sigma_rgb = sigma_rgb.to(device=image.device, dtype=dtype).view(B, 1, 1, 1)
    return torch.cat([rows / sigma_xy, cols / sigma_xy, image.to(dtype) / sigma_rgb], 1)


def filter_features(values, features, backend="auto"):
    """The filter of already-scaled features (B, d, H, W); see bilateral_filter."""
    impl = _backend.resolve(backend, values.device, FILTER_BACKENDS, "bilateral_filter")
    if impl == "reference":
        return reference.bilateral_filter(values, features)
    return torch.ops.pottsops.bilateral_filter(values, features)


def bilateral_filter(values, image, sigma_xy, sigma_rgb, *, backend="auto"):
    """Gaussian filter of values (B, C, H, W) over position and image colour, all C channels at once.

    values: (B, C, H, W) floating; gradients flow to it (the filter is linear and symmetric).
    image: (B, C_f, H, W) features (1 channel for grey MRI, 3 for RGB); no gradient flows to it.
    sigma_xy, sigma_rgb: bandwidths in pixels and in image units, > 0.
    backend: 'cuda' or 'cpu' (lattice), 'reference' (exact, O(N^2): small images), or 'auto'.

    >>> ones = torch.ones(1, 1, 64, 64)
    >>> degree = pottsops.bilateral_filter(ones, image, sigma_xy=10.0, sigma_rgb=15.0)  # sum_j w_ij
    """
    _checks.check_float("values", values)
    if values.dim() != 4:
        raise ValueError(f"values: expected a 4-D tensor (B, C, H, W), got shape {_checks.shape_str(values)}")
    _checks.check_image("image", image, "values", values)
    _checks.check_positive("sigma_xy", sigma_xy)
    _checks.check_positive("sigma_rgb", sigma_rgb)
    if 2 + image.shape[1] > 16:
        raise ValueError(f"image: expected at most 14 channels (the lattice has 2 + C_f <= 16 dimensions), "
                         f"got {image.shape[1]}")
    features = bilateral_features(image.detach(), sigma_xy, sigma_rgb)
    return filter_features(values, features, backend)
