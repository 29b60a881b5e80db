"""The soft pseudo-label solver of soft self-labeling (docs/contract.md, the solver; docs/solver.md, the method
and its measurements).

Given network logits z, an image and scribbles S, find soft labels y minimising, per image,

    E(y) = eta sum_{i not in S, mask} H(y_i, sigma_i)  +  lam sum_{{i,j} in N} w_ij P(y_i, y_j)

with y_i fixed to the one-hot scribble on S.  The method:

- adaptive mirror descent (loop.py): pseudo-logits move with Adam's per-coordinate steps, so that every
  pixel moves at its own pace;
- coarse to fine (levels.py): the problem is solved on pooled images first, each solution starting the next;
- progress checks: every WINDOW steps (from the second window on), where an image's lowest energy fell by
  at most tol times its excess over the unary's lower bound in those steps, its learning rate halves, or,
  once halved MAX_HALVINGS times, the image stops;
- the bilinear relaxation with cce or ce ends with a polish (polish.py);
- the lowest-energy labels are kept, and never above the energy of the start (softmax(logits) or init).

Each image is solved on its own (its own steps and stopping), so a result never depends on the batch.
The energy and its gradient: problem.py.
"""
import math
import time
from dataclasses import dataclass, field

import torch

from pottsops import _checks
from pottsops.names import relaxation_name, unary_name
from pottsops.neighborhoods import as_neighborhood
from pottsops.solver.levels import COARSE_TOL, LEVEL_FACTORS, coarse_inputs, level_factors, upsample, wants_coarse
from pottsops.solver.loop import ADAM_EPS, BETAS, solve_level
from pottsops.solver.polish import polish as polish_bilinear  # the name polish stays the module
from pottsops.solver.problem import LOG_FLOOR, make_problem

__all__ = ["solve", "SolveInfo"]


@dataclass
class SolveInfo:
    """What solve(..., return_info=True) reports.  energies[t]: per-image energy (B,) of the best labels
    after t steps at full resolution (t = 0: the start, softmax(logits) or init); iterations: the steps each
    image ran there; lower: the unary's lower bound that the stopping rule measures progress against;
    levels: (factor, steps per image, seconds) of each level solved, the coarse ones first and the full
    resolution (factor 1, its polish included) last; coarse: (B,) whether an image's full-resolution solve
    started from the coarse solution; sweeps: (B,) the polish's sweeps that moved a pixel (bilinear with
    cce or ce on a grid or window; its energy is the last entry of energies), else zeros; seconds: wall
    time; best: the energy of the returned y."""
    energies: list = field(default_factory=list)
    iterations: torch.Tensor = None
    sweeps: torch.Tensor = None
    lower: torch.Tensor = None
    levels: list = field(default_factory=list)
    coarse: torch.Tensor = None
    seconds: float = 0.0
    best: torch.Tensor = None


