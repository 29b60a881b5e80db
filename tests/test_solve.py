"""pottsops.solve(): the guarantees of SPEC section 6, batch independence, backends and errors."""
import contextlib
import importlib

import pytest
import torch

import pottsops
from conftest import compare_one_launch_loop, cpu_kernels, random_mask
from pottsops.solve import ACCEPTED, ACTIVE, CURRENT, ENERGY, SOLVE_METHODS, SPREAD, STEPS, TAU

solve_module = importlib.import_module("pottsops.solve")  # the module: pottsops.solve is the function


def problem(B=2, K=4, H=14, W=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K, H, W, generator=g) * 2
    image = torch.rand(B, 3, H, W, generator=g) * 255
    seeds = torch.full((B, H, W), 255)
    seeds[:, 2:4, 2:12] = 1
    seeds[:, 9:11, 4:15] = 3
    seeds[1, 6, 1:5] = 0
    return logits, image, seeds


def check_guarantees(y, info, seeds, logits, mask=None):
    assert torch.isfinite(y).all() and (y >= 0).all()
    assert float((y.sum(1) - 1).abs().max()) <= 1e-5
    seeded = seeds != 255
    if mask is not None:
        seeded &= mask
    one_hot = torch.nn.functional.one_hot(seeds.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2)
    assert torch.equal(y.permute(0, 2, 3, 1)[seeded], one_hot.permute(0, 2, 3, 1)[seeded].to(y.dtype))
    assert (info.best <= info.energies[0]).all()
    assert torch.isfinite(info.best).all()


@pytest.mark.parametrize("method", SOLVE_METHODS)
@pytest.mark.parametrize("relaxation", pottsops.RELAXATIONS)
def test_guarantees_for_every_relaxation(method, relaxation):
    logits, image, seeds = problem()
    y, info = pottsops.solve(logits, image, seeds, relaxation=relaxation, method=method, iters=30, return_info=True)
    check_guarantees(y, info, seeds, logits)
    assert (info.best < info.energies[0]).all(), "the solver made no progress"


@pytest.mark.parametrize("unary", pottsops.UNARIES)
@pytest.mark.parametrize("neighborhood", ["nn4", "nn8", pottsops.window(2), "dense"], ids=["nn4", "nn8", "win2",
                                                                                          "dense"])
def test_guarantees_for_unaries_and_neighbourhoods(unary, neighborhood):
    logits, image, seeds = problem(seed=1)
    relaxation = "nq" if neighborhood == "dense" else "cd"
    y, info = pottsops.solve(logits, image, seeds, relaxation=relaxation, unary=unary, neighborhood=neighborhood,
                             sigma_xy=5.0 if neighborhood == "dense" else None, iters=20, return_info=True)
    check_guarantees(y, info, seeds, logits)


def test_energy_trace_is_the_energy_of_the_result():
    logits, image, seeds = problem(seed=2)
    y, info = pottsops.solve(logits, image, seeds, iters=25, return_info=True)
    expected = (0.3 * pottsops.unary(logits, y, "cce", mask=seeds == 255, reduction="none").sum((1, 2))
                + 6.0 * pottsops.potts_energy(y, image, relaxation="cd", reduction="none"))
    torch.testing.assert_close(info.best, expected, rtol=1e-4, atol=1e-3)
    assert len(info.energies) <= 26 and info.iterations.max() <= 25 and info.seconds > 0
    # mirror descent never accepts an increase: its trace is non-increasing
    trace = torch.stack(info.energies)
    assert (trace[1:] <= trace[:-1]).all()


@pytest.mark.parametrize("method", ["mirror", "adam"])
def test_one_image_does_not_depend_on_the_others(method):
    logits, image, seeds = problem(B=3, seed=3)
    together = pottsops.solve(logits, image, seeds, method=method, iters=40, tol=1e-3)
    alone = pottsops.solve(logits[1:2], image[1:2], seeds[1:2], method=method, iters=40, tol=1e-3)
    torch.testing.assert_close(together[1:2], alone, rtol=1e-5, atol=1e-6)


