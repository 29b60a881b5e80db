"""pottsops: fused Potts/CRF energies, unaries and a pseudo-label solver for scribble segmentation.

Public API:
    potts_energy, affinity, window   Potts energies over grid, window and dense neighbourhoods
    bilateral_filter                 Gaussian filtering over position and colour (permutohedral lattice)
    unary, self_labeling_loss        unaries from logits and the network loss (pottsops.unary)
    solve                            soft pseudo-labels from logits, image and scribbles (pottsops.solver)
    graphcut.alpha_expansion         α-expansion on the discrete Potts problem (extra: pottsops[graphcut])
    backends, build                  which backends run here, and why not; compile the kernels now
    nn                               drop-in loss modules: PottsLoss, DenseCRFLoss (rloss), GatedCRFLoss,
                                     SoftSelfLabelingLoss
    RELAXATIONS, UNARIES             accepted names (aliases in pottsops.names)
"""
import torch as _torch

# The torch versions pottsops is built and tested for (pyproject.toml says the same): the CPU tests run on
# 2.14 in CI and on 2.11, the GPU machine's, through `make check-torch`; older ones lack torch.library APIs
# that the ops are registered with.
TORCH_MIN = (2, 6)
if tuple(int(part) for part in _torch.__version__.split("+")[0].split(".")[:2]) < TORCH_MIN:
    raise ImportError(f"pottsops needs torch >= {'.'.join(map(str, TORCH_MIN))} (tested on 2.11 and 2.14), found "
                      f"torch {_torch.__version__}: pip install -U torch")

from pottsops._backend import backends, build  # noqa: E402
from pottsops.lattice import bilateral_filter  # noqa: E402
from pottsops.names import RELAXATIONS, UNARIES  # noqa: E402
from pottsops.neighborhoods import Neighborhood, window  # noqa: E402
from pottsops.potts import affinity, potts_energy  # noqa: E402
from pottsops.solver import SolveInfo, solve  # noqa: E402
from pottsops.unary import self_labeling_loss, unary  # noqa: E402

__all__ = ["potts_energy", "affinity", "window", "bilateral_filter", "Neighborhood", "unary", "self_labeling_loss",
           "solve", "SolveInfo", "backends", "build", "RELAXATIONS", "UNARIES", "nn", "graphcut"]
from pottsops._build_settings import VERSION as __version__  # noqa: E402
from pottsops import graphcut, nn  # noqa: E402  (after the functions they are built on)
