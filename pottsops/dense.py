"""Dense bilateral Potts energies: all pairs i != j of an image with
w_ij = exp(-|p_i - p_j|^2 / (2 sigma_xy^2) - |I_i - I_j|^2 / (2 sigma_rgb^2)).

method="lattice": for the relaxations that are quadratic forms in y (bl, q) or in y/|y| (nq), the energy
is written with one bilateral filtering of [m y, m] (K + 1 channels, m the mask):

    sum_{i<j} w_ij (1 - y_i.y_j)        = 1/2 sum_i m_i [(A m)_i - 1 - y_i.(A m y)_i + |y_i|^2]
    sum_{i<j} w_ij (|y_i|^2 + |y_j|^2)/2 = 1/2 sum_i m_i |y_i|^2 ((A m)_i - 1)

with A the filter (self-weight 1 removed by the -1 and +|y_i|^2 terms).  Gradients come from the filter's
own backward (A is symmetric).  O(N), approximate to the lattice's accuracy.

method="exact": the sum over all pairs with w_ij computed on the fly, every relaxation, tiled so that
memory stays O(B K N) (never N x N); see pottsops.reference.dense_potts_energy.
"""
import torch

from pottsops import _backend, bilateral, reference
from pottsops.names import relaxation_name

LATTICE_RELAXATIONS = ("bilinear", "quadratic", "normalized_quadratic")
DENSE_METHODS = ("lattice", "exact")
EXACT_BACKENDS = ("triton", "reference")
PRECISIONS = ("fp32", "tf32", "bf16")  # of the exact method's label products on the triton backend


def lattice_energy(y, features, mask, relaxation, backend):
    """Per-image dense energy (B,) through one bilateral filtering of K + 1 channels."""
    acc = reference.accumulation_dtype(y.dtype)
    y = reference.widen(y)
    m = mask.unsqueeze(1).to(acc) if mask is not None else torch.ones_like(y[:, :1])
    if relaxation == "normalized_quadratic":  # masked pixels hold 1/K (potts_energy), never 0
        y = y / y.norm(dim=1, keepdim=True)
    filtered = bilateral.filter_features(torch.cat([m * y, m], 1), features, backend)
    Ay, Am = filtered[:, :-1], filtered[:, -1:]
    norms = (y * y).sum(1, keepdim=True)
    cross = m * ((y * Ay).sum(1, keepdim=True) - norms)  # sum_{j != i} w_ij y_i.y_j, per pixel
    degree = m * (Am - 1)                                 # sum_{j != i} w_ij
    if relaxation == "quadratic":
        per_pixel = norms * degree - cross
    else:  # bilinear, and normalized quadratic on y / |y|
        per_pixel = degree - cross
    return 0.5 * per_pixel.sum((1, 2, 3))


def check_method(method, relaxation):
    if method not in DENSE_METHODS:
        raise ValueError(f"method: expected one of {DENSE_METHODS} for the dense neighbourhood, got {method!r}")
    if method == "lattice" and relaxation_name(relaxation) not in LATTICE_RELAXATIONS:
        raise ValueError(f"relaxation: {relaxation_name(relaxation)!r} is not a quadratic form, so the lattice "
                         f"cannot compute it; the lattice supports {', '.join(LATTICE_RELAXATIONS)}: use "
                         f"method='exact' (all pairs, small images) for this relaxation")


def dense_energy(y, image, mask, relaxation, sigma_xy, sigma_rgb, method, eps, backend, precision="fp32"):
    """Per-image (B,) dense Potts energy; sigma_rgb a number or (B,) tensor."""
    features = bilateral.bilateral_features(image, sigma_xy, sigma_rgb)
    name = relaxation_name(relaxation)
    if method == "lattice":
        return lattice_energy(y, features, mask, name, backend)
    impl = _backend.resolve(backend, y.device, EXACT_BACKENDS, "potts_energy(neighborhood='dense', method='exact')")
    if impl == "triton":
        from pottsops.triton import dense_potts
        return dense_potts.dense_potts_energy(y, features, mask, name, eps,
                                              "ieee" if precision == "fp32" else precision)
    return reference.dense_potts_energy(y, features, mask, name, eps)