def solve(logits, image, seeds, *, relaxation="cd", unary="cce", neighborhood="nn4", eta=0.3, lam=6.0,
          sigma_rgb=9.0, sigma_xy=None, mask=None, weights=None, init=None, iters=300, tol=1e-3, step=0.1,
          levels=None, ignore_index=255, dense_method="lattice", backend="auto", return_info=False):
    """Soft pseudo-labels y (B, K, H, W) minimising eta H(y, softmax(logits)) + lam Potts(y), scribbles fixed.

    logits: (B, K, H, W) network outputs (no gradient flows back).
    image: (B, C, H, W) for the affinities (RGB in 0..255 for the default sigma_rgb), or None with
        weights, or None for constant weights.
    seeds: (B, H, W) integer class ids on scribbled pixels, ignore_index elsewhere.
    relaxation, unary, neighborhood, sigma_rgb, sigma_xy, weights, mask: as in potts_energy / unary;
        dense_method: 'lattice' or 'exact' for neighborhood='dense'.
    init: (B, K, H, W) starting labels (default softmax(logits)); the returned energy never exceeds its.
        A given init is the start of the full-resolution solve (no coarse levels).
    iters, tol: at most iters steps per level; every 20 steps (from step 40 on), where an image's lowest
        energy fell by at most tol times its excess over the unary's lower bound (info.lower) in those steps,
        its learning rate halves, or, after 3 halvings, it stops (coarse levels: tol / 10).
    step: the learning rate of the per-coordinate steps (about the largest change of a pseudo-logit per step).
    levels: how many coarse levels (pooled 2x, 4x, 8x; up to 3) are solved first, each starting the next;
        None (default): 3 for the images where softmax(logits) says little (mean confidence below 0.05, e.g.
        zero logits: the scribbles alone) and for bl and cce, else 0 (info.coarse says which).
    The bilinear relaxation with the cce or ce unary on a grid or window ends with a polish: block
    coordinate descent, each pixel of a colour moved to the minimiser of its energy with its neighbours
    fixed (one-hot labels for ce, mixtures of at most two for cce).
    return_info: also return a SolveInfo (energy per step, steps, timings).

    >>> y = pottsops.solve(logits, image, seeds, relaxation="cd", neighborhood="nn4", eta=0.3, lam=6.0)
    """
    start = time.perf_counter()
    _checks.check_labels("logits", logits)
    _checks.check_seeds(seeds, "logits", logits, ignore_index)
    _checks.check_mask(mask, "logits", logits)
    _checks.check_finite("logits", logits)
    if image is not None:
        _checks.check_image("image", image, "logits", logits)
        _checks.check_finite("image", image)
    relaxation_name(relaxation)
    unary_name(unary, "unary")
    for name, value in (("eta", eta), ("lam", lam), ("tol", tol)):
        _checks.check_number(name, value)
    _checks.check_positive("step", step)
    if sigma_rgb != "auto":
        _checks.check_positive("sigma_rgb", sigma_rgb)
    if sigma_xy is not None:
        _checks.check_positive("sigma_xy", sigma_xy)
    if weights is not None:
        _checks.check_float("weights", weights)
        _checks.check_device("weights", weights, "logits", logits)
        _checks.check_finite("weights", weights)
        if bool((weights < 0).any()):
            raise ValueError("weights: expected non-negative edge weights, got a negative value")
    counts = (("iters", iters, math.inf), ("levels", 0 if levels is None else levels, len(LEVEL_FACTORS)))
    for name, value, most in counts:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= most:
            raise ValueError(f"{name}: expected an integer in [0, {most}]{' or None' * (name == 'levels')}, "
                             f"got {value!r}")
    rule = [float(step), *BETAS, ADAM_EPS, LOG_FLOOR]
    settings = dict(relaxation=relaxation, unary=unary, neighborhood=neighborhood, sigma_rgb=sigma_rgb,
                    sigma_xy=sigma_xy, ignore_index=ignore_index, dense_method=dense_method, backend=backend)
    problem = make_problem(logits, image, seeds, eta=eta, lam=lam, mask=mask, weights=weights, **settings)
    dtype = problem.logits.dtype
    if init is not None:
        _checks.check_like("init", init, logits.shape, "the shape of logits")
        _checks.check_device("init", init, "logits", logits)
        _checks.check_finite("init", init)
        y0 = init.detach().to(dtype)
        sums = y0.sum(1)
        if bool((y0 < 0).any()) or bool((sums[problem.unlabeled] <= 0).any()):
            raise ValueError("init: expected labels >= 0 with a positive sum over dim 1 at every unlabeled pixel")
        y0 = y0 / sums.unsqueeze(1).clamp(min=torch.finfo(dtype).tiny)
    else:
        y0 = torch.softmax(problem.logits, 1)
    y0 = problem.clamp(y0).contiguous()
    info = SolveInfo(coarse=wants_coarse(problem) if levels is None else torch.full(
        (logits.shape[0],), levels > 0, device=logits.device))
    factors = level_factors(logits.shape, len(LEVEL_FACTORS) if levels is None else levels)
    theta = own = torch.log(y0.clamp(min=math.exp(LOG_FLOOR)))
    for f in factors if init is None and info.coarse.any() else ():
        coarse_logits, coarse_image, coarse_seeds, coarse_mask, coarse_weights = coarse_inputs(
            problem.logits, problem.image, seeds, mask, weights, ignore_index, f)
        coarse = make_problem(coarse_logits, coarse_image, coarse_seeds, eta=eta * f * f, lam=lam * f,
                               mask=coarse_mask, weights=coarse_weights,
                               **dict(settings, sigma_xy=None if sigma_xy is None else sigma_xy / f))
        level_start = time.perf_counter()
        theta = torch.log_softmax(coarse.logits, 1) if f == factors[0] else upsample(theta, previous // f,
                                                                                     *coarse.logits.shape[2:])
        y, _, steps, _ = solve_level(coarse, theta, iters, tol * COARSE_TOL, rule, [])
        theta, previous = torch.log(y.clamp(min=math.exp(LOG_FLOOR))), f
        info.levels.append((f, steps, time.perf_counter() - level_start))
    info.coarse &= bool(info.levels)  # not where a given init or the image's size leaves no coarse level
    if info.levels:
        theta = torch.where(info.coarse.view(-1, 1, 1, 1), upsample(theta, previous, *logits.shape[2:]), own)
    start_energy = problem.gradient(y0)[0]
    info.energies.append(start_energy)
    trace, level_start = [], time.perf_counter()
    y, best, info.iterations, info.lower = solve_level(problem, theta, iters, tol, rule, trace)
    info.sweeps = torch.zeros_like(info.iterations)
    if (relaxation_name(relaxation) == "bilinear" and problem.unary in ("cce", "ce")
            and not as_neighborhood(neighborhood).dense):
        y, best, info.sweeps = polish_bilinear(problem, y, best, info.lower, tol)
        trace.append(best)
    info.levels.append((1, info.iterations, time.perf_counter() - level_start))
    info.energies.extend(torch.minimum(e, start_energy) for e in trace[1:])
    worse = ~(best <= start_energy)  # the start is kept where the solve did not go below it
    y = problem.clamp(torch.where(worse.view(-1, 1, 1, 1), y0, y))
    info.best = torch.where(worse, start_energy, best)
    info.seconds = time.perf_counter() - start
    return (y, info) if return_info else y
