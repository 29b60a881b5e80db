"""Dense bilateral Potts energies: all pairs i != j of an image with
w_ij = exp(-|p_i - p_j|^2 / (2 sigma_xy^2) - |I_i - I_j|^2 / (2 sigma_rgb^2)).

method="lattice": for the relaxations that are quadratic forms in y (bl, q) or in y/|y| (nq), the energy
is written with one bilateral filtering of [m y, m] (K + 1 channels, m the mask):

    sum_{i<j} w_ij (1 - y_i.y_j)        = 1/2 sum_i m_i [(A m)_i - 1 - y_i.(A m y)_i + |y_i|^2]
    sum_{i<j} w_ij (|y_i|^2 + |y_j|^2)/2 = 1/2 sum_i m_i |y_i|^2 ((A m)_i - 1)

with A the filter (self-weight 1 removed by the -1 and +|y_i|^2 terms).  The sums of y.(A m y) and
m.(A m) are quadratic forms, read off the lattice with the filtering (pottsops::lattice_quadratic); their
gradient 2 A m y reuses the filtered labels, so the backward pass filters nothing.  O(N), approximate to
the lattice's accuracy.  The lattice is built once per batch of images (DenseEnergy) and reused by every
energy of the same images (the solver's steps).

method="exact": the sum over all pairs with w_ij computed on the fly, every relaxation, tiled so that
memory stays O(B K N) (never N x N); see pottsops.reference.dense_potts_energy.
"""
import torch

from pottsops import _backend, lattice, reference
from pottsops.names import relaxation_name

LATTICE_RELAXATIONS = ("bilinear", "quadratic", "normalized_quadratic")
DENSE_METHODS = ("lattice", "exact")
EXACT_BACKENDS = ("triton", "reference")
PRECISIONS = ("fp32", "tf32", "bf16")  # of the exact method's label products on the triton backend


def pixel_weights(y, mask):
    """m (B, 1, H, W) in y's accumulation type: the mask as 0/1, or ones."""
    acc = reference.accumulation_dtype(y.dtype)
    return mask.unsqueeze(1).to(acc) if mask is not None else torch.ones_like(y[:, :1], dtype=acc)


def lattice_energy(y, lattice_filter, mask, relaxation):
    """Per-image dense energy (B,) through one filtering of K + 1 channels (see the module's docstring)."""
    y = reference.widen(y)
    m = pixel_weights(y, mask)
    if relaxation == "normalized_quadratic":  # masked pixels hold 1/K (potts_energy), never 0
        y = y / y.norm(dim=1, keepdim=True)
    filtered, forms = lattice_filter.quadratic(torch.cat([m * y, m], 1))
    # forms: y.(A m y) summed over the pixels per class, then m.(A m); (A m) depends on the image alone
    cross = forms[:, :-1].sum(1)
    if relaxation == "quadratic":
        Am = filtered[:, -1:].detach()
        return 0.5 * ((m * (y * y).sum(1, keepdim=True) * Am).sum((1, 2, 3)) - cross)
    return 0.5 * (forms[:, -1] - m.sum((1, 2, 3)) - cross + (m * y * y).sum((1, 2, 3)))


def lattice_energy_and_gradient(y, lattice_filter, mask, relaxation, mask_terms):
    """lattice_energy(y) (B,) for bl and q with its gradient with respect to y in closed form, from one
    filtering of the K channels m y (A symmetric: d/dy of y.(A m y) over m is 2 m A m y); mask_terms =
    (A m, sum_i m_i (A m)_i), which depend on the image alone (DenseEnergy makes them once).  What the solver
    calls at every step, without autograd's graph."""
    y = reference.widen(y)
    m = pixel_weights(y, mask)
    Am, mAm = mask_terms
    my = m * y
    filtered = lattice_filter(my)
    cross = (my * filtered).sum((1, 2, 3))
    if relaxation == "quadratic":
        energy = 0.5 * ((m * (y * y).sum(1, keepdim=True) * Am).sum((1, 2, 3)) - cross)
        return energy, m * (y * Am - filtered)
    energy = 0.5 * (mAm - m.sum((1, 2, 3)) - cross + (m * y * y).sum((1, 2, 3)))
    return energy, m * (y - filtered)


def quadratic_form(values, lattice_filter):
    """Per image (B,) sum_i values_i . (A values)_i, with its gradient 2 A values (one filtering)."""
    return lattice_filter.quadratic(values)[1].sum(1)


def check_method(method, relaxation):
    if method not in DENSE_METHODS:
        raise ValueError(f"method: expected one of {DENSE_METHODS} for the dense neighbourhood, got {method!r}")
    if method == "lattice" and relaxation_name(relaxation) not in LATTICE_RELAXATIONS:
        raise ValueError(f"relaxation: {relaxation_name(relaxation)!r} is not a quadratic form, so the lattice "
                         f"cannot compute it; the lattice supports {', '.join(LATTICE_RELAXATIONS)}: use "
                         f"method='exact' (all pairs, small images) for this relaxation")


class DenseEnergy:
    """The dense energy of one batch of images: what depends on the images alone (their features, the
    lattice) made once, then energy(y) -> (B,) per call.  sigma_rgb a number or a (B,) tensor."""

    def __init__(self, image, mask, relaxation, sigma_xy, sigma_rgb, method, eps, backend, precision="fp32", least=None):
        self.features = lattice.bilateral_features(image, sigma_xy, sigma_rgb, least)
        self.mask, self.relaxation, self.method, self.eps = mask, relaxation_name(relaxation), method, eps
        self.backend, self.precision = backend, precision
        self.filter = lattice.LatticeFilter(self.features, backend) if method == "lattice" else None
        self.mask_terms = None

    def __call__(self, y):
        if self.mask is not None:  # a masked-out pixel takes part in no pair; 1/K keeps nq's y/|y| finite
            y = torch.where(self.mask.unsqueeze(1), y, 1.0 / y.shape[1])
        if self.method == "lattice":
            return lattice_energy(y, self.filter, self.mask, self.relaxation)
        impl = _backend.resolve(self.backend, y.device, EXACT_BACKENDS,
                                "potts_energy(neighborhood='dense', method='exact')")
        if impl == "triton":
            from pottsops.triton import dense_potts
            if y.shape[1] > dense_potts.MAX_CLASSES and self.backend == "auto":  # too many for the tiles
                return reference.dense_potts_energy(y, self.features, self.mask, self.relaxation, self.eps)
            return dense_potts.dense_potts_energy(y, self.features, self.mask, self.relaxation, self.eps,
                                                  "ieee" if self.precision == "fp32" else self.precision)
        return reference.dense_potts_energy(y, self.features, self.mask, self.relaxation, self.eps)

    def energy_and_gradient(self, y):
        """(energy (B,), its gradient with respect to y) in closed form where the lattice computes a bl or q
        energy (lattice_energy_and_gradient), else None: autograd's, through __call__, is the caller's."""
        if self.method != "lattice" or self.relaxation not in ("bilinear", "quadratic"):
            return None
        if self.mask_terms is None:
            m = pixel_weights(y, self.mask)
            Am = self.filter(m)
            self.mask_terms = (Am, (m * Am).sum((1, 2, 3)))
        return lattice_energy_and_gradient(y, self.filter, self.mask, self.relaxation, self.mask_terms)
