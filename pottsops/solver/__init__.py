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
import warnings
from dataclasses import dataclass, field

import torch

from pottsops import _checks, graphcut
from pottsops.names import relaxation_name, unary_name
from pottsops.neighborhoods import as_neighborhood
from pottsops.solver.levels import (COARSE_TOL, LEVEL_FACTORS, coarse_inputs, level_factors, solve_coarse_levels,
                                    wants_coarse)
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
    time; best: the energy of the returned y; certificate: (B,) where the problem is convex (the quadratic
    relaxation, with any unary), an upper bound on best - (the minimum energy): the Frank-Wolfe duality gap
    sum_i (<g_i, y_i> - min_k g_ik) over the unlabeled pixels, g the energy's gradient at y; else None;
    method: the method that ran ('mirror_descent' or 'alpha_expansion'); note: what a user should know of
    how it ran (α-expansion ignores iters, lr and levels; mirror descent ran where α-expansion's integer costs
    could not resolve the problem), else None."""
    energies: list = field(default_factory=list)
    iterations: torch.Tensor = None
    sweeps: torch.Tensor = None
    lower: torch.Tensor = None
    levels: list = field(default_factory=list)
    coarse: torch.Tensor = None
    seconds: float = 0.0
    best: torch.Tensor = None
    certificate: torch.Tensor = None
    method: str = None
    note: str = None


METHODS = ("auto", "mirror_descent", "alpha_expansion")
_WARNED = set()


def _bilinear_on_grid(problem):
    """The bilinear relaxation with the ce or cce unary on a grid or window: what α-expansion can solve and
    the polish can improve (their minimisers are one-hot labels, or mixtures of two for cce)."""
    return (relaxation_name(problem.potts["relaxation"]) == "bilinear" and problem.unary in ("ce", "cce")
            and not as_neighborhood(problem.potts["neighborhood"]).dense)


def _method(method, problem, neighborhood):
    """The method solve() runs: auto picks α-expansion for the bilinear relaxation with the ce or cce unary on
    a grid or window where the graph-cut extra is installed (with ce its minimum over the simplex is the
    discrete Potts problem, and with cce the polished α-expansion labels end far below where the local method
    does: docs/solver.md), else mirror descent."""
    _checks.check_choice("method", method, METHODS)
    discrete = _bilinear_on_grid(problem)
    if method == "alpha_expansion":
        if not discrete:
            raise ValueError("method: 'alpha_expansion' solves the bilinear relaxation with the ce or cce unary on a "
                             f"grid or window neighbourhood, not {problem.potts['relaxation']!r} with "
                             f"{problem.unary!r} on {neighborhood!r}")
        return method
    if method == "auto" and discrete:
        if graphcut.available() is None:
            return "alpha_expansion"
        if "graphcut" not in _WARNED:
            _WARNED.add("graphcut")
            warnings.warn("pottsops.solve: the bilinear relaxation is solved by a local method, whose energy ends "
                          "far above α-expansion's (docs/solver.md); install the graph-cut "
                          f"extra for α-expansion: {graphcut.EXTRA}", RuntimeWarning, stacklevel=3)
    return "mirror_descent"


def duality_gap(problem, y):
    """Per image, sum over the unlabeled pixels of <g_i, y_i> - min_k g_ik, g the gradient of the energy at y:
    for a convex energy over the product of simplices (seeds fixed), E(y) - min E is at most this
    (E(y*) >= E(y) + <g, y* - y> >= E(y) - gap)."""
    grad = problem.gradient(y)[1].double()
    per_pixel = (grad * y.double()).sum(1) - grad.amin(1)
    return (per_pixel * problem.unlabeled).sum((1, 2)).to(y.dtype)


def _graph_cut(problem, y0, seeds, init, tol, options):
    """α-expansion labels (pottsops.graphcut), polished where the unary is cce (whose minimiser may mix two
    labels at a pixel).  Returns (y, its energy, SolveInfo)."""
    B = y0.shape[0]
    level_start = time.perf_counter()
    labels = graphcut.labels(graphcut._gco(), problem.logits, problem.image, seeds, init=init, **options)
    y = problem.clamp(labels.to(y0.dtype)).contiguous()
    best = problem.gradient(y)[0]
    zeros = torch.zeros(B, dtype=torch.long, device=y0.device)
    info = SolveInfo(coarse=torch.zeros(B, dtype=torch.bool, device=y0.device), iterations=zeros, sweeps=zeros,
                     lower=problem.lower_bound(), energies=[best])
    if problem.unary == "cce":
        y, best, info.sweeps = polish_bilinear(problem, y, best, info.lower, tol)
        info.energies.append(best)
    info.levels.append((1, zeros, time.perf_counter() - level_start))
    return y, best, info


def _mirror_descent(problem, y0, init, levels, iters, tol, rule, coarse_problem):
    """Coarse levels (coarse_problem(f): the problem pooled f x f), the adaptive loop at full resolution and,
    for bl with cce or ce, the polish.  Returns (y, its energy, SolveInfo)."""
    B = y0.shape[0]
    info = SolveInfo(coarse=wants_coarse(problem) if levels is None else torch.full(
        (B,), levels > 0, device=y0.device))
    factors = level_factors(y0.shape, len(LEVEL_FACTORS) if levels is None else levels)
    theta = torch.log(y0.clamp(min=math.exp(LOG_FLOOR)))
    if init is None and bool(info.coarse.any()) and factors:
        coarse_theta, info.levels = solve_coarse_levels(coarse_problem, factors, y0.shape[2:], iters,
                                                        tol * COARSE_TOL, rule)
        theta = torch.where(info.coarse.view(-1, 1, 1, 1), coarse_theta, theta)
    info.coarse &= bool(info.levels)  # not where a given init or the image's size leaves no coarse level
    trace, level_start = [], time.perf_counter()
    y, best, info.iterations, info.lower = solve_level(problem, theta, iters, tol, rule, trace)
    info.sweeps = torch.zeros_like(info.iterations)
    if _bilinear_on_grid(problem):
        y, best, info.sweeps = polish_bilinear(problem, y, best, info.lower, tol)
        trace.append(best)
    info.levels.append((1, info.iterations, time.perf_counter() - level_start))
    info.energies.extend(trace[1:])
    return y, best, info


def solve(logits, image, seeds, *, relaxation="cd", unary="cce", neighborhood="nn4", eta=0.3, lam=6.0,
          sigma_rgb=9.0, sigma_xy=None, mask=None, weights=None, init=None, iters=300, tol=1e-3, lr=0.1,
          levels=None, method="auto", ignore_index=255, dense_method="lattice", backend="auto", return_info=False,
          step=None):
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
    lr: the learning rate of the per-coordinate steps (about the largest change of a pseudo-logit per step;
        step= is its old name, deprecated).
    levels: how many coarse levels (pooled 2x, 4x, 8x; up to 3) are solved first, each starting the next;
        None (default): 3 for the images where softmax(logits) says little (mean confidence below 0.05, e.g.
        zero logits: the scribbles alone) and for bl and cce, else 0 (info.coarse says which).
    method: 'mirror_descent' (the adaptive steps above), 'alpha_expansion' (graph cuts on the discrete
        problem, for the bilinear relaxation with the ce or cce unary on a grid or window; needs the extra
        pottsops[graphcut]; with cce the labels are then polished) or 'auto' (default): alpha_expansion for
        bilinear with ce or cce where the extra is installed (with a warning where it is not), else
        mirror_descent.
        alpha_expansion ignores iters, lr and levels (GCO runs expansion cycles until none lowers the energy;
        info.iterations is 0).  Where GCO's integer costs cannot resolve the unary (the pair weights exceed
        it by about 1e4 or more: pottsops.graphcut), auto and alpha_expansion run mirror descent instead and
        info.note says so.
    The mirror descent of the bilinear relaxation with the cce or ce unary ends with a polish: block
    coordinate descent, each pixel of a colour moved to the minimiser of its energy with its neighbours
    fixed (one-hot labels for ce, mixtures of at most two for cce).
    return_info: also return a SolveInfo (energy per step, steps, timings).

    >>> y = pottsops.solve(logits, image, seeds, relaxation="cd", neighborhood="nn4", eta=0.3, lam=6.0)
    """
    start = time.perf_counter()
    # a masked-out pixel's colour is never read (as in potts_energy): checked where mask is True, then filled
    _checks.check_pseudo_label_inputs(logits, image, seeds, mask, ignore_index, weights, image_where=mask)
    if image is not None:
        image = _checks.fill_masked(image.detach(), mask)
    relaxation_name(relaxation)
    unary_name(unary, "unary")
    for name, value in (("eta", eta), ("lam", lam), ("tol", tol)):
        _checks.check_number(name, value)
    if step is not None:
        warnings.warn("pottsops.solve: step= is now called lr= (it is a learning rate; iters counts the steps); "
                      "step= will be removed", FutureWarning, stacklevel=2)
        lr = step
    _checks.check_positive("lr", lr)
    if sigma_rgb != "auto":
        _checks.check_positive("sigma_rgb", sigma_rgb)
    if sigma_xy is not None:
        _checks.check_positive("sigma_xy", sigma_xy)
    counts = (("iters", iters, math.inf), ("levels", 0 if levels is None else levels, len(LEVEL_FACTORS)))
    for name, value, most in counts:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= most:
            raise ValueError(f"{name}: expected an integer in [0, {most}]{' or None' * (name == 'levels')}, "
                             f"got {value!r}")
    rule = [float(lr), *BETAS, ADAM_EPS, LOG_FLOOR]
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
        tiny = torch.finfo(dtype).tiny  # scaled by the largest first: a sum of huge labels would overflow to Inf
        y0 = y0 / y0.amax(1, keepdim=True).clamp(min=tiny)
        y0 = y0 / y0.sum(1, keepdim=True).clamp(min=tiny)
    else:
        y0 = torch.softmax(problem.logits, 1)
    y0 = problem.clamp(y0).contiguous()
    method = _method(method, problem, neighborhood)
    start_energy = problem.gradient(y0)[0]
    note = None
    if method == "alpha_expansion":
        try:
            y, best, info = _graph_cut(problem, y0, seeds, init, tol, dict(  # checked above: not again
                unary=problem.unary, neighborhood=as_neighborhood(neighborhood), eta=eta, lam=lam,
                sigma_rgb=sigma_rgb, sigma_xy=sigma_xy, mask=mask, weights=weights, ignore_index=ignore_index))
            note = "alpha_expansion ignores iters, lr and levels"
        except graphcut.ResolutionError as error:
            method, note = "mirror_descent", f"mirror descent ran instead of alpha_expansion: {error}"
            if "resolution" not in _WARNED:
                _WARNED.add("resolution")
                warnings.warn(f"pottsops.solve: {note}", RuntimeWarning, stacklevel=2)
    if method == "mirror_descent":
        def coarse_problem(f):
            pooled_logits, pooled_image, pooled_seeds, pooled_mask, pooled_weights = coarse_inputs(
                problem.logits, problem.image, seeds, mask, weights, ignore_index, f)
            return make_problem(pooled_logits, pooled_image, pooled_seeds, eta=eta * f * f, lam=lam * f,
                                mask=pooled_mask, weights=pooled_weights,
                                **dict(settings, sigma_xy=None if sigma_xy is None else sigma_xy / f))
        y, best, info = _mirror_descent(problem, y0, init, levels, iters, tol, rule, coarse_problem)
    info.method, info.note = method, note
    info.energies.insert(0, start_energy)
    info.energies[1:] = [torch.minimum(e, start_energy) for e in info.energies[1:]]
    worse = ~(best <= start_energy)  # the start is kept where the solve did not go below it
    y = problem.clamp(torch.where(worse.view(-1, 1, 1, 1), y0, y))
    info.best = torch.where(worse, start_energy, best)
    if relaxation_name(relaxation) == "quadratic":
        info.certificate = duality_gap(problem, y)
    info.seconds = time.perf_counter() - start
    return (y, info) if return_info else y
