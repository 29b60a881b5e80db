"""Potts energies of soft labelings over grid and window neighbourhoods, and their edge weights."""
import math

import torch

from pottsops import _backend, _checks, lattice, dense, reference
from pottsops.names import relaxation_index, relaxation_name
from pottsops.neighborhoods import NN4, as_neighborhood

REDUCTIONS = ("sum", "mean", "none")
GRID_BACKENDS = ("cuda", "triton", "cpu", "reference")


def inv_two_sigma2(image, sigma_rgb, mask=None, filled=False):
    """1 / (2 sigma_rgb^2) per image (B,), in float32 (float64 for a float64 image).

    sigma_rgb="auto" sets sigma_rgb^2 of each image to the mean of |I_i - I_j|^2 over its 4-neighbour
    pairs (pairs with a masked-out end excluded); an image without differences gets 0 (weights 1).
    filled: the caller has replaced the masked-out pixels (_checks.fill_masked) already.
    """
    dtype = reference.accumulation_dtype(image.dtype)
    B = image.shape[0]
    if sigma_rgb != "auto":
        _checks.check_positive("sigma_rgb", sigma_rgb)
        _checks.warn_image_scale(image, sigma_rgb)
        square = 2.0 * float(sigma_rgb) * float(sigma_rgb)  # 0.0 for sigma_rgb = 1e-300: refused below
        inv = 1.0 / square if square > 0 else math.inf
        if not inv <= torch.finfo(dtype).max:
            raise ValueError(f"sigma_rgb: expected a number whose 1 / (2 sigma_rgb^2) is finite in {dtype} "
                             f"(sigma_rgb >= {(0.5 / torch.finfo(dtype).max) ** 0.5:.2g}), got {sigma_rgb!r}")
        return torch.full((B,), inv, dtype=dtype, device=image.device)
    image = image.to(dtype)
    if not filled:  # what a masked-out pixel holds (even NaN) must not reach the mean
        image = _checks.fill_masked(image, mask)
    H, W = image.shape[2:]
    total = image.new_zeros(B)
    count = image.new_zeros(B)
    for dy, dx in NN4.offsets:
        first, second = reference.pair_slices(H, W, dy, dx)
        diff = image[:, :, first[0], first[1]] - image[:, :, second[0], second[1]]
        squared = (diff * diff).sum(1)
        if mask is not None:
            valid = reference.pair_valid(mask, first, second)
            squared = torch.where(valid, squared, 0.0)
            count = count + valid.sum((1, 2))
        else:
            count = count + squared[0].numel()
        total = total + squared.sum((1, 2))
    sigma2 = total / count.clamp(min=1)
    return torch.where(sigma2 > 0, (0.5 / sigma2).clamp(max=torch.finfo(dtype).max), 0.0)


def _check_common(y_name, y, image, weights, mask, neighborhood):
    if image is not None:
        _checks.check_image("image", image, y_name, y)
    if weights is not None:
        _checks.check_float("weights", weights)
        B, _, H, W = y.shape
        _checks.check_like("weights", weights, (B, neighborhood.num_offsets, H, W),
                           f"one channel per offset of {neighborhood}")
        _checks.check_device("weights", weights, y_name, y)
    _checks.check_mask(mask, y_name, y)


def _validate_values(y, image, weights, mask):
    """The value checks of validate=True (a full pass over the inputs)."""
    present = mask.unsqueeze(1).expand_as(y) if mask is not None else torch.ones_like(y, dtype=torch.bool)
    values = y[present].float()
    _checks.check_finite("y", values)
    if values.numel() and (values.min() < -1e-3 or values.max() > 1 + 1e-3):
        raise ValueError(f"y: expected values in [0, 1] (soft labels), got range "
                         f"[{float(values.min()):.4g}, {float(values.max()):.4g}]")
    sums = y.float().sum(1)[present[:, 0]]
    tolerance = 1e-2 if y.element_size() < 4 else 1e-4
    if sums.numel() and float((sums - 1).abs().max()) > tolerance:
        raise ValueError(f"y: expected each pixel on the simplex (sum over dim 1 == 1), got sums up to "
                         f"{float((sums - 1).abs().max()):.3g} away from 1")
    if image is not None:
        _checks.check_finite("image", image)
    if weights is not None:
        _checks.check_finite("weights", weights)
        if bool((weights < 0).any()):
            raise ValueError("weights: expected non-negative edge weights, got a negative value")


def _grid_energy(impl, y, image, weights, mask, inv, neighborhood, spatial, relaxation, eps):
    if impl == "reference":
        return reference.grid_potts_energy(y, image, weights, mask, inv, neighborhood.offsets, spatial,
                                           relaxation_name(relaxation), eps)
    args = (y, image, weights, mask, inv, neighborhood.flat_offsets(), spatial, relaxation_index(relaxation),
            eps)
    if impl == "triton":
        from pottsops.triton import grid_potts
        return grid_potts.grid_potts_energy(*args)
    return torch.ops.pottsops.grid_potts_energy(*args)


