"""The soft pseudo-label solver of soft self-labeling (SPEC section 6).

Given network logits z, an image and scribbles S, find soft labels y minimising, per image,

    E(y) = eta sum_{i not in S, mask} H(y_i, sigma_i)  +  lam sum_{{i,j} in N} w_ij P(y_i, y_j)

with y_i fixed to the one-hot scribble on S.  Two methods, both batched with each image optimised on its
own (its own step sizes, its own stopping; an image that has converged is frozen, so a result never
depends on the other images of the batch):

- "mirror": entropic mirror descent on the simplex, y <- normalise(y exp(-tau g)), with a per-image step
  tau that grows by 1.25 after an accepted step and halves after a rejected one (a step that would raise
  the energy is not taken), so the energy never increases;
- "adam": Adam on pseudo-logits v with y = softmax(v) (the paper's parameterisation), keeping the best
  iterate of each image.

Energies and gradients come from pottsops.unary and pottsops.potts_energy on the chosen backend, so the
same solver runs the fused kernels or, with backend="reference", plain PyTorch (the reference solver).
"""
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pottsops import _backend, _checks
from pottsops.names import UNARIES, relaxation_index, relaxation_name, unary_index, unary_name
from pottsops.neighborhoods import as_neighborhood
from pottsops.potts import GRID_BACKENDS, inv_two_sigma2, potts_energy
from pottsops.unary import unary as unary_loss

SOLVE_METHODS = ("mirror", "adam")
LOG_FLOOR = -60.0  # log y never below this (exp(-60) ~ 1e-26): no denormal floats, which are slow on CPUs


@dataclass
class SolveInfo:
    """What solve(..., return_info=True) reports: energies[t] is the per-image energy (B,) after t
    iterations (t = 0: the initialisation), iterations the iterations each image ran, seconds the wall
    time, best the per-image energy of the returned y."""
    energies: list = field(default_factory=list)
    iterations: torch.Tensor = None
    seconds: float = 0.0
    best: torch.Tensor = None


class _Problem:
    """The energy of one solve() call: per-image values (B,) and gradients with respect to y."""

    def __init__(self, logits, image, seeded, one_hot, unlabeled, relaxation, unary, neighborhood, eta, lam,
                 sigma_rgb, sigma_xy, mask, weights, dense_method, backend):
        self.logits, self.image, self.seeded, self.one_hot = logits, image, seeded, one_hot
        self.unlabeled, self.mask, self.weights = unlabeled, mask, weights
        self.unary, self.eta, self.lam, self.backend, self.eps = unary, eta, lam, backend, 1e-8
        self.potts = dict(relaxation=relaxation, neighborhood=neighborhood, sigma_rgb=sigma_rgb, sigma_xy=sigma_xy,
                          weights=weights, mask=mask, reduction="none", backend=backend)
        if isinstance(neighborhood, str) and neighborhood == "dense":
            self.potts["method"] = dense_method

    def clamp(self, y):
        """y with the scribbled pixels set to their one-hot labels."""
        return torch.where(self.seeded[:, None], self.one_hot, y)

    def energy(self, y):
        """Per-image energy (B,) of the clamped labels y."""
        unary = unary_loss(self.logits, y, self.unary, mask=self.unlabeled, reduction="none", backend=self.backend)
        potts = potts_energy(y, self.image, **self.potts)
        return self.eta * unary.sum((1, 2)) + self.lam * potts

    def energy_and_grad(self, y):
        y = y.detach().requires_grad_()
        with torch.enable_grad():
            energy = self.energy(y)
            (grad,) = torch.autograd.grad(energy.sum(), y)
        return energy.detach(), torch.where(self.seeded[:, None], 0, grad)

    def gradient(self, y):
        """(energy (B,), gradient, per-image largest per-pixel spread max_k g - min_k g)."""
        energy, grad = self.energy_and_grad(y)
        spread = (grad.amax(1) - grad.amin(1)).flatten(1).amax(1)
        return energy, grad, spread

    def mirror_step(self, log_y, grad, scale):
        """(log y, y) after one entropic mirror step of per-image size scale (B,), seeds clamped."""
        trial_log = torch.log_softmax(log_y - scale.view(-1, 1, 1, 1) * grad, 1).clamp(min=LOG_FLOOR)
        return trial_log, self.clamp(trial_log.exp())


