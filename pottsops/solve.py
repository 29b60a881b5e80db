"""The soft pseudo-label solver of soft self-labeling (SPEC section 6).

Given network logits z, an image and scribbles S, find soft labels y minimising, per image,

    E(y) = eta sum_{i not in S, mask} H(y_i, sigma_i)  +  lam sum_{{i,j} in N} w_ij P(y_i, y_j)

with y_i fixed to the one-hot scribble on S.  The method (docs/solver.md has the measurements behind it):

- adaptive mirror descent: pseudo-logits theta (log y up to a per-pixel constant) move against the centred
  gradient g - <y, g> with Adam's per-coordinate steps, y = softmax(theta) (the rule: csrc/pottsops/
  solver_math.h, reference.adaptive_step).  Per-coordinate steps let every pixel move at its own pace:
  one step size per image, set by the stiffest pixel, left pixels far from the scribbles unmoved;
- coarse to fine: the problem is first solved on images pooled 8x, 4x and 2x (a coarse pixel stands for
  f^2 pixels and f pairs across each edge: eta f^2, lam f), and each solution, upsampled, starts the next
  level, so that labels cross large regions in few steps;
- progress checks: every WINDOW steps (from the second window on), where an image's lowest energy fell by
  at most tol times its excess over the unary's lower bound (the energy less its constants) in those steps,
  its learning rate halves, or, once halved MAX_HALVINGS times, the image stops;
- the lowest-energy labels are kept, and never above the energy of the start (softmax(logits) or init).

Each image is solved on its own (its own steps and stopping), so a result never depends on the batch.
The step runs fused on the cpu and cuda backends for grid and window neighbourhoods (the whole loop in one
op on the CPU; on CUDA a gradient kernel and a step kernel, replayed from CUDA graphs); otherwise the same
rule runs over energies and gradients from the public ops (autograd), on any backend.
"""
import functools
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pottsops import _backend, _checks, reference
from pottsops.names import relaxation_index, relaxation_name, unary_index, unary_name
from pottsops.neighborhoods import as_neighborhood
from pottsops.potts import GRID_BACKENDS, inv_two_sigma2, potts_energy, prepare_dense
from pottsops.unary import unary as unary_loss

EPS = 1e-8  # the relaxations' and unaries' epsilon
# The step rule's constants, in the order the ops take them: lr, beta1, beta2, eps, log_floor.  Below the
# floor (eps / e^2) a label changes no energy, and pseudo-logits that keep falling only slow a return.
BETAS = (0.9, 0.99)
ADAM_EPS = 1e-8
LOG_FLOOR = math.log(EPS) - 2.0
WINDOW = 20  # steps between progress checks (and per CUDA graph)
MAX_HALVINGS = 3  # of an image's learning rate on a window of little progress, before it stops
LEVEL_FACTORS = (8, 4, 2)  # the pooling of the coarse levels, coarsest first
COARSE_TOL = 0.1  # coarse levels run to tol * COARSE_TOL: their steps are cheap and spare full-resolution ones
UNSURE = 0.05  # below this mean confidence of softmax(logits), levels=None solves coarse levels first
COARSEST = 8  # a level whose image would have a side below this is left out
TRANSFER_FLOOR = -6.0  # an upsampled coarse solution keeps log-ratios down to this
MAX_SWEEPS = 20  # of the polish (bilinear relaxation), which usually settles in 3 to 10


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