def _reduce(per_image, reduction, mask, y):
    if reduction == "none":
        return per_image
    if reduction == "sum":
        return per_image.sum()
    count = mask.sum().clamp(min=1) if mask is not None else max(1, y.shape[0] * y.shape[2] * y.shape[3])
    return per_image.sum() / count  # an empty mask: 0


def potts_energy(y, image=None, *, relaxation="cd", neighborhood="nn4", sigma_rgb=9.0, sigma_xy=None,
                 weights=None, mask=None, eps=1e-8, reduction="sum", backend="auto", validate=False,
                 method="lattice", precision="fp32"):
    """Potts energy E(y) = sum over unordered neighbour pairs {i, j} of w_ij P(y_i, y_j).

    y: (B, K, H, W) soft labels (each pixel on the K-simplex), float; gradients flow to y.
    image: (B, C, H, W) features for the affinity w_ij = g_ij exp(-|I_i - I_j|^2 / (2 sigma_rgb^2))
        (RGB in 0..255 for the default sigma_rgb=9), or None for w_ij = g_ij.  No gradient flows to it.
    relaxation: 'bilinear' ('bl'), 'quadratic' ('q'), 'normalized_quadratic' ('nq'), 'collision_ce'
        ('cce'), 'log_quadratic' ('lq') or 'collision_divergence' ('cd').
    neighborhood: 'nn4', 'nn8', pottsops.window(radius, dilation), or 'dense' (all pairs i != j of an
        image, w_ij = exp(-|i - j|^2 / (2 sigma_xy^2)) exp(-|I_i - I_j|^2 / (2 sigma_rgb^2)); needs image).
    sigma_rgb: colour bandwidth > 0, or 'auto' (per image, mean squared 4-neighbour difference).
    sigma_xy: spatial bandwidth of window neighbourhoods (default radius * dilation) and of 'dense'
        (default 100 pixels).
    weights: (B, E, H, W) edge weights, one channel per offset, replacing the image affinity; they
        receive gradients when they require grad (learned affinities).
    mask: (B, H, W) bool; pairs touching a pixel with mask False are skipped.
    reduction: 'sum' (scalar), 'mean' (sum / number of valid pixels) or 'none' (per image, (B,)).
    backend: 'auto', 'cuda', 'triton', 'cpu' or 'reference' (POTTSOPS_BACKEND overrides auto).
    validate: also check values (finite, on the simplex); costs a pass over the inputs.
    method: for 'dense' only: 'lattice' (permutohedral filtering, O(N), relaxations bl, q, nq) or
        'exact' (all pairs, every relaxation, O(N^2) time and O(BKN) memory: small images).
    precision: for method='exact' on the triton backend: 'fp32' (default), 'tf32' or 'bf16' label
        products (tensor cores, fp32 accumulation; the feature distances stay fp32).

    >>> y = torch.softmax(torch.randn(2, 21, 64, 64), 1).requires_grad_()
    >>> image = torch.rand(2, 3, 64, 64) * 255
    >>> pottsops.potts_energy(y, image, relaxation="cd", neighborhood="nn8").backward()
    """
    return named_energy("y", y, image, relaxation=relaxation, neighborhood=neighborhood, sigma_rgb=sigma_rgb,
                        sigma_xy=sigma_xy, weights=weights, mask=mask, eps=eps, reduction=reduction, backend=backend,
                        validate=validate, method=method, precision=precision)


def named_energy(y_name, y, image=None, *, relaxation="cd", neighborhood="nn4", sigma_rgb=9.0, sigma_xy=None,
                 weights=None, mask=None, eps=1e-8, reduction="sum", backend="auto", validate=False,
                 method="lattice", precision="fp32"):
    """potts_energy with its labels named y_name in the errors (the loss modules' own argument names), so that
    a module checks nothing potts_energy checks again."""
    _checks.check_labels(y_name, y)
    relaxation_name(relaxation)
    _checks.check_choice("reduction", reduction, REDUCTIONS)
    neighborhood = as_neighborhood(neighborhood)
    if neighborhood.dense:
        return _dense_potts(y_name, y, image, relaxation, sigma_rgb, sigma_xy, weights, mask, eps, reduction,
                            backend, validate, method, precision)
    _check_common(y_name, y, image, weights, mask, neighborhood)
    if sigma_xy is not None:
        _checks.check_positive("sigma_xy", sigma_xy)
    if sigma_rgb != "auto":
        _checks.check_positive("sigma_rgb", sigma_rgb)
    _checks.check_number("eps", eps)
    if image is not None:
        image = image.detach()
    if validate:
        _validate_values(y, image, weights, mask)
    inv = inv_two_sigma2(image, sigma_rgb, mask) if image is not None and weights is None else None
    impl = _backend.resolve(backend, y.device, GRID_BACKENDS, "potts_energy")
    spatial = neighborhood.spatial(sigma_xy)
    per_image = _grid_energy(impl, y, image if weights is None else None, weights, mask, inv, neighborhood,
                             spatial, relaxation, float(eps))
    return _reduce(per_image, reduction, mask, y)


