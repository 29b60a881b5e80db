"""The energy that solve() minimises, per image, and its gradient with respect to the labels y:

    E(y) = eta sum_{i not in S, mask} H(y_i, sigma_i)  +  lam sum_{{i,j} in N} w_ij P(y_i, y_j)

with y_i fixed to the one-hot scribble on S (docs/contract.md, the solver).  Problem computes it through the
public ops and autograd (any backend and neighbourhood); FusedProblem through the compiled ops, one pass
for the energy and its gradient and one for the step (cpu and cuda backends, grid and window
neighbourhoods).
"""
import functools
import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from pottsops import _backend, _checks, reference
from pottsops.names import relaxation_index, unary_index, unary_name
from pottsops.neighborhoods import as_neighborhood
from pottsops.potts import GRID_BACKENDS, inv_two_sigma2, potts_energy, prepare_dense
from pottsops.unary import unary as unary_loss

EPS = 1e-8  # the relaxations' and unaries' epsilon
# Below this floor (eps / e^2) a label changes no energy, and pseudo-logits that keep falling only slow a return.
LOG_FLOOR = math.log(EPS) - 2.0


class GridOpArgs(NamedTuple):
    """The grid arguments of the compiled ops (grid_solver_gradient, adaptive_solve), in their order."""
    image: Optional[torch.Tensor]
    weights: Optional[torch.Tensor]
    mask: Optional[torch.Tensor]
    inv_two_sigma2: Optional[torch.Tensor]
    offsets: list
    spatial: list
    relaxation: int
    eps: float


class Problem:
    """The energy of one solve() call: per-image values (B,) and gradients with respect to y, from the public
    ops through autograd (any backend and neighbourhood)."""

    def __init__(self, logits, image, seeds, seeded, one_hot, unlabeled, relaxation, unary, neighborhood, eta, lam,
                 sigma_rgb, sigma_xy, mask, weights, dense_method, backend):
        self.logits, self.image, self.seeded, self.one_hot = logits, image, seeded, one_hot
        self.seed_ids = torch.where(seeded, seeds, 0).long().contiguous()
        self.unlabeled, self.mask, self.weights = unlabeled, mask, weights
        self.unary, self.eta, self.lam, self.backend = unary, eta, lam, backend
        self.potts = dict(relaxation=relaxation, neighborhood=neighborhood, sigma_rgb=sigma_rgb, sigma_xy=sigma_xy,
                          weights=weights, mask=mask, reduction="none", backend=backend)
        if as_neighborhood(neighborhood).dense:  # the lattice built once, for every step
            self.potts_energy = prepare_dense(logits, image, relaxation, sigma_rgb, sigma_xy, weights, mask, EPS,
                                              backend, dense_method, "fp32", filled=True)  # by solve()
        else:
            self.potts_energy = functools.partial(potts_energy, image=image, **self.potts)
        # the step rule in the compiled op where the backend is a compiled one (cpu, cuda), for any
        # neighbourhood; in PyTorch (reference.adaptive_step, the same rule) elsewhere
        self.compiled_step = _backend.resolve(backend, logits.device, GRID_BACKENDS, "solve") in ("cpu", "cuda")

    def clamp(self, y):
        """y with the scribbled pixels set to their one-hot labels."""
        return torch.where(self.seeded[:, None], self.one_hot, y)

    def clamp_theta(self, theta):
        """Pseudo-logits with the scribbled pixels' set to their labels' (0 and LOG_FLOOR), as the step expects."""
        return torch.where(self.seeded[:, None], (1 - self.one_hot) * LOG_FLOOR, theta).contiguous()

    def unary_energy(self, y):
        """Per-image eta times the unary summed over the unlabeled pixels (B,)."""
        unary = unary_loss(self.logits, y, self.unary, mask=self.unlabeled, reduction="none", backend=self.backend)
        return self.eta * unary.sum((1, 2))

    def energy(self, y):
        """Per-image energy (B,) of the clamped labels y."""
        return self.unary_energy(y) + self.lam * self.potts_energy(y)

    def gradient(self, y):
        """(energy (B,), its gradient with respect to y, zero on the seeds): the dense bl and q Potts terms in
        closed form (dense.DenseEnergy.energy_and_gradient), the rest through autograd."""
        closed = getattr(self.potts_energy, "energy_and_gradient", None)
        potts = closed(y.detach()) if closed else None
        y = y.detach().requires_grad_()
        with torch.enable_grad():
            energy = self.energy(y) if potts is None else self.unary_energy(y)
            (grad,) = torch.autograd.grad(energy.sum(), y)
        if potts is not None:
            energy, grad = energy.detach() + self.lam * potts[0], grad + self.lam * potts[1]
        return energy.detach(), torch.where(self.seeded[:, None], 0, grad).contiguous()

    def step(self, theta, m, v, y, grad, steps, scale, rule):
        step = torch.ops.pottsops.adaptive_step if self.compiled_step else reference.adaptive_step
        step(theta, m, v, y, grad, steps, scale, self.seed_ids, self.seeded, rule)

    def lower_bound(self):
        """Per image, eta times the sum over the unlabeled pixels of min_y H(y, sigma): the energy's constant
        part, against which the stopping rule measures progress."""
        log_sigma = torch.log_softmax(self.logits, 1)
        if self.unary == "rce":
            sigma = log_sigma.exp()
            least = -(sigma * torch.log(sigma + EPS)).sum(1)  # at y = sigma
        else:  # at the one-hot label of sigma's largest class
            top = log_sigma.amax(1)
            least = -torch.log(top.exp() + EPS) if self.unary == "cce" else -top
        return self.eta * (least * self.unlabeled).sum((1, 2))