def test_mask_and_init():
    logits, image, seeds = problem(seed=4)
    mask = random_mask((2, 4, 14, 17), keep=0.8, generator=torch.Generator().manual_seed(4))
    init = torch.softmax(torch.randn(2, 4, 14, 17), 1)
    y, info = pottsops.solve(logits, image, seeds, mask=mask, init=init, iters=20, return_info=True)
    check_guarantees(y, info, seeds, logits, mask)
    clamped = init.clone()
    seeded = (seeds != 255) & mask
    clamped.permute(0, 2, 3, 1)[seeded] = torch.nn.functional.one_hot(seeds[seeded], 4).float()
    start = (0.3 * pottsops.unary(logits, clamped, "cce", mask=mask & ~seeded, reduction="none").sum((1, 2))
             + 6.0 * pottsops.potts_energy(clamped, image, relaxation="cd", mask=mask, reduction="none"))
    torch.testing.assert_close(info.energies[0], start, rtol=1e-5, atol=1e-3)


FUSED = [name for name in ("cpu", "cuda") if pottsops.backends()[name].available]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("unary", pottsops.UNARIES)
def test_fused_step_gives_the_reference_iterates(backend, unary):
    """The fused mirror step (compiled ops) against the same solver on the reference ops (autograd)."""
    device = "cuda" if backend == "cuda" else "cpu"
    logits, image, seeds = problem(seed=5)
    mask = random_mask((2, 4, 14, 17), keep=0.9, generator=torch.Generator().manual_seed(5))
    args = (logits.double().to(device), image.double().to(device), seeds.to(device))
    kwargs = dict(unary=unary, neighborhood="nn8", mask=mask.to(device), iters=15)
    fast = pottsops.solve(*args, backend=backend, **kwargs)
    ref = pottsops.solve(*args, backend="reference", **kwargs)
    torch.testing.assert_close(fast, ref, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("backend", FUSED)
def test_fused_ops_opcheck(backend):
    device = "cuda" if backend == "cuda" else "cpu"
    g = torch.Generator().manual_seed(11)
    y = torch.softmax(torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64), 1).to(device)
    log_sigma = torch.log_softmax(torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64), 1).to(device)
    potts_grad = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64).to(device)
    seeded = (torch.rand(2, 5, 6, generator=g) < 0.2).to(device)
    seeds = torch.randint(0, 4, (2, 5, 6), generator=g).to(device)
    torch.library.opcheck(torch.ops.pottsops.solver_gradient.default,
                          (y, log_sigma.exp(), potts_grad, ~seeded, seeded, 0, 0.3, 6.0, 1e-8))
    image = torch.rand(2, 3, 5, 6, generator=g, dtype=torch.float64).to(device) * 255
    inv = torch.full((2,), 1 / (2 * 9.0 ** 2), dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.pottsops.grid_solver_gradient.default,
                          (y, image, None, None, inv, [0, 1, 1, 0], [1.0, 1.0], 5, 1e-8, log_sigma.exp(), ~seeded,
                           seeded, 0, 0.3, 6.0, 1e-8))
    scale = torch.tensor([0.5, 2.0], dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.pottsops.mirror_step.default, (y.log(), potts_grad, scale, seeds, seeded, -60.0))
    with pytest.raises(RuntimeError, match="seeds: expected int64"):
        torch.ops.pottsops.mirror_step(y.log(), potts_grad, scale, seeds.int(), seeded, -60.0)
    if device == "cpu":  # the whole loop, a CPU op (CUDA runs the steps from CUDA graphs)
        solve_args = [y, y.log().clamp(min=-60), image, None, None, inv, [0, 1, 1, 0], [1.0, 1.0], 5, 1e-8,
                      log_sigma.exp(), ~seeded, seeded, seeds, 0, 0.3, 6.0, 1e-8, -60.0, 1.0, 5, 0.0]
        torch.library.opcheck(torch.ops.pottsops.mirror_solve.default, tuple(solve_args))
        for at, value, pattern in ((13, seeds.int(), "seeds: expected int64"), (20, -1, "iters: expected"),
                                   (19, 0.0, "step: expected a number > 0")):
            with pytest.raises(RuntimeError, match=pattern):
                torch.ops.pottsops.mirror_solve(*solve_args[:at], value, *solve_args[at + 1:])
    with pytest.raises(RuntimeError, match="operand: expected a contiguous"):
        torch.ops.pottsops.solver_gradient(y, log_sigma.float(), potts_grad, ~seeded, seeded, 0, 0.3, 6.0, 1e-8)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("unary", pottsops.UNARIES)