class _Problem:
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
        if isinstance(neighborhood, str) and neighborhood == "dense":  # the lattice built once, for every step
            self.potts_energy = prepare_dense(logits, image, relaxation, sigma_rgb, sigma_xy, weights, mask, EPS,
                                              backend, dense_method, "fp32")
        else:
            self.potts_energy = functools.partial(potts_energy, image=image, **self.potts)

    def clamp(self, y):
        """y with the scribbled pixels set to their one-hot labels."""
        return torch.where(self.seeded[:, None], self.one_hot, y)

    def clamp_theta(self, theta):
        """Pseudo-logits with the scribbled pixels' set to their labels' (0 and LOG_FLOOR), as the step expects."""
        return torch.where(self.seeded[:, None], (1 - self.one_hot) * LOG_FLOOR, theta).contiguous()

    def energy(self, y):
        """Per-image energy (B,) of the clamped labels y."""
        unary = unary_loss(self.logits, y, self.unary, mask=self.unlabeled, reduction="none", backend=self.backend)
        return self.eta * unary.sum((1, 2)) + self.lam * self.potts_energy(y)

    def gradient(self, y):
        """(energy (B,), its gradient with respect to y, zero on the seeds)."""
        y = y.detach().requires_grad_()
        with torch.enable_grad():
            energy = self.energy(y)
            (grad,) = torch.autograd.grad(energy.sum(), y)
        return energy.detach(), torch.where(self.seeded[:, None], 0, grad).contiguous()

    def step(self, theta, m, v, y, grad, steps, scale, rule):
        reference.adaptive_step(theta, m, v, y, grad, steps, scale, self.seed_ids, self.seeded, rule)

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


class _FusedProblem(_Problem):
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

    def step(self, theta, m, v, y, grad, steps, scale, rule):
        torch.ops.pottsops.adaptive_step(theta, m, v, y, grad, steps, scale, self.seed_ids, self.seeded, rule)


class _Loop:
    """The iterate of every image (theta, moments, y, gradient), its best labels and energy, its step count
    and learning-rate scale (0 once stopped), updated in place so that CUDA graphs can replay the steps."""

    def __init__(self, problem, y, theta, rule, lower, tol):
        B = y.shape[0]
        self.problem, self.rule, self.lower, self.tol = problem, rule, lower, tol
        self.theta, self.y = theta.contiguous().clone(), y.contiguous().clone()
        self.m, self.v = torch.zeros_like(self.y), torch.zeros_like(self.y)
        self.energy, self.grad = problem.gradient(self.y)
        self.best_y, self.best = self.y.clone(), self.energy.clone()
        self.window_start = self.best.clone()
        self.steps = torch.zeros(B, dtype=torch.long, device=y.device)
        self.scale = torch.ones(B, dtype=torch.float64, device=y.device)
        self.trace = torch.empty(WINDOW, B, dtype=y.dtype, device=y.device)

    def advance(self, j):
        """Step j of a window, without host syncs."""
        running = self.scale > 0
        self.steps += running.long()
        self.problem.step(self.theta, self.m, self.v, self.y, self.grad, self.steps, self.scale, self.rule)
        energy, grad = self.problem.gradient(self.y)
        self.grad.copy_(grad)
        better = running & (energy < self.best)  # false for NaN
        torch.where(better.view(-1, 1, 1, 1), self.y, self.best_y, out=self.best_y)
        torch.where(better, energy, self.best, out=self.best)
        self.trace[j].copy_(self.best)

    def check(self):
        """The end of a window, from the second on (adaptive_window_check): where the lowest energy fell by at
        most tol times its excess over lower, the lr scale halves, or after MAX_HALVINGS the image stops."""
        excess = (self.best - self.lower).clamp(min=0)
        flat = (self.window_start - self.best <= self.tol * excess) & (self.steps >= 2 * WINDOW)
        halved = torch.where(self.scale > 0.5 ** MAX_HALVINGS, self.scale * 0.5, 0.0)
        torch.where(flat, halved, self.scale, out=self.scale)
        self.window_start.copy_(self.best)


def _adaptive_loop(problem, y, theta, iters, tol, rule, lower, energies):
    """At most iters steps of the rule from (y, theta); returns (best y, its energy, steps per image) and
    appends the best energy after each step to energies.  On CUDA with the fused problem, windows of WINDOW
    steps and their check are replayed from a CUDA graph (the stopping test, a host sync, between them)."""
    loop = _Loop(problem, y, theta, rule, lower, tol)
    energies.append(loop.best.clone())

    def window(steps):
        for j in range(steps):
            loop.advance(j)
        if steps == WINDOW:
            loop.check()

    done, graph = 0, None
    while done < iters and bool((loop.scale > 0).any()):
        steps = min(WINDOW, iters - done)
        if steps == WINDOW and y.is_cuda and isinstance(problem, _FusedProblem):
            if graph is None:
                graph = _capture(window, loop)
            graph.replay()
        else:
            window(steps)
        energies.extend(loop.trace[:steps].clone().unbind(0))
        done += steps
    return loop.best_y, loop.best, loop.steps


