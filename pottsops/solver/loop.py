"""The solver's loop at one level: adaptive mirror descent on pseudo-logits theta (log y up to a per-pixel
constant), moving against the centred gradient g - <y, g> with Adam's per-coordinate steps, y = softmax(theta)
(the rule: csrc/pottsops/solver_math.h, reference.adaptive_step), with progress checks every WINDOW steps.
On the CPU the whole loop of a level is one op (adaptive_solve); on CUDA windows of steps are replayed from a
CUDA graph; elsewhere the same rule runs in PyTorch.  docs/solver.md has the measurements behind it.
"""
import torch

from pottsops.solver.problem import EPS, FusedProblem

# The step rule's constants, in the order the ops take them after the learning rate: beta1, beta2, eps (then
# the log floor, problem.LOG_FLOOR).
BETAS = (0.9, 0.99)
ADAM_EPS = 1e-8
WINDOW = 20  # steps between progress checks (and per CUDA graph)
MAX_HALVINGS = 3  # of an image's learning rate on a window of little progress, before it stops


class Loop:
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


def adaptive_loop(problem, y, theta, iters, tol, rule, lower, energies):
    """At most iters steps of the rule from (y, theta); returns (best y, its energy, steps per image) and
    appends the best energy after each step to energies.  On CUDA with the fused problem, windows of WINDOW
    steps and their check are replayed from a CUDA graph (the stopping test, a host sync, between them)."""
    loop = Loop(problem, y, theta, rule, lower, tol)
    energies.append(loop.best.clone())

    def window(steps):
        for j in range(steps):
            loop.advance(j)
        if steps == WINDOW:
            loop.check()

    done, graph = 0, None
    while done < iters and bool((loop.scale > 0).any()):
        steps = min(WINDOW, iters - done)
        if steps == WINDOW and y.is_cuda and isinstance(problem, FusedProblem):
            with torch.cuda.device(y.device):  # streams and graphs of the tensors' device, not the current one
                if graph is None:
                    graph = capture_window(window, loop)
                graph.replay()
        else:
            window(steps)
        energies.extend(loop.trace[:steps].clone().unbind(0))
        done += steps
    return loop.best_y, loop.best, loop.steps


def capture_window(window, loop):
    """A CUDA graph of one window of steps; the window runs once eagerly on a side stream first (it warms
    up the ops), so its effect is undone: the loop's state is saved and restored around it.  Runs with the
    loop's device current (adaptive_loop)."""
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


def compiled_loop(problem, y, theta, iters, tol, rule, lower, energies):
    """adaptive_loop in the CPU op adaptive_solve: the same arithmetic, stopping and trace."""
    y, energy, trace, steps = torch.ops.pottsops.adaptive_solve(
        y.contiguous(), theta.contiguous(), *problem.grid_args, problem.operand, problem.unlabeled, problem.seeded,
        problem.seed_ids, lower, problem.unary_index, problem.eta, problem.lam, EPS, rule, iters, tol, WINDOW)
    energies.extend(trace.unbind(0))
    return y, energy, steps


def solve_level(problem, theta, iters, tol, rule, energies):
    """One level: the loop from y = softmax(theta) (seeds clamped), in the CPU op where it can run.  Returns
    (best y, its energy, steps per image, the unary's lower bound)."""
    lower = problem.lower_bound()
    theta = problem.clamp_theta(theta)
    y = problem.clamp(torch.softmax(theta, 1)).contiguous()
    loop = compiled_loop if isinstance(problem, FusedProblem) and y.device.type == "cpu" else adaptive_loop
    return loop(problem, y, theta, iters, tol, rule, lower, energies) + (lower,)