class _FusedProblem(_Problem):
    """The same energy through the compiled ops directly (no autograd, no elementwise temporaries): one
    pass for the energy and its gradient (grid_solver_gradient: the grid Potts backward kernel with the
    unary folded in) and one for the mirror step (mirror_step)."""

    def __init__(self, *args, log_sigma, seeds, grid_args, unary_index):
        super().__init__(*args)
        # the one tensor the unary reads: log sigma for ce, sigma for cce and rce
        self.operand = log_sigma if unary_index == UNARIES.index("ce") else log_sigma.exp()
        self.seed_ids, self.grid_args, self.unary_index = seeds, grid_args, unary_index

    def gradient(self, y):
        return torch.ops.pottsops.grid_solver_gradient(y, *self.grid_args, self.operand, self.unlabeled, self.seeded,
                                                       self.unary_index, self.eta, self.lam, self.eps)

    def energy_and_grad(self, y):
        energy, grad, _ = self.gradient(y)
        return energy, grad

    def mirror_step(self, log_y, grad, scale):
        return torch.ops.pottsops.mirror_step(log_y, grad, scale, self.seed_ids, self.seeded, LOG_FLOOR)


# The one-launch CUDA step (mirror_fused_step) is opt-in until it has been checked and timed on a GPU: no
# GPU has run it yet (README, "GPU status").  benchmarks/gpu_suite.sh tests and times both CUDA loops.
ONE_LAUNCH_DEFAULT = False


def _mirror(problem, y, iters, tol, step, info, sync_free=None, compiled=None, one_launch=None):
    """Entropic mirror descent with a per-image step: the largest change of log y_ik in image b is tau_b,
    x1.25 after an accepted step, x0.5 after a rejected one (energy up: the image keeps its iterate).
    Images stop at relative change < tol.  With the fused step on the CPU (compiled=None: auto) the whole
    loop runs in one compiled op (mirror_solve), image by image.  On CUDA with the fused step, either one
    launch per step (one_launch=None: ONE_LAUNCH_DEFAULT) replayed from CUDA graphs, or (sync_free=None:
    auto) a sync-free loop body of a few kernels replayed from CUDA graphs of GRAPH_ITERATIONS steps, the
    stopping test between replays; elsewhere each step copies back only the rejected images."""
    fused = isinstance(problem, _FusedProblem)
    if compiled is None:
        compiled = fused and y.device.type == "cpu"
    if compiled:
        return _mirror_compiled(problem, y, iters, tol, step, info)
    if one_launch is None:
        one_launch = ONE_LAUNCH_DEFAULT and fused and y.is_cuda
    if one_launch:
        return _mirror_one_launch(problem, y, iters, tol, step, info)
    state = _MirrorState(problem, y, step)
    info.energies.append(state.energy.clone())
    if sync_free is None:
        sync_free = y.is_cuda and isinstance(problem, _FusedProblem)
    done = 0
    if sync_free and y.is_cuda and iters > GRAPH_ITERATIONS:
        done = _mirror_graphed(problem, state, iters, tol, info)
    for _ in range(iters - done):
        if not bool(state.active.any()):
            break
        if sync_free:
            state.step_sync_free(tol)
        else:
            state.step(tol)
        info.energies.append(state.energy.clone())
    info.iterations = state.iterations
    return state.y, state.energy


def _mirror_compiled(problem, y, iters, tol, step, info):
    """_mirror's loop in the CPU op mirror_solve: the same arithmetic, step control and trace."""
    y = y.contiguous()
    log_y = torch.log(y).clamp(min=LOG_FLOOR)
    y, energy, trace, iterations = torch.ops.pottsops.mirror_solve(
        y, log_y, *problem.grid_args, problem.operand, problem.unlabeled, problem.seeded, problem.seed_ids,
        problem.unary_index, problem.eta, problem.lam, problem.eps, LOG_FLOOR, step, iters, tol)
    info.energies.extend(trace.unbind(0))
    info.iterations = iterations
    return y, energy


GRAPH_ITERATIONS = 10

# The columns of mirror_fused_step's per-image state (csrc/cuda/solver_device.cuh, StateColumn): which
# buffer holds the iterate, tau, energy, spread, active, steps run, steps accepted.
CURRENT, TAU, ENERGY, SPREAD, ACTIVE, STEPS, ACCEPTED, STATE_COLUMNS = range(8)