class FusedProblem(Problem):
    """The same energy through the compiled ops: one pass for the energy and its gradient
    (grid_solver_gradient: the grid Potts backward kernel with the unary folded in), one for the step."""

    def __init__(self, *args, grid_args):
        super().__init__(*args)
        # the one tensor the unary reads: log sigma for ce, sigma for cce and rce
        log_sigma = torch.log_softmax(self.logits, 1).contiguous()
        self.operand = log_sigma if self.unary == "ce" else log_sigma.exp()
        self.grid_args, self.unary_index = grid_args, unary_index(self.unary, "unary")

    def gradient(self, y):
        return torch.ops.pottsops.grid_solver_gradient(y, *self.grid_args, self.operand, self.unlabeled, self.seeded,
                                                       self.unary_index, self.eta, self.lam, EPS)


def grid_op_args(logits, image, neighborhood, relaxation, sigma_rgb, sigma_xy, mask, weights, backend):
    """grid_solver_gradient's grid arguments when the compiled ops can run the step (grid or window
    neighbourhood, the cpu or cuda backend), else None."""
    neighborhood = as_neighborhood(neighborhood)
    if neighborhood.dense or _backend.resolve(backend, logits.device, GRID_BACKENDS, "solve") not in ("cpu", "cuda"):
        return None
    offsets, spatial = neighborhood.flat_offsets(), neighborhood.spatial(sigma_xy)
    if weights is not None:
        _checks.check_like("weights", weights, (logits.shape[0], neighborhood.num_offsets, *logits.shape[2:]),
                           f"one channel per offset of {neighborhood}")
    elif image is not None:  # the edge weights once per solve, not at every step
        inv = inv_two_sigma2(image, sigma_rgb, mask, filled=True)  # by solve()
        weights = torch.ops.pottsops.grid_affinity(image, mask, inv, offsets, spatial)
    weights = None if weights is None else weights.detach().to(logits.dtype).contiguous()
    return GridOpArgs(None, weights, mask, None, offsets, spatial, relaxation_index(relaxation), EPS)


def make_problem(logits, image, seeds, relaxation, unary, neighborhood, eta, lam, sigma_rgb, sigma_xy, mask, weights,
                  ignore_index, dense_method, backend):
    """The FusedProblem where the compiled ops can run the step, else the Problem."""
    dtype = reference.accumulation_dtype(logits.dtype)
    logits = logits.detach().to(dtype).contiguous()
    image = None if image is None else image.detach()
    seeded = (seeds != ignore_index).contiguous()
    if mask is not None:
        seeded = seeded & mask
    one_hot = F.one_hot(torch.where(seeded, seeds, 0).long(), logits.shape[1]).permute(0, 3, 1, 2).to(dtype)
    unlabeled = (~seeded if mask is None else mask & ~seeded).contiguous()
    args = (logits, image, seeds, seeded, one_hot, unlabeled, relaxation, unary_name(unary, "unary"), neighborhood, eta,
            lam, sigma_rgb, sigma_xy, mask, weights, dense_method, backend)
    grid_args = grid_op_args(logits, image, neighborhood, relaxation, sigma_rgb, sigma_xy, mask, weights, backend)
    return FusedProblem(*args, grid_args=grid_args) if grid_args else Problem(*args)