def _capture(window, loop):
    """A CUDA graph of one window of steps; the window runs once eagerly on a side stream first (it warms
    up the ops), so its effect is undone: the loop's state is saved and restored around it."""
    saved = {name: getattr(loop, name).clone() for name in ("theta", "m", "v", "y", "grad", "best_y", "best",
                                                            "window_start", "steps", "scale")}
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        window(WINDOW)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        window(WINDOW)
    for name, value in saved.items():
        getattr(loop, name).copy_(value)
    return graph


def _compiled_loop(problem, y, theta, iters, tol, rule, lower, energies):
    """_adaptive_loop in the CPU op adaptive_solve: the same arithmetic, stopping and trace."""
    y, energy, trace, steps = torch.ops.pottsops.adaptive_solve(
        y.contiguous(), theta.contiguous(), *problem.grid_args, problem.operand, problem.unlabeled, problem.seeded,
        problem.seed_ids, lower, problem.unary_index, problem.eta, problem.lam, EPS, rule, iters, tol, WINDOW)
    energies.extend(trace.unbind(0))
    return y, energy, steps


def _solve_level(problem, theta, iters, tol, rule, energies, compiled=None):
    """One level: the loop from y = softmax(theta) (seeds clamped); compiled=None picks the CPU op where it
    can run.  Returns (best y, its energy, steps per image, the unary's lower bound)."""
    lower = problem.lower_bound()
    theta = problem.clamp_theta(theta)
    y = problem.clamp(torch.softmax(theta, 1)).contiguous()
    if compiled is None:
        compiled = isinstance(problem, _FusedProblem) and y.device.type == "cpu"
    loop = _compiled_loop if compiled else _adaptive_loop
    return loop(problem, y, theta, iters, tol, rule, lower, energies) + (lower,)


