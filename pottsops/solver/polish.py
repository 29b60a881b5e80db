"""The polish of the bilinear relaxation with the cce or ce unary: block coordinate descent over colour classes
of pixels (no two of a class neighbours), each pixel moved to the minimiser of its energy with its neighbours
fixed.  It searches from the best one-hot label of each pixel (and, for cce, the edges from it to the other
labels): a local method, not an exact solve of the discrete problem.
"""
import math

import torch
import torch.nn.functional as F

from pottsops.neighborhoods import as_neighborhood
from pottsops.solver.problem import EPS

MAX_SWEEPS = 20  # of the polish, which usually settles in 3 to 10


def colours(neighborhood, H, W):
    """Pixel classes of which no two pixels are neighbours, each a list of strided slices (row start, column
    start) with the steps returned.  With g the offsets' common factor (a window's dilation), pixels are
    grouped in g x g blocks and the blocks coloured: a checkerboard where every offset / g has an odd
    |dy| + |dx| (nn4), else the blocks' positions modulo (max |dy| / g + 1, max |dx| / g + 1).  Offsets that
    reach past the image hold no pair and are left out.  Returns (classes, (row step, column step))."""
    offsets = [(dy, dx) for dy, dx in as_neighborhood(neighborhood).offsets if abs(dy) < H and abs(dx) < W]
    if not offsets:
        return [[(0, 0)]], (1, 1)
    g = math.gcd(*(abs(v) for offset in offsets for v in offset))
    if all((dy + dx) // g % 2 for dy, dx in offsets):
        blocks, (high, wide) = [[(0, 0), (1, 1)], [(0, 1), (1, 0)]], (2, 2)
    else:
        high, wide = max(abs(dy) for dy, _ in offsets) // g + 1, max(abs(dx) for _, dx in offsets) // g + 1
        blocks = [[(row, col)] for row in range(high) for col in range(wide)]
    starts = lambda row, col: [(row * g + t, col * g + u) for t in range(g) if row * g + t < H  # noqa: E731
                               for u in range(g) if col * g + u < W]
    classes = [[start for row, col in colour for start in starts(row, col)] for colour in blocks]
    return [c for c in classes if c], (high * g, wide * g)


def pixel_minima(pairs, sigma, eta):
    """Per pixel, a minimiser over the simplex of f(y) = pairs.y - eta log(s.y), s = sigma + EPS (the cce
    unary, -log(sigma.y + EPS) on the simplex; eta = 0 for ce, whose part is inside pairs): f is convex and
    the minimiser of a linear term plus a function of s.y has at most two labels, so it is searched on the
    edges from the best one-hot label k to every other label l, where f(t) = f((1 - t) e_k + t e_l) is
    least at f'(t) = 0 or an end.  Returns (f at the minimiser, the minimiser)."""
    s = sigma + EPS
    vertex = pairs - eta * torch.log(s)
    k = vertex.argmin(1, keepdim=True)
    pairs_k, s_k = pairs.gather(1, k), s.gather(1, k)
    dc, ds = pairs - pairs_k, s - s_k
    stationary = eta / torch.where(dc == 0, 1, dc) - s_k / torch.where(ds == 0, 1, ds)
    t = torch.where((dc == 0) | (ds == 0), 0.0, stationary).clamp(0, 1)
    value, l = (pairs_k + t * dc - eta * torch.log(s_k + t * ds)).min(1, keepdim=True)
    t = t.gather(1, l)
    K = pairs.shape[1]
    one_hot = lambda i: F.one_hot(i[:, 0], K).permute(0, 3, 1, 2).to(pairs.dtype)  # noqa: E731
    return value[:, 0], (1 - t) * one_hot(k) + t * one_hot(l)


def polish(problem, y, best, lower, tol):
    """Block coordinate descent on the bilinear relaxation with the cce or ce unary.  With its neighbours
    fixed, a pixel's energy is pairs.y_i (bilinear pairs: linear) plus its unary, which pixel_minima
    minimises at once over every unlabeled pixel of one colour (no two of them neighbours), the colours in
    turn; a pixel moves only where that does not raise its energy, so the energy never rises.  An image
    stops after a sweep that lowered its energy by at most tol times its excess over lower (the solver's
    rule), or after MAX_SWEEPS.  The minima are one-hot labels (ce) or mixtures of two (cce), and lower
    than where the smooth steps stop (docs/solver.md has the measurements).
    Returns (y, its energy, sweeps per image; 0 where rounding kept the soft y)."""
    B, K, H, W = y.shape
    soft, sigma = y, torch.softmax(problem.logits, 1)
    eta = problem.eta if problem.unary == "cce" else 0.0
    running = torch.ones(B, dtype=torch.bool, device=y.device)
    sweeps = torch.zeros(B, dtype=torch.long, device=y.device)
    classes, (high, wide) = colours(problem.potts["neighborhood"], H, W)
    energy, y = problem.gradient(y)[0], y.clone()
    for _ in range(MAX_SWEEPS):
        before = energy
        for colour in classes:
            grad = problem.gradient(y)[1]  # the gradient in y_i: exact for the pairs and for ce
            for row, col in colour:
                part = (slice(None), slice(None), slice(row, None, high), slice(col, None, wide))
                y_part, sigma_part = y[part], sigma[part]
                at_y = (sigma_part * y_part).sum(1, keepdim=True) + EPS
                pairs = grad[part] + eta * sigma_part / at_y  # the cce unary's gradient taken out (eta 0: ce)
                value, minimiser = pixel_minima(pairs, sigma_part, eta)
                current = (pairs * y_part).sum(1) - eta * torch.log(at_y[:, 0])
                move = problem.unlabeled[part[0], part[2], part[3]] & (value <= current)  # ties snap to it
                y[part] = torch.where((move & running.view(-1, 1, 1))[:, None], minimiser, y_part)
        energy = problem.gradient(y)[0]
        sweeps += running.long()
        running &= before - energy > tol * (energy - lower).clamp(min=0)
        if not bool(running.any()):
            break
    kept = energy <= best  # always, but for rounding
    return torch.where(kept.view(-1, 1, 1, 1), y, soft), torch.where(kept, energy, best), torch.where(kept, sweeps, 0)