def _mirror_one_launch(problem, y, iters, tol, step, info):
    """_mirror's loop on CUDA with one kernel launch per step (mirror_fused_step: the mirror step, the
    gradient at the stepped labels and each image's step control fused), GRAPH_ITERATIONS launches per CUDA
    graph replay, the stopping test between replays.  An image's iterate is kept as log y and its gradient,
    in two buffers swapped on acceptance; y = exp(log y) at the end (y itself if no step was accepted)."""
    B = y.shape[0]
    y = y.contiguous()
    logs = torch.empty((2, *y.shape), dtype=y.dtype, device=y.device)
    logs[0] = torch.log(y).clamp(min=LOG_FLOOR)
    grads = torch.empty_like(logs)
    energy, grads[0], spread = problem.gradient(y)
    state = torch.zeros(B, STATE_COLUMNS, dtype=torch.float64, device=y.device)
    state[:, TAU] = torch.tensor(step, dtype=y.dtype).double()
    state[:, ENERGY], state[:, SPREAD], state[:, ACTIVE] = energy, spread, 1
    arrived = torch.zeros(B, dtype=torch.int32, device=y.device)
    trace = torch.empty(GRAPH_ITERATIONS, B, dtype=y.dtype, device=y.device)
    info.energies.append(energy.clone())

    def launch(row):
        torch.ops.pottsops.mirror_fused_step(logs, grads, state, arrived, row, *problem.grid_args, problem.operand,
                                             problem.unlabeled, problem.seeded, problem.seed_ids,
                                             problem.unary_index, problem.eta, problem.lam, problem.eps, LOG_FLOOR,
                                             tol)

    done = 0
    if y.is_cuda and iters > GRAPH_ITERATIONS:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # the first step eagerly: it warms up the op
            launch(trace[0])
        torch.cuda.current_stream().wait_stream(side)
        info.energies.append(trace[0].clone())
        done = 1
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for j in range(GRAPH_ITERATIONS):
                launch(trace[j])
        while done + GRAPH_ITERATIONS <= iters and bool(state[:, ACTIVE].any()):
            graph.replay()
            info.energies.extend(trace.clone().unbind(0))
            done += GRAPH_ITERATIONS
    while done < iters and bool(state[:, ACTIVE].any()):
        launch(trace[0])
        info.energies.append(trace[0].clone())
        done += 1
    log_y = logs[state[:, CURRENT].long(), torch.arange(B, device=y.device)]
    moved = (state[:, ACCEPTED] > 0).view(B, 1, 1, 1)
    info.iterations = state[:, STEPS].long()
    return torch.where(moved, log_y.exp(), y), state[:, ENERGY].to(y.dtype)


class _MirrorState:
    """The iterate of every image (y, log y, gradient, spread, energy) and its step control (tau, active,
    iterations), updated in place so that CUDA graphs can replay the steps."""

    def __init__(self, problem, y, step):
        B = y.shape[0]
        self.problem = problem
        self.y = y.contiguous().clone()
        self.log_y = torch.log(self.y).clamp(min=LOG_FLOOR)
        self.energy, self.grad, self.spread = problem.gradient(self.y)
        self.tau = torch.full((B,), step, dtype=y.dtype, device=y.device)
        self.active = torch.ones(B, dtype=torch.bool, device=y.device)
        self.iterations = torch.zeros(B, dtype=torch.long, device=y.device)

    def _trial(self, tol):
        scale = torch.where(self.active, self.tau, 0) / self.spread.clamp(min=torch.finfo(self.y.dtype).tiny)
        trial_log, trial = self.problem.mirror_step(self.log_y, self.grad, scale)
        trial_energy, trial_grad, trial_spread = self.problem.gradient(trial)
        accept = self.active & torch.isfinite(trial_energy) & (trial_energy <= self.energy)
        change = (self.energy - trial_energy).abs() / self.energy.abs().clamp(min=1e-30)
        return (trial, trial_log, trial_grad, trial_spread, trial_energy), accept, change

    def _control(self, accept, change, tol):
        self.tau.copy_(torch.where(accept, self.tau * 1.25, self.tau * 0.5))
        self.iterations += self.active.long()
        self.active &= ~(accept & (change < tol)) & (self.tau > 1e-8)

    def step(self, tol):
        """One step; the rejected images' rows are copied back (host-side indices: one sync)."""
        trial, accept, change = self._trial(tol)
        for b in (~accept).nonzero().flatten().tolist():  # keep the previous iterate of those images
            for new, old in zip(trial, self._fields()):
                new[b].copy_(old[b])  # one contiguous copy per image: advanced indexing is 10x slower
        self.y, self.log_y, self.grad, self.spread, self.energy = trial
        self._control(accept, change, tol)

    def step_sync_free(self, tol):
        """The same step without host syncs: every field selected per image in place."""
        trial, accept, change = self._trial(tol)
        for new, old in zip(trial, self._fields()):
            keep = accept.view(-1, *([1] * (old.dim() - 1)))
            torch.where(keep, new, old, out=old)
        self._control(accept, change, tol)

    def _fields(self):
        return self.y, self.log_y, self.grad, self.spread, self.energy