def _block_sum(x, f):
    """Sums over f x f blocks of (B, C, H, W), zero-padded at the bottom and right."""
    B, C, H, W = x.shape
    x = F.pad(x, (0, -W % f, 0, -H % f))
    return x.view(B, C, x.shape[2] // f, f, x.shape[3] // f, f).sum((3, 5))


def _coarse(logits, image, seeds, mask, weights, ignore_index, f):
    """The inputs pooled f x f over the pixels that exist: image, weights and softmax(logits) averaged, the
    seeds' most frequent class (where a block holds seeds), the mask where a block holds a pixel."""
    present = torch.ones_like(seeds, dtype=logits.dtype) if mask is None else mask.to(logits.dtype)
    present = present[:, None]
    count = _block_sum(present, f)
    mean = lambda x: _block_sum(x * present, f) / count.clamp(min=1)  # noqa: E731
    sigma = mean(torch.softmax(logits, 1))
    K = logits.shape[1]
    seeded = (seeds != ignore_index) & (present[:, 0] > 0)
    votes = _block_sum(F.one_hot(torch.where(seeded, seeds, 0).long(), K).permute(0, 3, 1, 2).to(logits.dtype)
                       * seeded[:, None], f)
    coarse_seeds = torch.where(votes.amax(1) > 0, votes.argmax(1), ignore_index)
    return (torch.log(sigma.clamp(min=torch.finfo(sigma.dtype).tiny)),
            None if image is None else mean(image.to(logits.dtype)), coarse_seeds,
            None if mask is None else count[:, 0] > 0, None if weights is None else mean(weights))


def _upsample(theta, f, H, W):
    """Coarse pseudo-logits as the start of the level f times finer: interpolated bilinearly between the
    blocks' centres (a smoother start than repeating each block's: measured, the gaps after the default run
    fall by a third to a half on zero starts), normalised (largest 0) and floored at TRANSFER_FLOOR, so that
    no label is ruled out at the start."""
    Hc, Wc = theta.shape[2:]
    theta = F.interpolate(theta, size=(Hc * f, Wc * f), mode="bilinear", align_corners=False)[:, :, :H, :W]
    return (theta - theta.amax(1, keepdim=True)).clamp(min=TRANSFER_FLOOR)


def _fused_args(logits, image, neighborhood, relaxation, sigma_rgb, sigma_xy, mask, weights, backend):
    """grid_solver_gradient's grid arguments when the compiled ops can run the step (grid or window
    neighbourhood, the cpu or cuda backend), else None."""
    if isinstance(neighborhood, str) and neighborhood == "dense":
        return None
    if _backend.resolve(backend, logits.device, GRID_BACKENDS, "solve") not in ("cpu", "cuda"):
        return None
    neighborhood = as_neighborhood(neighborhood)
    offsets, spatial = neighborhood.flat_offsets(), neighborhood.spatial(sigma_xy)
    if weights is not None:
        _checks.check_like("weights", weights, (logits.shape[0], neighborhood.num_offsets, *logits.shape[2:]),
                           f"one channel per offset of {neighborhood}")
    elif image is not None:  # the edge weights once per solve, not at every step (about 10 % of a step)
        inv = inv_two_sigma2(image, sigma_rgb, mask)
        weights = torch.ops.pottsops.grid_affinity(image, mask, inv, offsets, spatial)
    weights = None if weights is None else weights.detach().to(logits.dtype).contiguous()
    return (None, weights, mask, None, offsets, spatial, relaxation_index(relaxation), EPS)


def _make_problem(logits, image, seeds, relaxation, unary, neighborhood, eta, lam, sigma_rgb, sigma_xy, mask, weights,
                  ignore_index, dense_method, backend):
    """The _FusedProblem where the compiled ops can run the step, else the _Problem."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logits = logits.detach().to(dtype).contiguous()
    image = None if image is None else image.detach()
    seeded = (seeds != ignore_index).contiguous()
    if mask is not None:
        seeded = seeded & mask
    one_hot = F.one_hot(torch.where(seeded, seeds, 0).long(), logits.shape[1]).permute(0, 3, 1, 2).to(dtype)
    unlabeled = (~seeded if mask is None else mask & ~seeded).contiguous()
    args = (logits, image, seeds, seeded, one_hot, unlabeled, relaxation, unary_name(unary, "unary"), neighborhood, eta,
            lam, sigma_rgb, sigma_xy, mask, weights, dense_method, backend)
    grid_args = _fused_args(logits, image, neighborhood, relaxation, sigma_rgb, sigma_xy, mask, weights, backend)
    return _FusedProblem(*args, grid_args=grid_args) if grid_args else _Problem(*args)


def _levels(shape, levels):
    """The pooling factors of the coarse levels to solve first, coarsest first."""
    H, W = shape[2:]
    factors = LEVEL_FACTORS[len(LEVEL_FACTORS) - levels:] if levels else ()
    return [f for f in factors if min(H, W) // f >= COARSEST]


def _wants_coarse(problem):
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


def _colours(neighborhood, H, W):
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


def _pixel_minima(pairs, sigma, eta):
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


def _polish(problem, y, best, lower, tol):
    """Block coordinate descent on the bilinear relaxation with the cce or ce unary.  With its neighbours
    fixed, a pixel's energy is pairs.y_i (bilinear pairs: linear) plus its unary, which _pixel_minima
    minimises at once over every unlabeled pixel of one colour (no two of them neighbours), the colours in
    turn; a pixel moves only where that does not raise its energy, so the energy never rises.  An image
    stops after a sweep that lowered its energy by at most tol times its excess over lower (the solver's
    rule), or after MAX_SWEEPS.  The minima are one-hot labels (ce) or mixtures of two (cce), and lower
    than where the smooth steps stop (measured: CamVid median gaps 0.07 -> 0.005; docs/solver.md).
    Returns (y, its energy, sweeps per image; 0 where rounding kept the soft y)."""
    B, K, H, W = y.shape
    soft, sigma = y, torch.softmax(problem.logits, 1)
    eta = problem.eta if problem.unary == "cce" else 0.0
    running = torch.ones(B, dtype=torch.bool, device=y.device)
    sweeps = torch.zeros(B, dtype=torch.long, device=y.device)
    colours, (high, wide) = _colours(problem.potts["neighborhood"], H, W)
    energy, y = problem.gradient(y)[0], y.clone()
    for _ in range(MAX_SWEEPS):
        before = energy
        for colour in colours:
            grad = problem.gradient(y)[1]  # the gradient in y_i: exact for the pairs and for ce
            for row, col in colour:
                part = (slice(None), slice(None), slice(row, None, high), slice(col, None, wide))
                y_part, sigma_part = y[part], sigma[part]
                at_y = (sigma_part * y_part).sum(1, keepdim=True) + EPS
                pairs = grad[part] + eta * sigma_part / at_y  # the cce unary's gradient taken out (eta 0: ce)
                value, minimiser = _pixel_minima(pairs, sigma_part, eta)
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
    problem = _make_problem(logits, image, seeds, eta=eta, lam=lam, mask=mask, weights=weights, **settings)
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
    info = SolveInfo(coarse=_wants_coarse(problem) if levels is None else torch.full(
        (logits.shape[0],), levels > 0, device=logits.device))
    factors = _levels(logits.shape, len(LEVEL_FACTORS) if levels is None else levels)
    theta = own = torch.log(y0.clamp(min=math.exp(LOG_FLOOR)))
    for f in factors if init is None and info.coarse.any() else ():
        coarse_logits, coarse_image, coarse_seeds, coarse_mask, coarse_weights = _coarse(
            problem.logits, problem.image, seeds, mask, weights, ignore_index, f)
        coarse = _make_problem(coarse_logits, coarse_image, coarse_seeds, eta=eta * f * f, lam=lam * f,
                               mask=coarse_mask, weights=coarse_weights,
                               **dict(settings, sigma_xy=None if sigma_xy is None else sigma_xy / f))
        level_start = time.perf_counter()
        theta = torch.log_softmax(coarse.logits, 1) if f == factors[0] else _upsample(theta, previous // f,
                                                                                     *coarse.logits.shape[2:])
        y, _, steps, _ = _solve_level(coarse, theta, iters, tol * COARSE_TOL, rule, [])
        theta, previous = torch.log(y.clamp(min=math.exp(LOG_FLOOR))), f
        info.levels.append((f, steps, time.perf_counter() - level_start))
    info.coarse &= bool(info.levels)  # not where a given init or the image's size leaves no coarse level
    if info.levels:
        theta = torch.where(info.coarse.view(-1, 1, 1, 1), _upsample(theta, previous, *logits.shape[2:]), own)
    start_energy = problem.gradient(y0)[0]
    info.energies.append(start_energy)
    trace, level_start = [], time.perf_counter()
    y, best, info.iterations, info.lower = _solve_level(problem, theta, iters, tol, rule, trace)
    info.sweeps = torch.zeros_like(info.iterations)
    polish = (relaxation_name(relaxation) == "bilinear" and problem.unary in ("cce", "ce")
              and not (isinstance(neighborhood, str) and neighborhood == "dense"))
    if polish:
        y, best, info.sweeps = _polish(problem, y, best, info.lower, tol)
        trace.append(best)
    info.levels.append((1, info.iterations, time.perf_counter() - level_start))
    info.energies.extend(torch.minimum(e, start_energy) for e in trace[1:])
    worse = ~(best <= start_energy)  # the start is kept where the solve did not go below it
    y = problem.clamp(torch.where(worse.view(-1, 1, 1, 1), y0, y))
    info.best = torch.where(worse, start_energy, best)
    info.seconds = time.perf_counter() - start
    return (y, info) if return_info else y