DENSE_SIGMA_XY = 100.0


def _dense_potts(y_name, y, image, relaxation, sigma_rgb, sigma_xy, weights, mask, eps, reduction, backend, validate,
                 method, precision):
    energy = prepare_dense(y, image, relaxation, sigma_rgb, sigma_xy, weights, mask, eps, backend, method, precision,
                           y_name=y_name)
    if validate:
        _validate_values(y, image.detach(), None, mask)
    return _reduce(energy(y), reduction, mask, y)


def prepare_dense(like, image, relaxation, sigma_rgb, sigma_xy, weights, mask, eps, backend, method, precision,
                  filled=False, y_name="y"):
    """The arguments of a dense potts_energy checked, and the dense.DenseEnergy of labels shaped like `like`
    (y -> per-image energies (B,)), with what depends on the image alone (bandwidths, lattice) made once:
    pottsops.solve calls it at every step.  filled: the caller (solve) has checked image and mask and filled the masked-out pixels."""
    if image is None:
        raise ValueError("image: the dense neighbourhood needs an image (its weights are bilateral)")
    if weights is not None:
        raise ValueError("weights: not supported with neighborhood='dense' (N^2 edge weights); pass image")
    if not filled:
        _checks.check_image("image", image, y_name, like)
        _checks.check_mask(mask, y_name, like)
    sigma_xy = DENSE_SIGMA_XY if sigma_xy is None else sigma_xy
    lattice.check_bandwidth("sigma_xy", sigma_xy, reference.accumulation_dtype(image.dtype))
    _checks.check_number("eps", eps)
    dense.check_method(method, relaxation)
    _checks.check_choice("precision", precision, dense.PRECISIONS)
    image = image.detach()
    # a masked-out pixel takes part in no pair: whatever it holds (even NaN) is replaced, inside the image's
    # range (a 0 beside colours offset by 1e9 would fail the lattice's range check only when masked)
    if not filled:
        image = _checks.fill_masked(image, mask)
    inv = inv_two_sigma2(image, sigma_rgb, mask, filled=True)
    if method == "lattice":
        lattice.check_lattice_channels(image)
    # one pass over the image: finite where mask is True (the rest is filled), within the lattice's range
    least = lattice.checked_bounds(image, sigma_xy, (2 * inv).sqrt(), where=mask, lattice=method == "lattice")
    return dense.DenseEnergy(image, mask, relaxation, sigma_xy, (0.5 / inv).sqrt(), method, float(eps), backend,
                             precision, least)


def affinity(image, neighborhood="nn4", *, sigma_rgb=9.0, sigma_xy=None, mask=None, backend="auto"):
    """Edge weights (B, E, H, W) that potts_energy uses: channel e holds w_ij for the pair
    (i, j = i + offset_e) at pixel i, zero where j is outside the image or either end is masked out.

    >>> w = pottsops.affinity(image, "nn8", sigma_rgb=15.0)   # (B, 4, H, W)
    >>> pottsops.potts_energy(y, weights=w, neighborhood="nn8")  # same as passing image
    """
    _checks.check_float("image", image)
    if image.dim() != 4:
        raise ValueError(f"image: expected a 4-D tensor (B, C, H, W), got shape {_checks.shape_str(image)}")
    neighborhood = as_neighborhood(neighborhood, dense=False)
    if sigma_xy is not None:
        _checks.check_positive("sigma_xy", sigma_xy)
    if mask is not None:
        _checks.check_mask(mask, "image", image)
    image = image.detach()
    inv = inv_two_sigma2(image, sigma_rgb, mask)
    spatial = neighborhood.spatial(sigma_xy)
    impl = _backend.resolve(backend, image.device, GRID_BACKENDS, "affinity")
    if impl == "reference":
        return reference.grid_affinity(image, mask, inv, neighborhood.offsets, spatial)
    args = (image, mask, inv, neighborhood.flat_offsets(), spatial)
    if impl == "triton":
        from pottsops.triton import grid_potts
        return grid_potts.grid_affinity(*args)
    return torch.ops.pottsops.grid_affinity(*args)