def _mirror_graphed(problem, state, iters, tol, info):
    """Steps replayed from a CUDA graph of GRAPH_ITERATIONS sync-free steps (the energies of each into a
    static trace); returns the number of steps done.  The first step runs eagerly (it warms up the ops)."""
    trace = torch.empty(GRAPH_ITERATIONS, state.energy.shape[0], dtype=state.energy.dtype, device=state.y.device)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        state.step_sync_free(tol)
    torch.cuda.current_stream().wait_stream(side)
    info.energies.append(state.energy.clone())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for j in range(GRAPH_ITERATIONS):
            state.step_sync_free(tol)
            trace[j].copy_(state.energy)
    done = 1
    while done + GRAPH_ITERATIONS <= iters and bool(state.active.any()):
        graph.replay()
        info.energies.extend(trace.clone().unbind(0))
        done += GRAPH_ITERATIONS
    return done


def _adam(problem, y, iters, tol, step, info):
    B = y.shape[0]
    v = torch.log(y.clamp(min=1e-12)).detach().requires_grad_()
    optimizer = torch.optim.Adam([v], lr=step)
    best_y, best = y, problem.energy_and_grad(y)[0]
    info.energies.append(best)
    previous = best
    active = torch.ones(B, dtype=torch.bool, device=y.device)
    iterations = torch.zeros(B, dtype=torch.long, device=y.device)
    for _ in range(iters):
        if not bool(active.any()):
            break
        before = v.detach().clone()
        optimizer.zero_grad()
        current = problem.clamp(torch.softmax(v, 1))
        energy, grad_y = problem.energy_and_grad(current)
        v.grad = current * (grad_y - (current * grad_y).sum(1, keepdim=True))  # through the softmax
        optimizer.step()
        with torch.no_grad():  # frozen images keep their pseudo-logits
            v.copy_(torch.where(active.view(B, 1, 1, 1), v, before))
        better = active & torch.isfinite(energy) & (energy < best)
        best_y = torch.where(better.view(B, 1, 1, 1), current.detach(), best_y)
        best = torch.where(better, energy, best)
        iterations += active.long()
        change = (previous - energy).abs() / previous.abs().clamp(min=1e-30)
        active = active & ~((iterations > 1) & (change < tol))  # iteration 1 evaluates the initialisation
        previous = torch.where(active, energy, previous)
        info.energies.append(best)
    final = problem.clamp(torch.softmax(v.detach(), 1))
    final_energy = problem.energy_and_grad(final)[0]
    better = torch.isfinite(final_energy) & (final_energy < best)
    info.iterations = iterations
    return torch.where(better.view(B, 1, 1, 1), final, best_y), torch.where(better, final_energy, best)


def _fused_setup(logits, image, seeds, seeded, neighborhood, relaxation, unary, sigma_rgb, sigma_xy, mask, weights,
                 method, backend):
    """Arguments of _FusedProblem when the compiled ops can run the whole step (mirror descent, grid or
    window neighbourhood, the cpu or cuda backend), else None."""
    if method != "mirror" or (isinstance(neighborhood, str) and neighborhood == "dense"):
        return None
    impl = _backend.resolve(backend, logits.device, GRID_BACKENDS, "solve")
    if impl not in ("cpu", "cuda"):
        return None
    neighborhood = as_neighborhood(neighborhood)
    image = None if image is None else image.detach()
    if weights is not None:
        _checks.check_like("weights", weights, (logits.shape[0], neighborhood.num_offsets, *logits.shape[2:]),
                           f"one channel per offset of {neighborhood}")
    use_image = image if weights is None else None
    inv = inv_two_sigma2(use_image, sigma_rgb, mask) if use_image is not None else None
    grid_args = (use_image, None if weights is None else weights.detach().to(logits.dtype), mask, inv,
                 neighborhood.flat_offsets(), neighborhood.spatial(sigma_xy), relaxation_index(relaxation), 1e-8)
    return dict(log_sigma=torch.log_softmax(logits, 1).contiguous(), seeds=torch.where(seeded, seeds, 0).long(),
                grid_args=grid_args, unary_index=unary_index(unary, "unary"))


