"""Neighbourhoods: which pairs of pixels a Potts energy sums over, and their spatial factors g_ij.

Grid and window neighbourhoods are lists of offsets (dy, dx) in one half-plane (dy > 0, or dy == 0 and
dx > 0), so that each unordered pair {i, j} appears once, as (i, i + offset).  The dense neighbourhood
(every pair i != j of an image, Gaussian spatial and colour factors) is an object too, DENSE, so that code
asks `neighborhood.dense` instead of comparing strings.
"""
import math
from dataclasses import dataclass

MAX_OFFSETS = 512  # csrc/pottsops/grid_args.h kMaxOffsets
FACTORS = ("inverse_distance", "gaussian")


@dataclass(frozen=True)
class Neighborhood:
    """A grid or window neighbourhood.

    name: how it prints; offsets: ((dy, dx), ...); factor: "inverse_distance" (g = 1/|i - j|, nn4 and
    nn8) or "gaussian" (g = exp(-|i - j|^2 / (2 sigma_xy^2)), windows); default_sigma_xy for gaussian.
    """

    name: str
    offsets: tuple
    factor: str = "inverse_distance"
    default_sigma_xy: float = 1.0
    dense = False

    def __post_init__(self):
        """The same rules the kernels check, so that a user's Neighborhood fails here, on every backend."""
        if self.factor not in FACTORS:
            raise ValueError(f"factor: expected one of {FACTORS}, got {self.factor!r}")
        if not isinstance(self.offsets, (tuple, list)) or not 1 <= len(self.offsets) <= MAX_OFFSETS:
            raise ValueError(f"offsets: expected 1 to {MAX_OFFSETS} (dy, dx) pairs, got {self.offsets!r}")
        for offset in self.offsets:
            ok = isinstance(offset, (tuple, list)) and len(offset) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) for v in offset)
            if not ok or not (offset[0] > 0 or (offset[0] == 0 and offset[1] > 0)):
                raise ValueError(f"offsets: ({offset!r}) is not an integer (dy, dx) in the half-plane dy > 0 or "
                                 "(dy == 0 and dx > 0), which counts each pair once")
        if not (isinstance(self.default_sigma_xy, (int, float)) and 0 < self.default_sigma_xy < float("inf")):
            raise ValueError(f"default_sigma_xy: expected a finite number > 0, got {self.default_sigma_xy!r}")

    @property
    def num_offsets(self):
        return len(self.offsets)

    def flat_offsets(self):
        return [v for offset in self.offsets for v in offset]

    def spatial(self, sigma_xy=None):
        """Spatial factor g_e of each offset."""
        distances = [math.hypot(dy, dx) for dy, dx in self.offsets]
        if self.factor == "inverse_distance":
            return [1.0 / d for d in distances]
        sigma = self.default_sigma_xy if sigma_xy is None else sigma_xy
        return [math.exp(-d * d / (2.0 * sigma * sigma)) for d in distances]

    def __repr__(self):
        return self.name


@dataclass(frozen=True)
class DenseNeighborhood:
    """Every pair i != j of an image (bilateral weights from the image; filtered by the lattice or summed
    exactly, potts.py).  Its spatial bandwidth is potts_energy's sigma_xy."""

    name = "dense"
    dense = True

    def __repr__(self):
        return self.name


NN4 = Neighborhood("nn4", ((0, 1), (1, 0)))
NN8 = Neighborhood("nn8", ((0, 1), (1, 0), (1, 1), (1, -1)))
DENSE = DenseNeighborhood()
NAMED = {"nn4": NN4, "nn8": NN8, "dense": DENSE}


def window(radius, dilation=1):
    """All offsets dilation * (dy, dx) with |dy|, |dx| <= radius, one half-plane, Gaussian spatial
    factors (sigma_xy defaults to radius * dilation).

    >>> pottsops.potts_energy(y, image, neighborhood=pottsops.window(radius=5, dilation=2))
    """
    if not isinstance(radius, int) or isinstance(radius, bool) or radius < 1:
        raise ValueError(f"radius: expected an integer >= 1, got {radius!r}")
    if not isinstance(dilation, int) or isinstance(dilation, bool) or dilation < 1:
        raise ValueError(f"dilation: expected an integer >= 1, got {dilation!r}")
    offsets = tuple((dilation * dy, dilation * dx)
                    for dy in range(0, radius + 1) for dx in range(-radius, radius + 1)
                    if dy > 0 or dx > 0)
    if len(offsets) > MAX_OFFSETS:
        raise ValueError(f"radius: window({radius}) has {len(offsets)} offsets, at most {MAX_OFFSETS} supported")
    return Neighborhood(f"window(radius={radius}, dilation={dilation})", offsets, "gaussian",
                        float(radius * dilation))


def as_neighborhood(value, argument="neighborhood", dense=True):
    """A Neighborhood (or DENSE) from a name ('nn4', 'nn8', 'dense') or a Neighborhood (e.g. from window());
    dense=False refuses the dense neighbourhood (where only grids and windows are supported)."""
    if isinstance(value, Neighborhood) or (dense and value is DENSE):
        return value
    if isinstance(value, str) and value in NAMED and (dense or value != "dense"):
        return NAMED[value]
    valid = ", ".join(f"{n!r}" for n in NAMED if dense or n != "dense")
    raise ValueError(f"{argument}: unknown neighbourhood {value!r}; expected one of {valid} "
                     f"or pottsops.window(radius, dilation)")
