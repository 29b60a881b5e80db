"""Bilateral (Gaussian) filtering over joint position and colour space.

    out_i = sum_j exp(-|p_i - p_j|^2 / (2 sigma_xy^2) - |I_i - I_j|^2 / (2 sigma_rgb^2)) values_j

over all pixels j of the same image (j = i included).  The fast backends approximate it with the
permutohedral lattice (Adams et al. 2010) in O(N); the reference computes the exact sum in O(N^2)
(chunked, small images only) and is the oracle the lattice's error is measured against.
"""
import torch

from pottsops import _backend, _checks, reference

MAX_FEATURE = 2.0 ** 24  # csrc/pottsops/lattice_args.h kMaxLatticeFeature: the lattice's coordinate range
MAX_LATTICE_DIM = 6  # csrc/pottsops/lattice.h kMaxLatticeDim: 2 positions + up to 4 image channels
SPARSE = "too sparse for the lattice"  # the start of lattice_build's refusal of features it cannot filter well

FILTER_BACKENDS = ("cuda", "cpu", "reference")


def bilateral_features(image, sigma_xy, sigma_rgb, least=None):
    """(B, 2 + C, H, W) features: row / sigma_xy, column / sigma_xy, image / sigma_rgb.

    sigma_rgb is a number or a (B,) tensor (one bandwidth per image); least: the image's least value per
    image and channel (B, C), if known (image_bounds)."""
    B, C, H, W = image.shape
    dtype = reference.accumulation_dtype(image.dtype)
    rows = torch.arange(H, device=image.device, dtype=dtype).view(1, 1, H, 1).expand(B, 1, H, W)
    cols = torch.arange(W, device=image.device, dtype=dtype).view(1, 1, 1, W).expand(B, 1, H, W)
    if isinstance(sigma_rgb, torch.Tensor):
        sigma_rgb = sigma_rgb.to(device=image.device, dtype=dtype).view(B, 1, 1, 1)
    image = image.to(dtype)
    if image.numel():  # the filter depends on differences only: from 0 up, the lattice's coordinates stay small
        least = image.amin((2, 3)) if least is None else least
        image = image - least.to(dtype)[:, :, None, None]
    return torch.cat([rows / sigma_xy, cols / sigma_xy, image / sigma_rgb], 1)


def check_bandwidth(name, sigma, dtype):
    """sigma > 0 whose inverse is finite in the features' dtype."""
    _checks.check_positive(name, sigma)
    if not 1.0 / sigma <= torch.finfo(dtype).max:
        raise ValueError(f"{name}: expected a number whose inverse is finite in {dtype}, got {sigma!r}")


def check_lattice_channels(image):
    """At most MAX_LATTICE_DIM - 2 image channels: beyond them the lattice cannot be accurate in bounded memory
    (docs/design.md, "Lattice accuracy")."""
    if 2 + image.shape[1] > MAX_LATTICE_DIM:
        raise ValueError(f"image: the lattice is accurate up to {MAX_LATTICE_DIM - 2} channels (on a smooth image it "
                         f"keeps 0.80 of the exact sum at 4; the blur it can afford kept 0.59 at 5), got "
                         f"{image.shape[1]}: use fewer channels (a projection such as PCA), or the exact filter on "
                         "small images (backend='reference', method='exact')")