def _make_problem(logits, image, seeds, relaxation, unary, neighborhood, eta, lam, sigma_rgb, sigma_xy, mask, weights,
                  ignore_index, dense_method, method, backend):
    """The _FusedProblem where the compiled ops can run the whole step, else the _Problem (checked args)."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logits = logits.detach().to(dtype).contiguous()
    seeded = (seeds != ignore_index).contiguous()
    if mask is not None:
        seeded = seeded & mask
    one_hot = F.one_hot(torch.where(seeded, seeds, 0).long(), logits.shape[1]).permute(0, 3, 1, 2).to(dtype)
    unlabeled = (~seeded if mask is None else mask & ~seeded).contiguous()
    args = (logits, None if image is None else image.detach(), seeded, one_hot, unlabeled, relaxation, unary,
            neighborhood, eta, lam, sigma_rgb, sigma_xy, mask, weights, dense_method, backend)
    fused = _fused_setup(logits, image, seeds, seeded, neighborhood, relaxation, unary, sigma_rgb, sigma_xy, mask,
                         weights, method, backend)
    return _FusedProblem(*args, **fused) if fused else _Problem(*args)


def solve(logits, image, seeds, *, relaxation="cd", unary="cce", neighborhood="nn4", eta=0.3, lam=6.0,
          sigma_rgb=9.0, sigma_xy=None, mask=None, weights=None, init=None, iters=200, method="mirror", tol=1e-6,
          step=None, ignore_index=255, dense_method="lattice", backend="auto", return_info=False):
    """Soft pseudo-labels y (B, K, H, W) minimising eta H(y, softmax(logits)) + lam Potts(y), scribbles fixed.

    logits: (B, K, H, W) network outputs (no gradient flows back).
    image: (B, C, H, W) for the affinities (RGB in 0..255 for the default sigma_rgb), or None with
        weights, or None for constant weights.
    seeds: (B, H, W) integer class ids on scribbled pixels, ignore_index elsewhere.
    relaxation, unary, neighborhood, sigma_rgb, sigma_xy, weights, mask: as in potts_energy / unary;
        dense_method: 'lattice' or 'exact' for neighborhood='dense'.
    init: (B, K, H, W) starting labels (default softmax(logits)); the returned energy never exceeds its.
    iters, tol: at most iters iterations; an image stops when its relative energy change is below tol.
    method: 'mirror' (entropic mirror descent, default) or 'adam' (Adam on pseudo-logits, y = softmax(v));
        step: mirror's initial largest log-change per iteration (default 1.0) or Adam's learning rate
        (default 0.1).
    return_info: also return a SolveInfo (energy per iteration, iterations, seconds).

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
    _checks.check_choice("method", method, SOLVE_METHODS)
    for name, value in (("eta", eta), ("lam", lam)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 0:
        raise ValueError(f"iters: expected an integer >= 0, got {iters!r}")
    if not isinstance(tol, (int, float)) or tol < 0:
        raise ValueError(f"tol: expected a number >= 0, got {tol!r}")
    if step is not None:
        _checks.check_positive("step", step)
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    problem = _make_problem(logits, image, seeds, relaxation, unary, neighborhood, eta, lam, sigma_rgb, sigma_xy, mask,
                            weights, ignore_index, dense_method, method, backend)
    logits = problem.logits
    if init is not None:
        _checks.check_like("init", init, logits.shape, "the shape of logits")
        _checks.check_device("init", init, "logits", logits)
        _checks.check_finite("init", init)
        y0 = init.detach().to(dtype).clamp(min=0)
        y0 = y0 / y0.sum(1, keepdim=True).clamp(min=torch.finfo(dtype).tiny)
    else:
        y0 = torch.softmax(logits, 1)
    y0 = problem.clamp(y0).contiguous()
    info = SolveInfo()
    if method == "mirror":
        y, best = _mirror(problem, y0, iters, tol, 1.0 if step is None else step, info)
    else:
        y, best = _adam(problem, y0, iters, tol, 0.1 if step is None else step, info)
    y = problem.clamp(y)
    info.best = best
    info.seconds = time.perf_counter() - start
    return (y, info) if return_info else y