@pytest.mark.parametrize("relaxation", pottsops.RELAXATIONS)
def test_fused_energy_and_gradient_match_the_reference(backend, relaxation, unary):
    """grid_solver_gradient (the fused problem's one pass) against autograd through the reference ops:
    energy, gradient (zero on seeds) and spread, with a window neighbourhood, a mask and a strided y."""
    device = "cuda" if backend == "cuda" else "cpu"
    logits, image, seeds = problem(seed=8)
    mask = random_mask((2, 4, 14, 17), keep=0.85, generator=torch.Generator().manual_seed(8)).to(device)
    args = dict(logits=logits.double().to(device), image=image.double().to(device), seeds=seeds.to(device),
                relaxation=relaxation, unary=unary, neighborhood=pottsops.window(2, 1), eta=0.3, lam=6.0,
                sigma_rgb=9.0, sigma_xy=None, mask=mask, weights=None, ignore_index=255, dense_method="lattice",
                method="mirror")
    fused = solve_module._make_problem(**args, backend=backend)
    reference = solve_module._make_problem(**args, backend="reference")
    assert type(fused).__name__ == "_FusedProblem" and type(reference).__name__ == "_Problem"
    y = torch.softmax(torch.randn(2, 17, 14, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9)), 3)
    y = reference.clamp(y.to(device).permute(0, 3, 2, 1))  # a non-contiguous view of labels on the simplex
    for got, expected in zip(fused.gradient(y), reference.gradient(y)):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", FUSED)
def test_sync_free_steps_give_the_same_iterates(backend):
    """The sync-free mirror step (on CUDA replayed from CUDA graphs) against the step that copies back the
    rejected images: the same iterates, iterations and energies, with images stopping at different times."""
    device = "cuda" if backend == "cuda" else "cpu"
    logits, image, seeds = problem(B=3, seed=12)
    args = dict(logits=logits.double().to(device), image=image.double().to(device), seeds=seeds.to(device),
                relaxation="cd", unary="cce", neighborhood="nn4", eta=0.3, lam=6.0, sigma_rgb=9.0, sigma_xy=None,
                mask=None, weights=None, ignore_index=255, dense_method="lattice", method="mirror", backend=backend)
    runs = []
    for sync_free in (False, True):
        fused = solve_module._make_problem(**args)
        info = solve_module.SolveInfo()
        y0 = fused.clamp(torch.softmax(fused.logits, 1)).contiguous()
        y, energy = solve_module._mirror(fused, y0, 35, 1e-4, 1.0, info, sync_free=sync_free)
        runs.append((y, energy, info.iterations, torch.stack(info.energies)))
    (y, energy, iterations, trace), (y2, energy2, iterations2, trace2) = runs
    assert int(iterations.min()) < int(iterations.max())  # images stopped at different steps
    torch.testing.assert_close(y2, y, rtol=0, atol=0)
    torch.testing.assert_close(energy2, energy, rtol=0, atol=0)
    assert torch.equal(iterations2, iterations)
    torch.testing.assert_close(trace2[:len(trace)], trace, rtol=0, atol=0)  # later entries: no-op steps
    assert (trace2[len(trace):] == energy).all()