def checked_bounds(image, sigma_xy, inv_sigma_rgb, rgb_name="sigma_rgb", where=None, lattice=True):
    """The image's least value per image and channel (B, C), from one pass over it that also checks it: its
    values finite (where the (B, H, W) mask `where` is True: the caller has filled the rest), and, for a
    lattice, its coordinates (positions / sigma_xy, colours from their least * inv_sigma_rgb, a number or
    (B,)) within its range, or the error names the bandwidth that is too small.  None under torch.compile's
    tracing (nothing is checked; bilateral_features then finds the least itself) and for an empty image."""
    H, W = image.shape[2:]
    if lattice and (max(H, W) - 1) / sigma_xy > MAX_FEATURE:
        raise ValueError(f"sigma_xy: expected at least {(max(H, W) - 1) / MAX_FEATURE:.3g} for a {H} x {W} image "
                         f"(positions / sigma_xy beyond 2^24 leave the lattice's range), got {sigma_xy!r}")
    if torch.compiler.is_compiling() or not image.numel():
        return None
    least, most = image.flatten(2).aminmax(dim=2)  # NaN or Inf anywhere reaches one of them
    scale = inv_sigma_rgb.to(image.device).view(-1, 1) if isinstance(inv_sigma_rgb, torch.Tensor) else inv_sigma_rgb
    finite = torch.isfinite(least).all() & torch.isfinite(most).all()
    largest = ((most.double() - least.double()) * scale).amax()
    finite, largest = torch.stack([finite.double(), largest]).tolist()  # one copy to the host
    if not finite:
        raise ValueError(f"image: expected finite values{'' if where is None else ' where mask is True'}, "
                         "got NaN or Inf")
    if lattice and largest > MAX_FEATURE:
        raise ValueError(f"{rgb_name}: colour differences / sigma_rgb reach {largest:.3g}, beyond the lattice's "
                         "range 2^24: a sigma_rgb too small for the image's values")
    return least


class LatticeFilter:
    """The filter of one batch of already-scaled features (B, d, H, W), the lattice built once: building it
    costs about as much as filtering a few dozen channels, so a caller that filters values of the same
    images again (the solver's steps) keeps this object.  filter(values (B, C, H, W)) -> (B, C, H, W)."""

    def __init__(self, features, backend="auto"):
        self.features = features
        impl = _backend.resolve(backend, features.device, FILTER_BACKENDS, "bilateral_filter")
        self.lattice = None
        if impl != "reference":
            try:
                self.lattice = torch.ops.pottsops.lattice_build(features)
            except RuntimeError as error:  # name the user's arguments, not the op's
                if SPARSE not in str(error):
                    raise
                raise ValueError("image: " + str(error).split("features: ", 1)[-1].split("\n")[0]) from None

    def _check(self, values):
        """values of the images the lattice was built for: (B, C, H, W) with the features' B, H and W (the op
        itself sees only the pixel count, and the reference would broadcast a batch of one)."""
        _checks.check_float("values", values)
        B, _, H, W = self.features.shape
        if values.dim() != 4 or values.shape[0] != B or values.shape[2:] != self.features.shape[2:]:
            raise ValueError(f"values: expected shape ({B}, C, {H}, {W}), the batch and size of the images the "
                             f"lattice was built for, got {_checks.shape_str(values)}")
        _checks.check_device("values", values, "the lattice's features", self.features)

    def __call__(self, values):
        self._check(values)
        if self.lattice is None:
            return reference.bilateral_filter(values, self.features)
        return torch.ops.pottsops.lattice_filter(values, self.lattice)

    def quadratic(self, values):
        """(A values, forms (B, C)): forms[b, c] = values[b, c] . (A values)[b, c] over the pixels, with the
        gradient 2 A values, which the backward pass takes from the filtered values (no second filtering)."""
        self._check(values)
        if self.lattice is None:
            filtered = reference.bilateral_filter(values, self.features)
            return filtered, (values * filtered).sum((2, 3))
        return torch.ops.pottsops.lattice_quadratic(values, self.lattice)


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
    return prepare_filter(image, sigma_xy, sigma_rgb, backend=backend)(values)


def prepare_filter(image, sigma_xy, sigma_rgb, *, backend="auto"):
    """bilateral_filter's arguments but the values checked, and its LatticeFilter (lattice built once)."""
    dtype = reference.accumulation_dtype(image.dtype)
    check_bandwidth("sigma_xy", sigma_xy, dtype)
    check_bandwidth("sigma_rgb", sigma_rgb, dtype)
    image = image.detach()
    on_lattice = _backend.resolve(backend, image.device, FILTER_BACKENDS, "bilateral_filter") != "reference"
    if on_lattice:
        check_lattice_channels(image)
    least = checked_bounds(image, sigma_xy, 1.0 / sigma_rgb, lattice=on_lattice)
    return LatticeFilter(bilateral_features(image, sigma_xy, sigma_rgb, least), backend)
