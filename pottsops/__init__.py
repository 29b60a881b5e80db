"""pottsops: fused Potts/CRF energies, unaries and a pseudo-label solver for scribble segmentation.

Public API:
    potts_energy, affinity, window   Potts energies over grid, window and dense neighbourhoods
    bilateral_filter                 Gaussian filtering over position and colour (permutohedral lattice)
    unary, self_labeling_loss        unaries from logits and the network loss (pottsops.unary)
    solve                            soft pseudo-labels from logits, image and scribbles (pottsops.solver)
    graphcut.alpha_expansion         α-expansion on the discrete Potts problem (extra: pottsops[graphcut])
    backends                         which backends run here, and why not
    nn                               drop-in loss modules: PottsLoss, DenseCRFLoss (rloss), GatedCRFLoss,
                                     SoftSelfLabelingLoss
    RELAXATIONS, UNARIES             accepted names (aliases in pottsops.names)
"""
from pottsops._backend import backends
from pottsops.lattice import bilateral_filter
from pottsops.names import RELAXATIONS, UNARIES
from pottsops.neighborhoods import Neighborhood, window
from pottsops.potts import affinity, potts_energy
from pottsops.solver import SolveInfo, solve
from pottsops.unary import self_labeling_loss, unary

__all__ = ["potts_energy", "affinity", "window", "bilateral_filter", "Neighborhood", "unary", "self_labeling_loss",
           "solve", "SolveInfo", "backends", "RELAXATIONS", "UNARIES", "nn", "graphcut"]
from pottsops._build_settings import VERSION as __version__  # noqa: E402
from pottsops import graphcut, nn  # noqa: E402  (after the functions they are built on)