@pytest.mark.skipif("cpu" not in FUSED, reason="the compiled CPU backend is not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("relaxation", ["cd", "nq"])
def test_compiled_cpu_loop_gives_the_python_loop(dtype, relaxation):
    """mirror_solve (the whole CPU loop in one op, image by image) against _mirror's Python loop over the
    same fused ops: bit-identical iterates, energies, steps and trace, with images stopping at different
    steps, a mask and a window neighbourhood; and the same for 1 and 2 threads and an image solved alone
    (images in parallel vs rows in parallel)."""
    logits, image, seeds = problem(B=3, seed=13)
    mask = random_mask((3, 4, 14, 17), keep=0.9, generator=torch.Generator().manual_seed(13))
    args = dict(logits=logits.to(dtype), image=image.to(dtype), seeds=seeds, relaxation=relaxation, unary="cce",
                neighborhood=pottsops.window(2, 1), eta=0.3, lam=6.0, sigma_rgb=9.0, sigma_xy=None, mask=mask,
                weights=None, ignore_index=255, dense_method="lattice", method="mirror", backend="cpu")

    def run(compiled, threads, images=slice(None)):
        sliced = dict(args, logits=args["logits"][images], image=args["image"][images], seeds=seeds[images],
                      mask=mask[images])
        fused = solve_module._make_problem(**sliced)
        info = solve_module.SolveInfo()
        y0 = fused.clamp(torch.softmax(fused.logits, 1)).contiguous()
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            y, energy = solve_module._mirror(fused, y0, 40, 1e-4, 1.0, info, compiled=compiled)
        finally:
            torch.set_num_threads(before)
        return y, energy, info.iterations, torch.stack(info.energies)

    python = run(False, 2)
    assert int(python[2].min()) < int(python[2].max())  # images stopped at different steps
    for got in (run(True, 2), run(True, 1)):
        for a, b in zip(got, python):
            assert a.dtype == b.dtype and torch.equal(a, b)
    alone = run(True, 2, slice(1, 2))  # B < threads: one image, its rows in parallel
    assert torch.equal(alone[0], python[0][1:2]) and torch.equal(alone[1], python[1][1:2])
    assert torch.equal(alone[3][:, 0], python[3][:len(alone[3]), 1])


def one_launch_step_reference(log_buffers, grad_buffers, state, arrived, trace_row, image, weights, mask, inv,
                              offsets, spatial, relaxation, eps, operand, unlabeled, seeded, seeds, kind, eta, lam,
                              unary_eps, log_floor, tol):
    """mirror_fused_step's contract (csrc/ops.cpp) in PyTorch over the two-kernel step's CPU ops, one image
    at a time: the CPU stand-in that lets the one-launch loop's Python side run without a GPU."""
    dtype = log_buffers.dtype
    for b in range(log_buffers.shape[1]):
        row, one = state[b], slice(b, b + 1)
        if row[ACTIVE] == 0:  # stopped: keeps its iterate
            trace_row[b] = row[ENERGY]
            continue
        c, tau, spread, value = int(row[CURRENT]), *(row[i].to(dtype) for i in (TAU, SPREAD, ENERGY))
        scale = (tau / spread.clamp(min=torch.finfo(dtype).tiny)).reshape(1)
        pick = lambda t: None if t is None else t[one]  # noqa: E731
        trial_log, trial = torch.ops.pottsops.mirror_step(log_buffers[c, one], grad_buffers[c, one], scale, seeds[one],
                                                          seeded[one], log_floor)
        energy, grad, trial_spread = torch.ops.pottsops.grid_solver_gradient(
            trial, pick(image), pick(weights), pick(mask), pick(inv), offsets, spatial, relaxation, eps, operand[one],
            unlabeled[one], seeded[one], kind, eta, lam, unary_eps)
        log_buffers[1 - c, b], grad_buffers[1 - c, b] = trial_log[0], grad[0]
        accept = bool(torch.isfinite(energy[0]) & (energy[0] <= value))
        change = (value - energy[0]).abs() / value.abs().clamp(min=1e-30)
        tau = tau * 1.25 if accept else tau * 0.5
        row[TAU], row[STEPS] = tau, row[STEPS] + 1
        if accept:
            row[CURRENT], row[ENERGY], row[SPREAD], row[ACCEPTED] = 1 - c, energy[0], trial_spread[0], row[ACCEPTED] + 1
        row[ACTIVE] = 0 if (accept and bool(change < tol)) or not bool(tau > 1e-8) else 1
        trace_row[b] = row[ENERGY]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("neighborhood", ["nn4", "win2"])
def test_one_launch_loop_gives_the_python_loop(device, dtype, neighborhood):
    """The one-launch loop (_mirror_one_launch: state, two buffers per image, CUDA-graph replay) against
    _mirror's loop over the two-kernel step: the same iterates, energies, steps and trace, with images
    stopping at different steps, a mask and K = 21 (a register chunk of 32).  On CUDA it runs the fused
    kernel (the energy is summed in another order: equal to rounding); on the CPU its Python side runs over
    one_launch_step_reference, the kernel's contract written with the two-kernel step's ops (and, in
    tests/test_device_emulation.py, over the kernel's device code compiled for the host)."""
    if device == "cuda" and "cuda" not in FUSED:
        pytest.skip("no CUDA device: the one-launch CUDA kernel is checked by benchmarks/gpu_suite.sh")
    if device == "cpu" and "cpu" not in FUSED:
        pytest.skip("the compiled CPU backend is not built")
    logits, image, seeds = problem(B=3, seed=14)
    logits = torch.randn(3, 21, 14, 17, generator=torch.Generator().manual_seed(14)) * 2
    mask = random_mask((3, 21, 14, 17), keep=0.9, generator=torch.Generator().manual_seed(14))
    args = dict(logits=logits.to(dtype).to(device), image=image.to(dtype).to(device), seeds=seeds.to(device),
                relaxation="cd", unary="cce", neighborhood=pottsops.window(2, 1) if neighborhood == "win2" else "nn4",
                eta=0.3, lam=6.0, sigma_rgb=9.0, sigma_xy=None, mask=mask.to(device), weights=None, ignore_index=255,
                dense_method="lattice", method="mirror", backend=device)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    stand_in = cpu_kernels(mirror_fused_step=one_launch_step_reference) if device == "cpu" else contextlib.nullcontext()
    with stand_in:
        compare_one_launch_loop(lambda: solve_module._make_problem(**args), 35, 1e-4, **tol)


def test_different_one_hot_seeds_side_by_side_stay_finite():
    logits, image, _ = problem(seed=6)
    seeds = torch.zeros(2, 14, 17, dtype=torch.long)
    seeds[:, :, 8:] = 2  # every pixel seeded, two classes touching
    for relaxation in pottsops.RELAXATIONS:
        y, info = pottsops.solve(logits, image, seeds, relaxation=relaxation, iters=3, return_info=True)
        assert torch.isfinite(info.best).all() and torch.isfinite(y).all()


@pytest.mark.parametrize("call, error, pattern", [
    (lambda l, i, s: pottsops.solve(l, i, s.float()), TypeError, "seeds: expected an integer tensor"),
    (lambda l, i, s: pottsops.solve(l, i, torch.full_like(s, 7)), ValueError, r"seeds: expected class ids in \[0, 3\]"),
    (lambda l, i, s: pottsops.solve(l * float("nan"), i, s), ValueError, "logits: expected finite values"),
    (lambda l, i, s: pottsops.solve(l, i * float("inf"), s), ValueError, "image: expected finite values"),
    (lambda l, i, s: pottsops.solve(l, i, s, method="sgd"), ValueError, "method: expected one of"),
    (lambda l, i, s: pottsops.solve(l, i, s, iters=-1), ValueError, "iters: expected an integer >= 0"),
    (lambda l, i, s: pottsops.solve(l, i, s, eta=-1.0), ValueError, "eta: expected a number >= 0"),
    (lambda l, i, s: pottsops.solve(l, i, s, unary="mse"), ValueError, "unary"),
    (lambda l, i, s: pottsops.solve(l, i, s, init=torch.ones(1, 4, 14, 17)), ValueError, "init: expected shape"),
])
def test_errors(call, error, pattern):
    logits, image, seeds = problem()
    with pytest.raises(error, match=pattern):
        call(logits, image, seeds)
