"""Coarse to fine: the problem is first solved on images pooled 8x, 4x and 2x (a coarse pixel stands for f^2
pixels and f pairs across each edge: eta f^2, lam f), and each solution, upsampled, starts the next level,
so that labels cross large regions in few steps (docs/solver.md has the measurements behind the choices).
"""
import math
import time

import torch
import torch.nn.functional as F

from pottsops.names import relaxation_name
from pottsops.solver.loop import solve_level
from pottsops.solver.problem import LOG_FLOOR

LEVEL_FACTORS = (8, 4, 2)  # the pooling of the coarse levels, coarsest first
COARSE_TOL = 0.1  # coarse levels run to tol * COARSE_TOL: their steps are cheap and spare full-resolution ones
UNSURE = 0.05  # below this mean confidence of softmax(logits), levels=None solves coarse levels first
COARSEST = 8  # a level whose image would have a side below this is left out
TRANSFER_FLOOR = -6.0  # an upsampled coarse solution keeps log-ratios down to this


def block_sum(x, f):
    """Sums over f x f blocks of (B, C, H, W), zero-padded at the bottom and right."""
    B, C, H, W = x.shape
    x = F.pad(x, (0, -W % f, 0, -H % f))
    return x.view(B, C, x.shape[2] // f, f, x.shape[3] // f, f).sum((3, 5))


def coarse_inputs(logits, image, seeds, mask, weights, ignore_index, f):
    """The inputs pooled f x f over the pixels that exist: image, weights and softmax(logits) averaged, the
    seeds' most frequent class (where a block holds seeds), the mask where a block holds a pixel."""
    present = torch.ones_like(seeds, dtype=logits.dtype) if mask is None else mask.to(logits.dtype)
    present = present[:, None]
    count = block_sum(present, f)
    mean = lambda x: block_sum(x * present, f) / count.clamp(min=1)  # noqa: E731
    sigma = mean(torch.softmax(logits, 1))
    K = logits.shape[1]
    seeded = (seeds != ignore_index) & (present[:, 0] > 0)
    votes = block_sum(F.one_hot(torch.where(seeded, seeds, 0).long(), K).permute(0, 3, 1, 2).to(logits.dtype)
                       * seeded[:, None], f)
    most = votes.max(1)  # not amax and argmax: torch's CPU argmax over dim 1 is slow (pottsops.graphcut)
    coarse_seeds = torch.where(most.values > 0, most.indices, ignore_index)
    return (torch.log(sigma.clamp(min=torch.finfo(sigma.dtype).tiny)),
            None if image is None else mean(image.to(logits.dtype)), coarse_seeds,
            None if mask is None else count[:, 0] > 0, None if weights is None else mean(weights))


def upsample(theta, f, H, W):
    """Coarse pseudo-logits as the start of the level f times finer: interpolated bilinearly between the
    blocks' centres (a smoother start than repeating each block's; docs/solver.md has the comparison),
    normalised (largest 0) and floored at TRANSFER_FLOOR, so that no label is ruled out at the start."""
    Hc, Wc = theta.shape[2:]
    theta = F.interpolate(theta, size=(Hc * f, Wc * f), mode="bilinear", align_corners=False)[:, :, :H, :W]
    return (theta - theta.amax(1, keepdim=True)).clamp(min=TRANSFER_FLOOR)


def level_factors(shape, levels):
    """The pooling factors of the coarse levels to solve first, coarsest first."""
    H, W = shape[2:]
    factors = LEVEL_FACTORS[len(LEVEL_FACTORS) - levels:] if levels else ()
    return [f for f in factors if min(H, W) // f >= COARSEST]


def wants_coarse(problem):
    """Per image, whether coarse levels pay off (levels=None): where softmax(logits) says little (its mean
    confidence (max_k sigma_k - 1/K) / (1 - 1/K) over the unlabeled pixels below UNSURE), so that labels
    must travel far from the scribbles; and always for the relaxations with many local minima at hard
    labellings (bl, cce), which the coarse solution steers past (docs/solver.md has the measurements)."""
    B, K = problem.logits.shape[:2]
    if relaxation_name(problem.potts["relaxation"]) in ("bilinear", "collision_ce"):
        return torch.ones(B, dtype=torch.bool, device=problem.logits.device)
    confidence = (torch.softmax(problem.logits, 1).amax(1) - 1 / K) / (1 - 1 / K)
    count = problem.unlabeled.sum((1, 2)).clamp(min=1)
    return (confidence * problem.unlabeled).sum((1, 2)) / count < UNSURE


def solve_coarse_levels(coarse_problem, factors, size, iters, tol, rule):
    """Solves the levels pooled by factors (coarsest first), each started from the last one's solution
    upsampled (the coarsest from its own softmax(logits)); coarse_problem(f) makes level f's problem.
    Returns (the last level's pseudo-logits upsampled to size (H, W), [(f, steps per image, seconds)])."""
    levels, theta, previous = [], None, None
    for f in factors:
        problem = coarse_problem(f)
        start = time.perf_counter()
        theta = (torch.log_softmax(problem.logits, 1) if previous is None
                 else upsample(theta, previous // f, *problem.logits.shape[2:]))
        y, _, steps, _ = solve_level(problem, theta, iters, tol, rule, [])
        theta, previous = torch.log(y.clamp(min=math.exp(LOG_FLOOR))), f
        levels.append((f, steps, time.perf_counter() - start))
    return upsample(theta, previous, *size), levels
